"""LESS (ALGORITHMS.md §2): LoRA warmup, per-example gradient features, projection, matching.

- Warmup: LoRA on q, k, v, o of a causal LM, AdamW with linear decay after a linear warmup,
  prompt tokens masked; after every epoch a checkpoint holds the LoRA weights, the optimizer's
  moments and the epoch's mean learning rate.
- Features: per-example gradients of the LoRA parameters, a length-sorted batch of examples
  per forward and backward pass (`per_example_grads`: hooks on the LoRA layers and one einsum
  per layer), in eval mode (no dropout), the frozen base model in bf16 where the hardware has
  it (`lm.scoring_dtype`) and the LoRA gradients in fp32. Pool examples
  get Adam-aware features from the checkpoint's moments, Γ = m' / sqrt(v' + 1e-8) with
  m' = β1 m + (1-β1) g and v' = β2 v + (1-β2) g² (ε inside the root, no bias correction, as
  the reference); targets get plain gradients. Each parameter's block of gradient is projected
  with its own seeded block of a Rademacher matrix (the D × d matrix is never built whole), in
  fp32, then L2-normalised.
- Score: cos(pool, target) summed over checkpoints weighted by their epoch's mean LR
  (renormalised), then the mean within each target task and the max across tasks.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from curate.lib import lm as L

IGNORE = -100
BETAS = (0.9, 0.999)
ADAM_EPS_IN_ROOT = 1e-8


# ---------------------------------------------------------------------------- examples


@dataclass
class Example:
    ids: list[int]
    labels: list[int]  # IGNORE on prompt tokens

    @property
    def trainable(self) -> bool:
        return any(t != IGNORE for t in self.labels[1:])


def training_examples(tok, convs: list[list[dict]], max_length: int) -> list[Example]:
    """Chat-formatted conversations cut to `max_length` tokens, loss on the answer only."""
    out = []
    for messages in convs:
        enc = L.encode(tok, messages)
        ids = (enc.prompt + enc.answer)[:max_length]
        labels = ([IGNORE] * len(enc.prompt) + enc.answer)[:max_length]
        out.append(Example(ids, labels))
    return out


def padded(examples: list[Example], pad: int, device: str):
    import torch

    ids = L.pad_right([e.ids for e in examples], pad, device)
    labels = torch.full_like(ids, IGNORE)
    for row, e in enumerate(examples):
        labels[row, : len(e.labels)] = torch.tensor(e.labels, dtype=torch.long)
    return ids, labels


def mean_answer_loss(logits, labels):
    """Mean NLL over each sequence's answer tokens; works on (B, T, V) and (T, V) alike."""
    import torch

    targets = labels[..., 1:]
    mask = targets != IGNORE
    nll = torch.nn.functional.cross_entropy(logits[..., :-1, :].flatten(0, -2).float(), targets.clamp(min=0).flatten(),
                                            reduction="none").view(targets.shape)
    return (nll * mask).sum(-1) / mask.sum(-1).clamp(min=1)


# ---------------------------------------------------------------------------- model


def lora_model(model_path: str, r: int, alpha: float, dropout: float, modules: list[str], device: str | None = None,
               dtype: str | None = None, seed: int = 0):
    """(peft model, tokenizer, device). The base model is frozen in
    `dtype` (None: `lm.scoring_dtype`, bf16 on a GPU or a CPU with bf16 instructions); the LoRA
    weights, their gradients and everything after them (Adam features, projection) stay fp32."""
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    base, tok, device = L.load_causal_lm(model_path, device, dtype, scoring=True)
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(modules), task_type="CAUSAL_LM")
    return get_peft_model(base, config).eval(), tok, device


def lora_params(model) -> dict:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


@dataclass
class Checkpoint:
    epoch: int
    mean_lr: float
    path: str

    def load(self) -> dict:
        import torch

        return torch.load(self.path, map_location="cpu", weights_only=True)


def linear_schedule(step: int, total: int, warmup: int, lr: float) -> float:
    """transformers' get_linear_schedule_with_warmup."""
    if step < warmup:
        return lr * step / max(1, warmup)
    return lr * max(0.0, (total - step) / max(1, total - warmup))


