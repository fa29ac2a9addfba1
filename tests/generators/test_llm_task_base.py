"""The LLM task base (generators/base.py) on test doubles fed recorded outputs: every generator
records its generator, model, template and all sampling parameters in `meta`; failed rows
carry the raw output; rows a task does not touch pass through unchanged; a task written as
`requests` + `parse` gets one backend call per round, in row order."""

import json
from dataclasses import fields

import pyarrow as pa
import pytest

from curate.generators.backends.base import Backend, ChatRequest, Completion, Sampling
from curate.generators.base import (EMPTY_OUTPUT, Failure, FollowUp, LLMTask, child_row, failed_row, instruction, row_meta,
                                    sampling_record)
from curate.pipeline.dag import apply_stage
from curate.storage import schema as S
from test_evol import Recorded as RecordedEvol
from checks import seed_batch
from test_self_instruct import GOOD, SEEDS
from test_self_instruct import Recorded as RecordedSelfInstruct
from test_skillmix import PAIR, SKILLS_GOOD
from test_skillmix import Recorded as RecordedSkillMix

MODEL = {"kind": "openai", "model": "recorded"}


class Replies(Backend):
    """Answers each request with `n` completions: `replies[text]` for the last turn's text
    (a blank reply when it has none), and logs every call."""

    model = "recorded"

    def __init__(self, replies: dict[str, str] | None = None, finish: str = "stop"):
        self.replies, self.finish = replies or {}, finish
        self.calls: list[list[ChatRequest]] = []

    def generate(self, requests):
        self.calls.append(list(requests))
        return [[Completion(self.replies.get(r.messages[-1]["content"], f"Reply {k} to: {r.messages[-1]['content']}"), self.finish, 11, 7 + k)
                 for k in range(r.sampling.n)] for r in requests]


def with_meta(batch: pa.Table, metas: list[str]) -> pa.Table:
    return batch.set_column(batch.column_names.index("meta"), "meta", pa.array(metas, pa.string()))


def generated(out: pa.Table) -> list[dict]:
    return [r for r in out.to_pylist() if r["origin"] != "seed"]


def as_given(out: pa.Table, batch: pa.Table, row_id: str) -> bool:
    """The row comes out as it went in: every input column equal (the stage's own bookkeeping
    columns, such as its cost, aside), exactly once."""
    (given,) = [r for r in batch.to_pylist() if r["id"] == row_id]
    got = [r for r in out.to_pylist() if r["id"] == row_id]
    return len(got) == 1 and {k: got[0][k] for k in given} == given


def assert_full_sampling(meta: dict, sampling: Sampling, key: str = "sampling"):
    recorded = meta[key]
    assert recorded == {"temperature": sampling.temperature, "top_p": sampling.top_p, "max_tokens": sampling.max_tokens,
                        "n": sampling.n, "seed": sampling.seed}
    assert set(recorded) | {"stop"} == {f.name for f in fields(Sampling)}  # every parameter (stop: none set)


# --- meta: every generator records all its sampling parameters ----------------------------


def test_respond_meta_records_every_sampling_parameter_and_tokens():
    from curate.generators.respond import Respond

    stage = Respond(backend=MODEL, n=2, temperature=0.3, top_p=0.9, max_tokens=64, seed=5)
    stage.backend = Replies()
    out = generated(apply_stage(stage, "respond", seed_batch(["Name a fruit.", "Name a colour."])))
    assert len(out) == 4
    for r in out:
        meta = json.loads(r["meta"])
        assert (meta["generator"], meta["model"], meta["template"], meta["finish_reason"]) == ("respond", "recorded", "respond/1", "stop")
        assert_full_sampling(meta, stage.sampling)
        assert meta["prompt_tokens"] == 11 and meta["completion_tokens"] == 7 + meta["sample_index"]
        assert r["source"] == "respond:recorded" and r["origin"] == "response"


