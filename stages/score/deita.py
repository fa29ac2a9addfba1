"""DEITA's complexity and quality scorers (Liu et al. 2024, "What Makes Good Data for
Alignment?"; code: hkust-nlp/deita, `selection/scorer/llama_scorer.py`), as the `deita_scores` stage.

For each user turn and the assistant turn after it, two prompts (DEITA's own text, in
generators/prompts/deita_{complexity,quality}.txt) end where the scorer would write a digit;
the model's next-token logits at the tokens "1".."6", softmaxed over those six, give
p_1..p_6 and the score Σ k·p_k ∈ [1, 6]:

    complexity_t = E[k | "##Query: {user_t} ##Complexity: "]
    quality_t    = E[k | "#Question#: {user_t} #Response#: {assistant_t} ##Quality: "]
    deita        = Σ_t complexity_t × quality_t          (DEITA's final score over turns)

Scores stored per row: `complexity` and `quality` (the mean over the row's turns; one turn: its
value), and `deita`, which the `deita` selector sorts by by default. A row without an assistant
turn gets `complexity` only.

Where it departs from DEITA's code: one forward pass over a batch of prompts (right-padded,
grouped by length) reads the logits at each prompt's last position, where DEITA generates two
tokens per prompt one prompt at a time and reads the first step's scores: the same numbers. A
prompt longer than `max_length` tokens has its inserted text cut from the end (the response
before the instruction), as DEITA's vLLM scorer cuts the query. DEITA's scorers are Llama-13B
fine-tuned to answer these prompts (`hkust-nlp/deita-{complexity,quality}-scorer`); any local
causal LM loads here (`model:` a folder), and the default, curate's base Gemma 3 270M, was never
trained for them: its scores carry a weak signal and serve runs that need no download.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from curate.generators.prompts_io import template
from curate.lib import lm as L
from curate.lib.cpu_workers import BatchRunner, CpuParallel
from curate.stages.base import StageContext, StageResult, param
from curate.stages.score.base import ModelStage
from curate.storage.model_cache import CachedRows, model_fingerprint
from curate.storage.schema import canonical_messages

SCORE_NAMES = ("complexity", "quality", "deita")
DIGITS = "123456"
TEMPLATE_VERSION = 1


@dataclass
class Prompt:
    """One scorer prompt: its row, turn, kind (0 complexity, 1 quality) and token ids."""

    row: int
    turn: int
    kind: int
    ids: list[int]


def turn_pairs(messages: list[dict]) -> list[tuple[str, str | None]]:
    """(user turn, the assistant turn right after it or None) for each user turn."""
    out = []
    for i, m in enumerate(messages):
        if m["role"] == "user":
            nxt = messages[i + 1] if i + 1 < len(messages) else None
            out.append((m["content"], nxt["content"] if nxt is not None and nxt["role"] == "assistant" else None))
    return out


def digit_ids(tok) -> list[int]:
    """The token ids the scorer reads: "1".."6" as a model writes each after the prompt's
    trailing space (Llama: the bare digit pieces 29896..29953, as DEITA's id2score). Raises
    ValueError for a tokenizer that does not give six distinct ids."""
    ids = [tok(d, add_special_tokens=False)["input_ids"][-1] for d in DIGITS]
    if len(set(ids)) != len(DIGITS):
        raise ValueError(f"the tokenizer gives no distinct token for each of the digits 1-6 ({ids})")
    return ids


class DeitaScorer:
    """The model and the scoring logic, outside any stage (tests use it too)."""

    def __init__(self, model: str = "default", max_length: int = 2048, max_batch_tokens: int | None = None,
                 max_batch_rows: int = 64, device: str | None = None, dtype: str | None = None,
                 threads: int | None = None, cpu_parallel: CpuParallel = "batches"):
        """`threads` / `cpu_parallel`: how a CPU runs the model's length batches (lib/cpu_workers.py
        BatchRunner; same scores either way)."""
        self.lm, self.tok, self.device = L.load_causal_lm(model, device, dtype, scoring=True)
        self.model, self.max_length = model, max_length
        self.runner = BatchRunner(self.device, threads, cpu_parallel, "deita")
        self.max_batch_tokens = max_batch_tokens or L.default_batch_tokens(self.device, self.lm.dtype)
        self.max_batch_rows = max_batch_rows
        self.digits = digit_ids(self.tok)
        self.templates = (template("deita_complexity.txt"), template("deita_quality.txt"))
        bare = len(self.prompt_ids(1, "", ""))
        if bare >= max_length:
            raise ValueError(f"max_length {max_length} leaves no room for a row: DEITA's quality prompt alone is {bare} tokens")

    def prompt_ids(self, kind: int, instruction: str, response: str = "") -> list[int]:
        """Token ids of a filled prompt (start token first), its inserted text cut from the end
        (the response first) until it fits `max_length`, so the prompt still ends where the
        scorer writes its digit."""
        start = L.context_ids(self.tok)

        def ids(q: str, a: str) -> list[int]:
            text = self.templates[kind].replace("{instruction}", q).replace("{output}", a)
            body = self.tok(text, add_special_tokens=False)["input_ids"]
            return body if body[: len(start)] == start else start + body

        out = ids(instruction, response)
        for _ in range(8):  # each cut removes the excess in tokens of the longer text, re-tokenised
            over = len(out) - self.max_length
            if over <= 0:
                break
            if response:
                resp = self.tok(response, add_special_tokens=False)["input_ids"]
                response = self.tok.decode(resp[: max(0, len(resp) - over)])
            else:
                inst = self.tok(instruction, add_special_tokens=False)["input_ids"]
                instruction = self.tok.decode(inst[: max(0, len(inst) - over)])
            out = ids(instruction, response)
        return out[: self.max_length]

    def expected_digits(self, prompts: list[list[int]]) -> np.ndarray:
        """(len(prompts),) float64: Σ k·p_k over the digits 1..6 after each prompt."""
        import torch

        out = np.empty(len(prompts))
        if not prompts:
            return out
        pad = L.pad_id(self.tok)
        head = self.lm.get_output_embeddings()
        softcap = getattr(self.lm.config, "final_logit_softcapping", None)
        digits = torch.tensor(self.digits, device=self.device)
        weights = torch.arange(1, len(DIGITS) + 1, dtype=torch.float64)
        def one(group: list[int]) -> np.ndarray:
            seqs = [prompts[i] for i in group]
            ids = L.pad_right(seqs, pad, self.device)
            mask = (torch.arange(ids.shape[1])[None, :] < torch.tensor([len(s) for s in seqs])[:, None]).to(self.device)
            with torch.inference_mode():
                hidden = self.lm.base_model(input_ids=ids, attention_mask=mask.long()).last_hidden_state
                last = hidden[torch.arange(len(seqs)), torch.tensor([len(s) - 1 for s in seqs])]
                logits = head(last).float()
                if softcap:
                    logits = torch.tanh(logits / softcap) * softcap
                p = torch.softmax(logits[:, digits].double(), dim=-1).cpu()
            return (p * weights).sum(dim=-1).numpy()

        groups = list(L.length_batches([len(p) for p in prompts], self.max_batch_tokens, self.max_batch_rows))
        for group, values in zip(groups, self.runner.map(one, groups)):
            out[group] = values
        return out

    def score(self, convs: list[list[dict]]) -> np.ndarray:
        """(rows, 3) float64 in SCORE_NAMES order; NaN where a row has no such turn."""
        prompts = []
        for row, messages in enumerate(convs):
            for t, (q, a) in enumerate(turn_pairs(messages)):
                prompts.append(Prompt(row, t, 0, self.prompt_ids(0, q)))
                if a is not None:
                    prompts.append(Prompt(row, t, 1, self.prompt_ids(1, q, a)))
        values = self.expected_digits([p.ids for p in prompts])
        per_turn: list[dict[int, list[float]]] = [{} for _ in convs]
        for p, v in zip(prompts, values):
            per_turn[p.row].setdefault(p.turn, [np.nan, np.nan])[p.kind] = v
        out = np.full((len(convs), len(SCORE_NAMES)), np.nan)
        for row, turns in enumerate(per_turn):
            if not turns:
                continue
            c = np.array([turns[t][0] for t in sorted(turns)])
            q = np.array([turns[t][1] for t in sorted(turns)])
            out[row, 0] = c.mean()
            if not np.isnan(q).all():
                out[row, 1] = np.nanmean(q)
                out[row, 2] = np.nansum(c * q)
        return out

    def cache_identity(self) -> tuple[str, dict]:
        """(model fingerprint, what else changes a row's scores): the conversation is the rest of the key."""
        return model_fingerprint(L.resolve_model(self.model)), {
            "v": 1, "template": TEMPLATE_VERSION, "max_length": self.max_length, "dtype": str(self.lm.dtype),
            "device": str(self.device).split(":")[0]}


class DeitaScores(ModelStage):
    """Scores `<prefix>complexity`, `<prefix>quality` and `<prefix>deita` of every row (see the
    module's docstring); keeps every row."""

    name = "deita_scores"

    @classmethod
    def writes(cls, params: dict) -> set[str]:
        return {f"scores:{param(cls, params, 'prefix')}{name}" for name in SCORE_NAMES}

    def __init__(self, model: str = "default", max_length: int = 2048, prefix: str = "",
                 max_batch_tokens: int | None = None, max_batch_rows: int = 64, device: str | None = None,
                 dtype: str | None = None, threads: int | None = None, cpu_parallel: CpuParallel = "batches",
                 cache: bool | str = True):
        """`threads` / `cpu_parallel`: how a CPU runs the model (DeitaScorer). `cache`: true, the
        model-output cache beside the database (its path comes with the run's context in `setup`; a
        stage built by hand without one has none); false, off; a path, that file."""
        self.model, self.max_length, self.prefix = model, max_length, prefix
        self.batching = (max_batch_tokens, max_batch_rows, device, dtype, threads, cpu_parallel)
        self.cached = CachedRows(cache, "deita", model)
        self._scorer: DeitaScorer | None = None

    @property
    def scorer(self) -> DeitaScorer:
        """Loaded on first use, inside the actor: config validation never loads weights."""
        if self._scorer is None:
            self._scorer = DeitaScorer(self.model, self.max_length, *self.batching)
        return self._scorer

    def setup(self, context: StageContext | None = None) -> None:
        self.cached.at_default(context.model_cache if context else None)  # `cache: true`: the run's model cache
        self.scorer  # noqa: B018 - loads the model

    def __call__(self, batch: pa.Table) -> StageResult:
        convs = batch["messages"].to_pylist()

        def compute(rows: list[int]) -> list[tuple[bytes, None]]:
            return [(v.tobytes(), None) for v in self.scorer.score([convs[i] for i in rows])]

        found = self.cached.rows([canonical_messages(c) for c in convs], self.scorer.cache_identity, compute)
        values = np.frombuffer(b"".join(v for v, _ in found), np.float64).reshape(len(convs), len(SCORE_NAMES))
        return StageResult.keep(batch, scores={self.prefix + name: values[:, i] for i, name in enumerate(SCORE_NAMES)})