def warmup(model, examples: list[Example], pad: int, device: str, out_dir: Path, epochs: int = 4, lr: float = 2e-5,
           batch_size: int = 128, warmup_ratio: float = 0.03, max_batch_tokens: int = 4096, seed: int = 0) -> list[Checkpoint]:
    """Train the LoRA parameters; one checkpoint (weights, Adam moments, mean LR) per epoch.
    The loss is the mean over examples of each example's mean answer-token loss, as the
    reference's batch size 1 with gradient accumulation computes it."""
    import torch

    examples = [e for e in examples if e.trainable]
    if not examples:
        raise ValueError("no warmup example has an answer token within max_length")
    out_dir.mkdir(parents=True, exist_ok=True)
    params = lora_params(model)
    optim = torch.optim.AdamW(params.values(), lr=lr, betas=BETAS, eps=1e-8, weight_decay=0.0)
    steps_per_epoch = math.ceil(len(examples) / batch_size)
    total = steps_per_epoch * epochs
    warm = math.ceil(warmup_ratio * total)
    rnd = random.Random(seed)
    model.train()
    checkpoints, step = [], 0
    for epoch in range(1, epochs + 1):
        order = list(range(len(examples)))
        rnd.shuffle(order)
        lrs = []
        for start in range(0, len(order), batch_size):
            group = [examples[i] for i in order[start : start + batch_size]]
            rate = linear_schedule(step, total, warm, lr)
            for g in optim.param_groups:
                g["lr"] = rate
            for idx in L.length_batches([len(e.ids) for e in group], max_batch_tokens, len(group)):
                ids, labels = padded([group[i] for i in idx], pad, device)
                loss = answer_losses(model, ids, labels).sum() / len(group)
                loss.backward()
            optim.step()
            optim.zero_grad(set_to_none=True)
            lrs.append(rate)
            step += 1
        path = out_dir / f"epoch-{epoch}.pt"
        state = optim.state
        torch.save({
            "lora": {n: p.detach().cpu() for n, p in params.items()},
            "exp_avg": {n: state[p]["exp_avg"].cpu() for n, p in params.items()},
            "exp_avg_sq": {n: state[p]["exp_avg_sq"].cpu() for n, p in params.items()},
            "mean_lr": float(np.mean(lrs)),
        }, path)
        checkpoints.append(Checkpoint(epoch, float(np.mean(lrs)), str(path)))
    model.eval()
    return checkpoints


def load_lora(model, state: dict) -> None:
    import torch

    params = lora_params(model)
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(state["lora"][name].to(p.device, p.dtype))


# ---------------------------------------------------------------------------- gradients


def answer_losses(model, ids, labels):
    """(B,) mean NLL over each sequence's answer tokens (labels not IGNORE), the vocabulary
    projection run on answer positions only (`lm.token_nll`): the same loss as
    `mean_answer_loss` on full logits, without the (B, T, V) logits of prompt and padding."""
    targets = labels[:, 1:]
    needed = targets != IGNORE
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft wraps the causal LM
    nll = L.token_nll(inner, ids, needed)
    return nll.sum(1) / needed.sum(1).clamp(min=1)


def lora_layers(model) -> dict:
    """{parameter name: the nn.Linear module owning it}, for every trainable (LoRA) weight."""
    params = lora_params(model)
    return {f"{name}.weight": mod for name, mod in model.named_modules() if f"{name}.weight" in params}


def per_example_grads(model, ids, labels) -> dict:
    """{parameter name: (B, *shape) float32} gradients of each example's mean answer loss, from
    one batched forward and backward pass.

    Every LoRA weight W sits in a bias-free linear layer y = x Wᵀ, so the gradient of a loss
    Σ_b L_b is Σ_{b,t} ∂L/∂y[b,t] ⊗ x[b,t]; example b's rows are the only ones its own loss
    reaches (padding follows the real tokens and a causal LM keeps examples apart), so the sum
    over t alone is ∇L_b. Forward hooks keep x and y of each LoRA layer, autograd gives ∂L/∂y,
    and one einsum per layer splits the gradient by example (the per-sample-gradient rule of
    Opacus and of Goodfellow 2015, "Efficient per-example gradient computations"). No per-example
    loop and no vmap: the base model runs its ordinary batched kernels (bf16, SDPA attention)."""
    import torch

    layers = lora_layers(model)
    seen: dict[str, list] = {name: [] for name in layers}
    hooks = [mod.register_forward_hook(lambda m, inp, out, name=name: seen[name].append((inp[0], out)))
             for name, mod in layers.items()]
    try:
        with torch.enable_grad():
            loss = answer_losses(model, ids, labels).sum()
            outs = [out for calls in seen.values() for _, out in calls]
            grads = iter(torch.autograd.grad(loss, outs, allow_unused=True))
    finally:
        for h in hooks:
            h.remove()
    result = {}
    for name, calls in seen.items():
        total = None
        for x, out in calls:
            g = next(grads)
            if g is None:
                g = torch.zeros_like(out)
            per_example = torch.einsum("bto,bti->boi", g.float(), x.detach().float())
            total = per_example if total is None else total + per_example
        result[name] = total
    return result


def adam_features(grads: dict, state: dict) -> dict:
    """Γ = m' / sqrt(v' + ε): the direction Adam would step in after this example."""
    out = {}
    b1, b2 = BETAS
    for name, g in grads.items():
        g = g.float()
        m = state["exp_avg"][name].to(g.device, g.dtype)
        v = state["exp_avg_sq"][name].to(g.device, g.dtype)
        out[name] = (b1 * m + (1 - b1) * g) / (b2 * v + (1 - b2) * g * g + ADAM_EPS_IN_ROOT).sqrt()
    return out


# ---------------------------------------------------------------------------- projection