def test_evol_meta_records_both_calls_sampling():
    from curate.generators.evol import EvolInstruct

    stage = EvolInstruct(backend=MODEL, temperature=0.9, top_p=0.8, max_tokens=100, response_max_tokens=200, seed=1, generation=2)
    stage.backend = RecordedEvol(evolutions={"Name three fruits.": "#Rewritten Prompt#: Name three fruits that ripen in winter.",
                                             "Say hi.": ""}, answers={})
    out = generated(apply_stage(stage, "evol_instruct", seed_batch(["Name three fruits.", "Say hi."])))
    assert sorted(r[S.REASON] or "" for r in out) == ["", "unparseable"]
    for r in out:
        meta = json.loads(r["meta"])
        assert (meta["generator"], meta["model"], meta["template"], meta["generation"]) == ("evol_instruct", "recorded", "evol/2", 2)
        assert_full_sampling(meta, stage.answer_sampling)
        assert_full_sampling(meta, stage.evolve_sampling, "evolve_sampling")
        assert meta["evolve_sampling"]["max_tokens"] == 100 and meta["sampling"]["max_tokens"] == 200
        answered = r[S.REASON] is None
        assert meta["finish_reason"] == ("stop" if answered else None) and meta["evolve_finish_reason"] == "stop"
        assert meta["completion_tokens"] == (20 + 30 if answered else 20)  # the evolution's and the answer's


def test_self_instruct_meta_records_every_sampling_parameter():
    from curate.generators.self_instruct import SelfInstruct

    stage = SelfInstruct(backend=MODEL, per_seed=1.0, seed_examples=3, max_rounds=2, temperature=0.6, top_p=0.4, max_tokens=300, seed=9)
    stage.backend = RecordedSelfInstruct([(GOOD, "stop"), ("", "stop")])
    out = generated(apply_stage(stage, "self_instruct", seed_batch(SEEDS)))
    assert out and any(r[S.REASON] == "unparseable" for r in out)
    for r in out:
        meta = json.loads(r["meta"])
        assert (meta["generator"], meta["model"], meta["template"]) == ("self_instruct", "recorded", "self_instruct/1")
        assert_full_sampling(meta, stage.sampling)
        assert meta["sampling"]["seed"] == 9 and meta["finish_reason"] == "stop"
        assert "completion_tokens" not in meta  # one completion makes several rows: not counted per row


def test_skillmix_meta_records_every_sampling_parameter_of_both_steps():
    from curate.generators.skillmix import SkillMix

    stage = SkillMix(backend=MODEL, per_seed=1.0, temperature=0.5, top_p=0.7, max_tokens=400, extract_max_tokens=99, seed=3)
    stage.backend = RecordedSkillMix(skills={"marathon": SKILLS_GOOD, "autumn": "nothing here"}, pairs=[(PAIR, "stop"), (PAIR, "stop")])
    out = generated(apply_stage(stage, "skillmix", seed_batch(["How many miles is a marathon?", "Write a poem about autumn leaves."])))
    steps = {json.loads(r["meta"])["step"] for r in out}
    assert steps == {"extract", "generate"}
    for r in out:
        meta = json.loads(r["meta"])
        assert (meta["generator"], meta["model"], meta["template"]) == ("skillmix", "recorded", "skillmix/1")
        assert_full_sampling(meta, stage.extract_sampling if meta["step"] == "extract" else stage.sampling)
    extract = next(json.loads(r["meta"]) for r in out if json.loads(r["meta"])["step"] == "extract")
    assert extract["sampling"]["max_tokens"] == 99 and extract["sampling"]["temperature"] == 0.0


def test_sampling_record_names_stop_strings_when_set():
    assert sampling_record(Sampling(stop=("###",)))["stop"] == ["###"]
    assert "stop" not in sampling_record(Sampling())


# --- failed rows carry the raw output ----------------------------------------------------


