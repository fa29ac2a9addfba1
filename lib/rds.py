"""RDS+ representations: the SGPT position-weighted mean of the last hidden layer,
e = sum_t (t / sum_t' t') h_t over the real tokens of the whole conversation, L2-normalised.

Batched by length with right padding: the weights run over each row's own tokens only (the
reference computes them over the padded width, correct only at batch size 1). Only the last
layer is computed and kept (no lm_head, no list of all hidden states). Used by the `rds_embed`
stage (stages/score/rds.py) and the `rds` selector (selectors/rds.py).
"""

from __future__ import annotations

import numpy as np

from curate.lib import lm as L
from curate.lib.cpu_workers import BatchRunner, CpuParallel
from curate.storage.model_cache import model_fingerprint


def conversation_ids(tok, convs: list[list[dict]], max_length: int) -> list[list[int]]:
    """The full chat-formatted conversation, its first `max_length` tokens."""
    out = []
    for messages in convs:
        enc = L.encode(tok, messages)
        out.append((enc.prompt + enc.answer)[:max_length])
    return out


def weighted_mean_pool(hidden, lengths):
    """(B, T, H) states and (B,) real lengths → (B, H) unit vectors, weights t / sum(t) over
    positions t = 1..length of each row."""
    import torch

    width = hidden.shape[1]
    pos = torch.arange(1, width + 1, device=hidden.device, dtype=torch.float32)
    weights = pos[None, :] * (pos[None, :] <= lengths[:, None])
    weights = weights / weights.sum(1, keepdim=True)
    pooled = torch.einsum("bt,bth->bh", weights, hidden.float())
    return torch.nn.functional.normalize(pooled, dim=-1)


class RDSEncoder:
    def __init__(self, model: str, max_length: int = 2048, max_batch_tokens: int | None = None, max_batch_rows: int = 64,
                 device: str | None = None, dtype: str | None = None, threads: int | None = None,
                 cpu_parallel: CpuParallel = "batches"):
        """`threads` / `cpu_parallel`: how a CPU runs the model's length batches (lib/cpu_workers.py
        BatchRunner; same vectors either way)."""
        self.lm, self.tok, self.device = L.load_causal_lm(model, device, dtype)
        self.runner = BatchRunner(self.device, threads, cpu_parallel, "rds")
        self.model_name = model
        self.max_length, self.max_batch_rows = max_length, max_batch_rows
        self.max_batch_tokens = max_batch_tokens or L.default_batch_tokens(self.device)

    def encode(self, convs: list[list[dict]]) -> np.ndarray:
        """(N, hidden) float32 unit vectors."""
        import torch

        seqs = conversation_ids(self.tok, convs, self.max_length)
        out = np.zeros((len(seqs), self.lm.config.hidden_size), np.float32)
        decoder = self.lm.base_model  # the transformer without the lm_head

        def one(idx: list[int]) -> np.ndarray:
            ids = L.pad_right([seqs[i] for i in idx], L.pad_id(self.tok), self.device)
            lengths = torch.tensor([len(seqs[i]) for i in idx], device=self.device)
            with torch.inference_mode():
                hidden = decoder(input_ids=ids).last_hidden_state
                return weighted_mean_pool(hidden, lengths).cpu().numpy()

        batches = list(L.length_batches([len(s) for s in seqs], self.max_batch_tokens, self.max_batch_rows))
        for idx, vecs in zip(batches, self.runner.map(one, batches)):
            out[idx] = vecs
        return out

    def cache_identity(self) -> tuple[str, dict]:
        """(model fingerprint, what else changes a vector): the conversation is the rest of the key."""
        return model_fingerprint(L.resolve_model(self.model_name)), {
            "v": 1, "max_length": self.max_length, "dtype": str(self.lm.dtype), "device": str(self.device).split(":")[0]}
