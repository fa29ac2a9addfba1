"""The reference compute patterns (ALGORITHMS.md), rebuilt for tests and bench/scoring.py: one
example at a time, fp32, separate passes, per-token loops. Slow on purpose; never used by
stages. Tokenisation is the stages' own (lm.encode), so both sides see the same tokens."""

from __future__ import annotations

import torch

from curate.lib import lm as L


def _token_loop_mean(model, ids: list[int], start: int, end: int) -> float:
    """Cherry's loop: a full-vocabulary log-softmax and a host sync at every position (prompt
    positions included), the span sliced out afterwards."""
    logits = model(input_ids=torch.tensor([ids]), output_hidden_states=True).logits[0]
    losses = [-torch.log_softmax(logits[t - 1], dim=-1)[ids[t]].item() for t in range(1, len(ids))]
    return sum(losses[start - 1 : end - 1]) / (end - start)


@torch.inference_mode()
def ifd_one_at_a_time(model, tok, messages: list[dict], direct_prefix: str = "") -> tuple[float, float, float]:
    """(L(A|Q), L(A), L(Q)) with three batch-size-1 passes, as IC-IFD's eval_loss.py runs them."""
    enc = L.encode(tok, messages)
    start = L.context_ids(tok)
    prefix = start + (tok(direct_prefix, add_special_tokens=False)["input_ids"] if direct_prefix else [])
    p, a = len(enc.prompt), len(enc.answer)
    loss_q = _token_loop_mean(model, enc.prompt, 1, p)
    loss_aq = _token_loop_mean(model, enc.prompt + enc.answer, p, p + a)
    loss_a = _token_loop_mean(model, prefix + enc.answer, max(1, len(prefix)), len(prefix) + a)
    return loss_aq, loss_a, loss_q


def less_grads_one_at_a_time(model, examples) -> list[dict]:
    """Per-example LoRA gradients the reference way: one forward and backward() per example."""
    from curate.lib.less import lora_params, mean_answer_loss

    params = lora_params(model)
    out = []
    for e in examples:
        model.zero_grad(set_to_none=True)
        ids = torch.tensor([e.ids])
        labels = torch.tensor([e.labels])
        mean_answer_loss(model(input_ids=ids).logits, labels).sum().backward()
        out.append({n: p.grad.detach().clone() for n, p in params.items()})
    model.zero_grad(set_to_none=True)
    return out


def less_features_one_at_a_time(model, examples, projector, state: dict | None, buffer: int = 16):
    """The reference datastore loop: batch size 1 backward passes, gradients flattened and
    buffered `buffer` at a time before projection (fp32 here, where the reference uses fp16)."""
    from curate.lib.less import adam_features, normalize

    feats, pending = [], []

    def flush():
        stacked = {n: torch.stack([g[n] for g in pending]) for n in pending[0]}
        if state is not None:
            stacked = adam_features(stacked, state)
        feats.append(normalize(projector.project(stacked)))
        pending.clear()

    for grads in (less_grads_one_at_a_time(model, [e]) [0] for e in examples):
        pending.append(grads)
        if len(pending) == buffer:
            flush()
    if pending:
        flush()
    return torch.cat(feats).numpy()