def test_failed_rows_of_every_generator_carry_the_raw_output():
    from curate.generators.evol import EvolInstruct
    from curate.generators.respond import Respond
    from curate.generators.self_instruct import SelfInstruct
    from curate.generators.skillmix import SkillMix

    evol = EvolInstruct(backend=MODEL)
    evol.backend = RecordedEvol(evolutions={"Say hi.": "I'm sorry, I can't."}, answers={})
    (row,) = generated(apply_stage(evol, "evol_instruct", seed_batch(["Say hi."])))
    assert row[S.REASON] == "unparseable" and json.loads(row["meta"])["raw"] == "I'm sorry, I can't."

    si = SelfInstruct(backend=MODEL, per_seed=0.25, max_rounds=1)
    si.backend = RecordedSelfInstruct([("", "stop")])
    (row,) = generated(apply_stage(si, "self_instruct", seed_batch(SEEDS)))
    assert row[S.REASON] == "unparseable" and json.loads(row["meta"])["raw"] == "" and row["messages"][0]["content"] == EMPTY_OUTPUT

    sm = SkillMix(backend=MODEL, per_seed=1.0, refine=True)
    sm.backend = RecordedSkillMix(skills={"marathon": SKILLS_GOOD}, pairs=[(PAIR, "stop"), ("Looks fine to me.", "stop")])
    (row,) = generated(apply_stage(sm, "skillmix", seed_batch(["How many miles is a marathon?"])))
    meta = json.loads(row["meta"])
    assert row[S.REASON] == "unparseable" and meta["raw"] == "Looks fine to me." and meta["raw_draft"] == PAIR

    respond = Respond(backend=MODEL, n=2)
    respond.backend = Replies({"Name a fruit.": "   "})
    (row,) = apply_stage(respond, "respond", seed_batch(["Name a fruit."])).to_pylist()
    assert row[S.STATUS] == "dropped" and row[S.REASON] == 'empty_response: ["   ", "   "]'


def test_failed_row_builder():
    row = failed_row("  garbage\n", "unparseable", {"k": 1}, origin="o", source="s", parent_ids=["p"], parent=0, raw_draft="d")
    assert row["messages"] == [{"role": "user", "content": "garbage"}] and row["reason"] == "unparseable"
    assert json.loads(row["meta"]) == {"k": 1, "raw": "  garbage\n", "raw_draft": "d"} and row["id"] == S.sample_id(row["messages"])
    kept = child_row([{"role": "user", "content": "é"}], {"x": "é"}, origin="o", source="s", parent_ids=["p"], ensure_ascii=False)
    assert kept["reason"] is None and kept["meta"] == '{"x": "é"}'
    assert Failure("empty_response", ["x" * 600]).drop_reason() == "empty_response: " + json.dumps(["x" * 600])[:500]
    assert Failure("no_answer").drop_reason() == "no_answer"


# --- pass-through ---------------------------------------------------------------------------


def test_rows_a_task_does_not_touch_pass_through_unchanged():
    from curate.generators.evol import EvolInstruct
    from curate.generators.respond import Respond

    batch = seed_batch(["Name three fruits.", "What is 2 + 3?", "Say hi."])
    answered = batch["messages"].to_pylist()
    answered[2] = answered[2] + [{"role": "assistant", "content": "Hi!"}]
    batch = with_meta(batch.set_column(batch.column_names.index("messages"), "messages", S.messages_array(answered)),
                      ["{}", json.dumps({"answer": "5"}), '{"note": "ü"}'])

    respond = Respond(backend=MODEL, skip_answered=True)
    respond.backend = Replies()
    out = apply_stage(respond, "respond", batch)
    assert as_given(out, batch, batch["id"][2].as_py())
    assert [len(c) for c in respond.backend.calls] == [2]

    evol = EvolInstruct(backend=MODEL)
    evol.backend = RecordedEvol(evolutions={"Name three fruits.": "#Rewritten Prompt#: Name three winter fruits.",
                                            "Say hi.": "#Rewritten Prompt#: Say hi in French, then translate it."}, answers={})
    out = apply_stage(evol, "evol_instruct", batch)
    assert as_given(out, batch, batch["id"][1].as_py())
    assert {r["origin"] for r in out.to_pylist() if r[S.STATUS] == "kept"} == {"seed", "evol"}


