"""The reference compute patterns (ALGORITHMS.md), rebuilt for tests and bench/scoring.py: one
example at a time, fp32, separate passes, per-token loops. Slow on purpose; never used by
stages. Tokenisation is the stages' own (lm.encode), so both sides see the same tokens."""

from __future__ import annotations

import torch

from curate.stages.score import lm as L


def _token_loop_mean(model, ids: list[int], start: int, end: int) -> float:
    """Cherry's loop: a full-vocabulary log-softmax and a host sync per position."""
    logits = model(input_ids=torch.tensor([ids]), output_hidden_states=True).logits[0]
    total = 0.0
    for t in range(start, end):
        total -= torch.log_softmax(logits[t - 1], dim=-1)[ids[t]].item()
    return total / (end - start)


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
