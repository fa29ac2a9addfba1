"""DEITA's complexity and quality scorers (stages/score/deita.py): batched scores equal a plain
one-prompt-at-a-time reading of the model's next-token probabilities; turns combine as DEITA's
Σ complexity × quality; long prompts are cut inside the inserted text; the `deita` selector runs
from raw rows through the runner with its default score."""

import math

import duckdb
import numpy as np
import pytest

from curate.generators.prompts_io import template
from curate.stages.score.deita import DIGITS, DeitaScorer, turn_pairs

pytestmark = [pytest.mark.model, pytest.mark.usefixtures("one_torch_thread")]


def chat(*turns):
    return [{"role": r, "content": c} for r, c in turns]


CONVS = [
    chat(("user", "Write a short poem about the sea."), ("assistant", "Waves roll in, the gulls cry out.")),
    chat(("user", "List three fruits."), ("assistant", "apple, pear, plum")),
    chat(("user", "Explain why the sky is blue in one sentence, citing the physics involved and one experiment."),
         ("assistant", "Rayleigh scattering: short wavelengths scatter more, as Tyndall showed with a beam through smoke.")),
    chat(("user", "What is 40 + 2?"), ("assistant", "The answer is 42."), ("user", "And 40 + 3?"), ("assistant", "43.")),
    chat(("user", "Say something.")),  # no response: complexity only
]


def reference(model_dir: str, kind: int, instruction: str, response: str = "") -> float:
    """DEITA's reading, one prompt at a time in fp32: logits after the prompt at the tokens of
    "1".."6", softmax over them, Σ k·p_k (hkust-nlp/deita llama_scorer.infer_complexity)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    lm = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    name = ("deita_complexity.txt", "deita_quality.txt")[kind]
    text = template(name).replace("{instruction}", instruction).replace("{output}", response)
    ids = [tok.bos_token_id] + tok(text, add_special_tokens=False)["input_ids"]
    with torch.inference_mode():
        logits = lm(torch.tensor([ids])).logits[0, -1]
    digit_ids = [tok(d, add_special_tokens=False)["input_ids"][-1] for d in DIGITS]
    p = torch.softmax(logits[digit_ids].double(), dim=-1)
    return float((p * torch.arange(1, 7, dtype=torch.float64)).sum())


def test_batched_scores_equal_one_prompt_at_a_time(tiny_model):
    scorer = DeitaScorer(tiny_model, max_length=480, max_batch_tokens=2048, max_batch_rows=4, dtype="float32")
    got = scorer.score(CONVS)
    for row, conv in enumerate(CONVS):
        pairs = turn_pairs(conv)
        c = [reference(tiny_model, 0, q) for q, _ in pairs]
        qs = [reference(tiny_model, 1, q, a) for q, a in pairs if a is not None]
        assert all(1 <= v <= 6 for v in c + qs)
        assert got[row, 0] == pytest.approx(np.mean(c), abs=1e-5)
        if qs:
            assert got[row, 1] == pytest.approx(np.mean(qs), abs=1e-5)
            assert got[row, 2] == pytest.approx(sum(ci * qi for ci, qi in zip(c, qs)), abs=1e-4)  # DEITA: Σ_t c_t q_t
        else:
            assert math.isnan(got[row, 1]) and math.isnan(got[row, 2])
    assert len(turn_pairs(CONVS[3])) == 2 and got[3, 2] > 6  # two turns: the sum exceeds one turn's maximum of 6 × 1


def test_cpu_batches_on_single_threaded_workers_equal_one_batch_at_a_time(tiny_model):
    """cpu_parallel: batches (length batches shared out among 3 one-thread workers) gives the
    scores of intra_op row for row, and leaves the caller's torch thread count as it was."""
    import torch

    from curate.lib.cpu_workers import BatchWorkers

    common = dict(max_length=480, max_batch_tokens=512, max_batch_rows=2, dtype="float32")  # several small batches
    batches = DeitaScorer(tiny_model, threads=3, **common)
    one_at_a_time = DeitaScorer(tiny_model, threads=1, cpu_parallel="intra_op", **common)
    assert isinstance(batches.runner.workers, BatchWorkers) and one_at_a_time.runner.workers is None
    before = torch.get_num_threads()
    got = batches.score(CONVS)
    assert torch.get_num_threads() == before
    np.testing.assert_allclose(got, one_at_a_time.score(CONVS), rtol=0, atol=1e-9, equal_nan=True)
    assert len(set(np.round(got[:, 0], 9))) == len(CONVS)  # rows differ: a mix-up between batches would show


def test_a_long_prompt_is_cut_inside_the_text_not_at_the_question(tiny_model):
    scorer = DeitaScorer(tiny_model, max_length=200, dtype="float32")
    suffix = scorer.tok("  \n##Complexity: ", add_special_tokens=False)["input_ids"]
    ids = scorer.prompt_ids(0, "the sea " * 200)
    assert len(ids) <= 200 and ids[-len(suffix):] == suffix and "the sea" in scorer.tok.decode(ids)  # still asks for the digit
    quality = scorer.prompt_ids(1, "List three fruits.", "apple " * 300)
    text = scorer.tok.decode(quality)
    assert len(quality) <= 200 and "List three fruits." in text and "apple" in text  # the response is cut, not the question
    with pytest.raises(ValueError, match="no room"):
        DeitaScorer(tiny_model, max_length=60)
    assert 1 <= scorer.score([chat(("user", "the sea " * 200), ("assistant", "plum " * 200))])[0, 0] <= 6


@pytest.mark.slow
def test_deita_runs_end_to_end_from_raw_rows(ray_local, tiny_model, tmp_path):
    """embed → deita_scores → the `deita` selector with its default score (`deita`)."""
    from conftest import write_jsonl
    from curate.pipeline.config import load_config
    from curate.pipeline.runner import run

    topics = ["the sea", "prime numbers", "a bicycle", "tax law", "baking bread", "volcanoes", "chess openings", "jazz"]
    forms = ["Describe {} in one paragraph.", "Write a short poem about {}.", "List three facts about {}."]
    rows = [{"instruction": f.format(t), "output": f"Here is something about {t}."} for t in topics for f in forms]
    src = write_jsonl(tmp_path / "raw.jsonl", rows)
    db = str(tmp_path / "deita.duckdb")
    half = {"num_cpus": 0.5}  # two model actors beside the read tasks on a 2-CPU Ray
    stages = [{"embed": {"resources": half}},
              {"deita_scores": {"model": tiny_model, "max_length": 256, "dtype": "float32", "resources": half}}]
    report = run(load_config(None, input=[str(src)], db=db, shard_size=12, stages=stages,
                             selectors=[{"deita": {"budget": 6}}]), progress="off")
    assert (report.rows_in, report.kept) == (24, 24)
    con = duckdb.connect(db, read_only=True)
    per_name = dict(con.execute("SELECT name, count(*) FROM scores GROUP BY 1").fetchall())
    assert per_name == {"complexity": 24, "quality": 24, "deita": 24}
    assert con.execute("SELECT count(*) FROM scores WHERE name = 'deita' AND value NOT BETWEEN 1 AND 36").fetchone() == (0,)
    picked = con.execute("SELECT score FROM selections WHERE name = 'deita' ORDER BY rank").fetchall()
    assert len(picked) == 6 and [p[0] for p in picked] == sorted((p[0] for p in picked), reverse=True)
