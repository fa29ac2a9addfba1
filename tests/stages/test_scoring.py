"""IFD / IC-IFD: batched scores equal the one-at-a-time reference; skips follow Cherry's rules."""

import math

import numpy as np
import pytest

from curate.stages.ingest import Ingest
from curate.stages.score.ifd import IFDScorer
from curate.stages.score.reference import ifd_one_at_a_time


pytestmark = [pytest.mark.model, pytest.mark.usefixtures("one_torch_thread")]


@pytest.fixture(scope="session")
def alpaca_convs(alpaca_rows) -> list[list[dict]]:
    import json

    ingest = Ingest()
    convs = [ingest.parse(json.dumps(r), "alpaca")["messages"] for r in alpaca_rows[:24]]
    for i, conv in enumerate(convs):  # the tiny tokenizer is near character level: shorter answers, varied lengths
        conv[-1]["content"] = " ".join(conv[-1]["content"].split()[: 3 + (i * 7) % 30])
    return convs


@pytest.mark.parametrize("variant", ["loss_ratio", "ppl_ratio"])
def test_batched_ifd_equals_one_at_a_time(tiny_model, alpaca_convs, variant):
    scorer = IFDScorer(tiny_model, max_length=160, variant=variant, direct_prefix="### Response:",
                       max_batch_tokens=2048, max_batch_rows=16, dtype="float32")  # the reference's dtype: equal to 1e-4
    cols, reasons = scorer.score(alpaca_convs)
    scored = [i for i, r in enumerate(reasons) if r is None]
    assert 6 < len(scored) < len(alpaca_convs)  # some rows are too long for 160 tokens
    assert {r for r in reasons if r} <= {"ifd_skip:answer_truncated", "ifd_skip:prompt_fills_window"}
    for i in scored:
        aq, a, q = ifd_one_at_a_time(scorer.lm, scorer.tok, alpaca_convs[i], direct_prefix="### Response:")
        ifd = aq / a if variant == "loss_ratio" else math.exp(aq - a)
        expected = {"loss_answer_given_prompt": aq, "loss_answer": a, "loss_prompt": q, "ifd": ifd, "ic_ifd": aq / (q * a)}
        for name, value in expected.items():
            assert cols[name][i] == pytest.approx(value, abs=1e-4), (i, name)
    for i, r in enumerate(reasons):
        assert np.isnan(cols["ifd"][i]) == (r is not None)


def test_skip_reasons(tiny_model):
    scorer = IFDScorer(tiny_model, max_length=24)
    convs = [
        [{"role": "user", "content": "Add 2 and 3."}, {"role": "assistant", "content": "5"}],
        [{"role": "user", "content": "word " * 40}, {"role": "assistant", "content": "ok"}],
        [{"role": "user", "content": "Say a lot."}, {"role": "assistant", "content": "very long answer " * 10}],
        [{"role": "user", "content": "No answer here."}],
    ]
    cols, reasons = scorer.score(convs)
    assert reasons == [None, "ifd_skip:prompt_fills_window", "ifd_skip:answer_truncated", "ifd_skip:empty_span"]
    assert cols["ifd"][0] > 0 and np.isnan(cols["ifd"][1:]).all()


def test_cpu_batches_on_single_threaded_workers_equal_one_batch_at_a_time(tiny_model, alpaca_convs):
    """cpu_parallel: batches (length batches shared out among 3 one-thread workers) gives the
    losses of intra_op (one batch at a time), row for row, and leaves the caller's torch threads."""
    import torch

    from curate.lib.cpu_workers import BatchWorkers

    common = dict(max_length=160, max_batch_tokens=256, max_batch_rows=4, dtype="float32")  # many small batches
    batches = IFDScorer(tiny_model, threads=3, **common)
    one_at_a_time = IFDScorer(tiny_model, threads=1, cpu_parallel="intra_op", **common)
    assert isinstance(batches.runner.workers, BatchWorkers) and one_at_a_time.runner.workers is None
    before = torch.get_num_threads()
    got, reasons = batches.losses(alpaca_convs)
    assert torch.get_num_threads() == before
    expected, expected_reasons = one_at_a_time.losses(alpaca_convs)
    assert reasons == expected_reasons and sum(r is None for r in reasons) > 6
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6, equal_nan=True)
    assert not np.allclose(got[:, 0], got[0, 0], equal_nan=True)  # rows differ: a mix-up would show