def test_a_batch_it_touches_nowhere_sends_nothing():
    from curate.generators.respond import Respond

    stage = Respond(backend=MODEL, skip_answered=True)
    stage.backend = Replies()
    batch = seed_batch(["Hi."])
    batch = batch.set_column(batch.column_names.index("messages"), "messages",
                             S.messages_array([[{"role": "user", "content": "Hi."}, {"role": "assistant", "content": "Hello."}]]))
    out = apply_stage(stage, "respond", batch)
    assert out.num_rows == 1 and as_given(out, batch, batch["id"][0].as_py()) and stage.backend.calls == []


# --- the contract: requests + parse ---------------------------------------------------------


class Shout(LLMTask):
    """A toy task: ask for a shout; a reply without "!" asks once more; "skip" rows pass
    through; "fail" rows are dropped with the raw reply; "bad" replies make a failed row."""

    name = generator = "shout"
    origin = "shouted"
    template_version = "shout/1"

    def __init__(self, backend, **kw):
        super().__init__(backend)
        self.sampling = Sampling(**kw)

    def selects(self, batch):
        return [not instruction(m).startswith("skip") for m in batch["messages"].to_pylist()]

    def requests(self, batch):
        return [[ChatRequest([{"role": "user", "content": instruction(m)}], self.sampling)] for m in batch["messages"].to_pylist()]

    def parse(self, row, completions):
        last = completions[-1][0]
        if instruction(row["messages"]).startswith("fail"):
            return Failure("no_shout", last.text)
        if "!" not in last.text and len(completions) == 1:
            return FollowUp([ChatRequest([{"role": "user", "content": "louder"}], self.sampling)])
        meta = self.meta(self.sampling, last, before=completions[0][:1] if len(completions) > 1 else (), rounds=len(completions))
        if last.text.startswith("bad"):
            return [self.failed(last.text, "bad_shout", meta, parent_ids=[row["id"]])]
        return [self.child([*row["messages"], {"role": "assistant", "content": last.text}], meta, parent_ids=[row["id"]])]


def test_a_task_written_as_requests_and_parse():
    backend = Replies({"hello": "HELLO!", "quiet": "hm", "louder": "OK!", "fail me": "no", "bad one": "bad!"})
    stage = Shout(MODEL, temperature=0.1, max_tokens=9, stop=("\n",))
    stage.backend = backend
    batch = with_meta(seed_batch(["hello", "skip this", "quiet", "fail me", "bad one"]), ["{}", '{"keep": 1}', "{}", "{}", "{}"])
    table = apply_stage(stage, "shout", batch)
    out = table.to_pylist()
    # One call per round, requests in row order; the follow-up round holds only the row that asked.
    assert [[r.messages[0]["content"] for r in call] for call in backend.calls] == [["hello", "quiet", "fail me", "bad one"], ["louder"]]
    by_status = {(r[S.STATUS], r["origin"], r[S.REASON]) for r in out}
    assert by_status == {("kept", "shouted", None), ("expanded", "seed", None), ("kept", "seed", None),
                         ("dropped", "seed", 'no_shout: "no"'), ("dropped", "shouted", "bad_shout")}
    assert as_given(table, batch, batch["id"][1].as_py())  # "skip this": untouched
    kept_parent = next(r for r in out if r["origin"] == "seed" and r[S.STATUS] == "kept" and r["messages"][0]["content"] == "bad one")
    assert kept_parent["parent_ids"] == []  # its child failed: the parent stays in play
    quiet = next(json.loads(r["meta"]) for r in out if r["origin"] == "shouted" and r["messages"][0]["content"] == "quiet")
    assert quiet == {"generator": "shout", "model": "recorded", "template": "shout/1", "finish_reason": "stop", "rounds": 2,
                     "sampling": {"temperature": 0.1, "top_p": 1.0, "max_tokens": 9, "n": 1, "seed": None, "stop": ["\n"]},
                     "prompt_tokens": 22, "completion_tokens": 14}  # both calls' tokens
    bad = next(r for r in out if r[S.REASON] == "bad_shout")
    assert json.loads(bad["meta"])["raw"] == "bad!" and bad["source"] == "shout:recorded"
    assert abs(sum(r[S.WEIGHT] for r in out) - 5.0) < 1e-9


