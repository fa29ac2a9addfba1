"""The scorers' fast path (bf16, length-sorted batches: the default on GPUs and on CPUs with bf16
instructions) against the reference pattern (fp32, batch size 1) on the same rows, within the
tolerances docs/stages.md and docs/selectors.md state; and which dtype `auto` picks.

Tolerances (bf16 keeps 8 bits of mantissa: relative rounding 2^-9 per operation):
- IFD: every mean token loss within 2% of the fp32 one, IFD within 3%, the IFD ranking with
  Spearman ≥ 0.95 (this tiny model: 1.5e-4, 1.1e-4, 0.998; Gemma 3 270M in bench/scoring.py,
  48 Alpaca rows: max |Δloss| 0.03 at losses of 1-3 nats, max |ΔIFD| 0.006, Spearman 0.997);
- LESS: each row's projected, normalised gradient feature at cosine ≥ 0.99 to the fp32 one
  (Gemma 3 270M: min 0.9989).
"""

import json

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from curate.lib import less
from curate.lib import lm as L
from curate.stages.ingest import Ingest
from curate.stages.score.ifd import IFDScorer
from curate.stages.score.reference import ifd_one_at_a_time, less_features_one_at_a_time

pytestmark = [pytest.mark.model, pytest.mark.usefixtures("one_torch_thread")]


@pytest.fixture(scope="module")
def convs(alpaca_rows) -> list[list[dict]]:
    ingest = Ingest()
    out = [ingest.parse(json.dumps(r), "alpaca")["messages"] for r in alpaca_rows[:20]]
    for i, conv in enumerate(out):  # the tiny tokenizer is near character level: shorter answers, varied lengths
        conv[-1]["content"] = " ".join(conv[-1]["content"].split()[: 3 + (i * 7) % 20])
    return out


def test_bf16_batched_ifd_agrees_with_fp32_one_at_a_time(tiny_model, convs):
    fast = IFDScorer(tiny_model, max_length=256, dtype="bfloat16", max_batch_tokens=2048, max_batch_rows=16)
    assert fast.lm.dtype == torch.bfloat16
    cols, reasons = fast.score(convs)
    scored = [i for i, r in enumerate(reasons) if r is None]
    assert len(scored) >= 15
    ref_model, tok, _ = L.load_causal_lm(tiny_model, "cpu", "float32")
    ref = np.array([ifd_one_at_a_time(ref_model, tok, convs[i]) for i in scored])  # (L(A|Q), L(A), L(Q))
    ours = np.stack([cols[n][scored] for n in ("loss_answer_given_prompt", "loss_answer", "loss_prompt")], axis=1)
    np.testing.assert_allclose(ours, ref, rtol=0.02)
    assert not np.allclose(ours, ref, rtol=1e-6)  # bf16 did run: its rounding shows
    ifd_ref = ref[:, 0] / ref[:, 1]
    np.testing.assert_allclose(cols["ifd"][scored], ifd_ref, rtol=0.03)
    assert spearmanr(cols["ifd"][scored], ifd_ref).statistic >= 0.95


def test_bf16_batched_less_features_agree_with_fp32_one_at_a_time(tiny_model, convs):
    mods = ["q_proj", "k_proj", "v_proj", "o_proj"]
    models = {dt: less.lora_model(tiny_model, 4, 16, 0.1, mods, "cpu", dt)[0] for dt in ("bfloat16", "float32")}
    tok = L.load_tokenizer(tiny_model)
    params = less.lora_params(models["float32"])
    gen = torch.Generator().manual_seed(3)
    state = {"lora": {n: 0.05 * torch.randn(p.shape, generator=gen) for n, p in params.items()},
             "exp_avg": {n: 1e-3 * torch.randn(p.shape, generator=gen) for n, p in params.items()},
             "exp_avg_sq": {n: 1e-6 * torch.rand(p.shape, generator=gen) for n, p in params.items()}}
    for m in models.values():
        less.load_lora(m, state)
    assert {p.dtype for p in less.lora_params(models["bfloat16"]).values()} == {torch.float32}  # LoRA stays fp32
    proj = less.RademacherProjector({n: tuple(p.shape) for n, p in params.items()}, dim=512, seed=0)
    examples = less.training_examples(tok, convs[:12], max_length=128)
    fast = less.GradientFeatures(models["bfloat16"], tok, "cpu", proj, max_batch_tokens=1024, max_batch_rows=8)
    for st in (None, state):
        ours = fast(examples, st)
        ref = less_features_one_at_a_time(models["float32"], examples, proj, st)
        cos = np.sum(ours * ref, axis=1)
        assert cos.min() >= 0.99, cos
        assert cos.min() < 1 - 1e-7  # bf16 did run


def test_auto_dtype_is_bf16_where_the_hardware_has_it(monkeypatch):
    assert L.scoring_dtype("cpu", "float32") == torch.float32 and L.scoring_dtype("cuda", "float16") == torch.float16
    assert L.scoring_dtype("cuda:0") == L.scoring_dtype("cuda", "auto") == torch.bfloat16
    monkeypatch.setattr(L, "cpu_has_bf16", lambda: True)
    assert L.scoring_dtype("cpu") == torch.bfloat16
    monkeypatch.setattr(L, "cpu_has_bf16", lambda: False)
    assert L.scoring_dtype("cpu", None) == torch.float32
    assert L.pick_dtype("cpu") == torch.float32  # the other model users (RDS+) keep fp32 on a CPU
    assert L.default_batch_tokens("cpu", torch.bfloat16) > L.default_batch_tokens("cpu", torch.float32)