class RademacherProjector:
    """x ↦ x R / sqrt(d), R a seeded ±1 matrix, built per parameter in row blocks: block b of
    parameter k comes from a generator seeded with (seed, k, b), so the pool and the targets,
    and any two runs, see the same matrix. Blocks are cached while they fit `cache_bytes`."""

    ROWS_PER_BLOCK = 4096

    def __init__(self, shapes: dict[str, tuple], dim: int = 8192, seed: int = 0, device: str = "cpu",
                 cache_bytes: int = 4 << 30):
        self.names = sorted(shapes)
        self.sizes = {n: int(np.prod(shapes[n])) for n in self.names}
        self.dim, self.seed, self.device = dim, seed, device
        total = sum(self.sizes.values()) * dim * 4
        self.cache: dict | None = {} if total <= cache_bytes else None

    def _block(self, k: int, b: int, rows: int):
        import torch

        key = (k, b)
        if self.cache is not None and key in self.cache:
            return self.cache[key]
        gen = torch.Generator(device="cpu").manual_seed((self.seed * 1_000_003 + k) * 1_000_003 + b)
        block = (torch.randint(0, 2, (rows, self.dim), generator=gen, dtype=torch.int8) * 2 - 1)
        block = block.to(self.device, torch.float32)
        if self.cache is not None:
            self.cache[key] = block
        return block

    def project(self, feats: dict):
        """{name: (B, *shape)} → (B, d) float32."""
        import torch

        out = None
        for k, name in enumerate(self.names):
            flat = feats[name].flatten(1).float()
            for b, start in enumerate(range(0, flat.shape[1], self.ROWS_PER_BLOCK)):
                part = flat[:, start : start + self.ROWS_PER_BLOCK]
                term = part @ self._block(k, b, part.shape[1])
                out = term if out is None else out + term
        return out / math.sqrt(self.dim) if out is not None else torch.zeros(0, self.dim)


def normalize(x):
    import torch

    return torch.nn.functional.normalize(x, dim=-1)


class GradientFeatures:
    """Projected, normalised gradient features of examples under one model and projector.

    Gradients are computed a length bucket at a time and projected once `project_bytes` of them
    have gathered: each projection streams the whole matrix through memory, so projecting many
    rows at once is what keeps it compute-bound (the reference projects every 16 examples)."""

    def __init__(self, model, tok, device: str, projector: RademacherProjector, max_batch_tokens: int | None = None,
                 max_batch_rows: int = 64, project_bytes: int = 512 << 20):
        self.model, self.tok, self.device, self.projector = model, tok, device, projector
        if max_batch_tokens is None:
            # On a CPU one row of ~128 tokens already fills the matmuls: wider batches only add
            # padding, and activations and answer logits held for the backward pass (about
            # 2 MB a token with Gemma 3's vocabulary); 256 to 2,048 measured alike on Gemma.
            max_batch_tokens = 16384 if str(device).startswith("cuda") else 512
        self.max_batch_tokens, self.max_batch_rows = max_batch_tokens, max_batch_rows
        self.project_rows = max(1, project_bytes // (4 * sum(projector.sizes.values())))

    def __call__(self, examples: list[Example], state: dict | None) -> np.ndarray:
        """(N, d) float32; `state` (a checkpoint) makes them Adam-aware; rows with no answer
        token inside the window are zero vectors (they score 0)."""
        import torch

        self.model.eval()  # no dropout: a feature is a function of the example and the checkpoint
        out = np.zeros((len(examples), self.projector.dim), np.float32)
        usable = [i for i, e in enumerate(examples) if e.trainable]
        lengths = [len(examples[i].ids) for i in usable]
        pending_rows: list[int] = []
        pending: list[dict] = []

        def flush():
            stacked = {n: torch.cat([g[n] for g in pending]) for n in pending[0]}
            out[pending_rows] = normalize(self.projector.project(stacked)).cpu().numpy()
            pending_rows.clear()
            pending.clear()

        for idx in L.length_batches(lengths, self.max_batch_tokens, self.max_batch_rows):
            rows = [usable[i] for i in idx]
            ids, labels = padded([examples[i] for i in rows], L.pad_id(self.tok), self.device)
            grads = per_example_grads(self.model, ids, labels)
            pending.append(adam_features(grads, state) if state is not None else grads)
            pending_rows.extend(rows)
            if len(pending_rows) >= self.project_rows:
                flush()
        if pending:
            flush()
        return out


# ---------------------------------------------------------------------------- matching


def checkpoint_weights(mean_lrs: list[float]) -> np.ndarray:
    w = np.asarray(mean_lrs, np.float64)
    return w / w.sum()


def aggregate(sims: list[np.ndarray], weights, task_index) -> np.ndarray:
    """Per-checkpoint (pool × targets) cosines → Σ_i w_i cos_i, the mean within each target
    task, the max over tasks (tasks need not have equal counts, unlike the reference's reshape)."""
    total = sum(w * s for w, s in zip(weights, sims))
    n_tasks = int(task_index.max()) + 1
    per_task = np.stack([total[:, task_index == k].mean(axis=1) for k in range(n_tasks)], axis=1)
    return per_task.max(axis=1)


def less_scores(pool_feats: list[np.ndarray], target_feats: list[np.ndarray], weights, task_index) -> np.ndarray:
    return aggregate([p @ t.T for p, t in zip(pool_feats, target_feats)], weights, task_index)