def test_a_follow_up_without_requests_is_an_error():
    class Stuck(Shout):
        def parse(self, row, completions):
            return FollowUp([])

    stage = Stuck(MODEL)
    stage.backend = Replies()
    with pytest.raises(ValueError, match="follow up with no requests"):
        stage(seed_batch(["hello"]))


def test_backend_needs_a_model():
    with pytest.raises(ValueError, match="backend needs a model"):
        Shout({"kind": "openai"})


def test_helpers_read_rows_as_every_generator_did():
    assert instruction([{"role": "system", "content": "s"}, {"role": "user", "content": "u1"}, {"role": "user", "content": "u2"}]) == "u1"
    assert instruction([]) == "" and instruction(None) == ""
    assert row_meta('{"a": 1}') == {"a": 1} and row_meta("") == {} and row_meta(None) == {} and row_meta("[1]") == {} and row_meta("{x") == {}


def test_old_import_paths_still_work():
    import curate.generators.base as base
    from curate.generators import respond
    from curate.generators.add_constraints import AddConstraints
    from curate.pipeline.registry import stage_class
    from curate.stages.verify import ifeval

    for name in ("LazyBackend", "RemoteEngine", "stage_backend", "on_subset"):
        assert getattr(respond, name) is getattr(base, name)
    assert ifeval.AddConstraints is AddConstraints and stage_class("add_constraints") is AddConstraints


def test_respond_says_when_the_prompt_did_not_fit_the_context():
    from curate.generators.respond import Respond

    class TooLong(Backend):
        model = "recorded"

        def generate(self, requests):  # what VllmBackend answers for a prompt over max_model_len
            return [[Completion("", "prompt_too_long", 4123, 0)] * r.sampling.n for r in requests]

    stage = Respond(backend=MODEL, n=2)
    stage.backend = TooLong()
    out = apply_stage(stage, "respond", seed_batch(["A very long instruction."]))
    assert out[S.REASON].to_pylist() == ['prompt_too_long: "4123 prompt tokens"']


def test_a_response_keeps_the_tool_calls_of_the_turns_before_it():
    """Respond's children copy the prompt's turns with their OpenAI tool fields (a prompt whose
    assistant turn only called a tool came back as a blank turn, which ingest would quarantine),
    while the request the model sees holds the turns' text alone."""
    from checks import stream_batch
    from curate.generators.respond import Respond

    call = {"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": '{"q": "tides"}'}}
    prompt = [{"role": "user", "content": "When is high tide?"}, {"role": "assistant", "content": "", "tool_calls": [call]},
              {"role": "tool", "content": "14:05", "tool_call_id": "c1"}, {"role": "user", "content": "And low tide?"}]
    stage = Respond(backend=MODEL)
    stage.backend = Replies({"And low tide?": "Around 20:15."})
    (child,) = generated(apply_stage(stage, "respond", stream_batch([prompt])))
    turns = S.with_tool_fields(child["messages"], child["tool_fields"])
    assert turns == [*prompt, {"role": "assistant", "content": "Around 20:15."}]
    assert child["id"] == S.sample_id(turns)
    (request,) = stage.backend.calls[0]
    assert all(set(m) == {"role", "content"} for m in request.messages)
