"""Typed stage results (issue 22): `StageResult.split` / `quarantine` / `keep`, the one place
that turns results into stream columns (stages/results.py via pipeline/dag.py `apply_stage`),
declarations (`Stage.writes` / `reads`, `Selector.reads`) and the dependency checks derived from
them, and the filters' statistics kept as scores."""

import numpy as np
import pyarrow as pa
import pytest

from curate.errors import CurateError
from curate.pipeline.config import load_config
from curate.pipeline.dag import LIVE_INDEX, apply_stage, declared_results
from curate.pipeline.dependencies import SELECTOR_REQUIRES, STAGE_PROVIDES, STAGE_REQUIRES
from curate.pipeline.phases import Step
from curate.stages.base import RowValues, Stage, StageResult
from curate.stages.results import UndeclaredResult
from curate.storage import schema as S
from curate.storage.store import Store
from checks import shard_rows


def _batch(ids):
    return shard_rows(ids, [S.KEPT] * len(ids))


# ---------------------------------------------------------------------------- helpers


def test_split_keeps_input_order_and_splits_every_per_row_result():
    batch = _batch(["a", "b", "c", "d"])
    verdict = {"verifier": "v", "passed": True, "strength": "s", "detail": "{}"}
    result = StageResult.split(
        batch, [None, "too_short (1)", None, "bad"],
        scores={"len": [1, 2, float("nan"), None]},
        vectors={"vec": (np.eye(4, 2, dtype=np.float32), "m")},
        verdicts=[[verdict], [dict(verdict, passed=False)], None, []],
        keys=[b"a", b"b", b"c", b"d"])
    assert result.kept["id"].to_pylist() == ["a", "c"] and result.dropped["id"].to_pylist() == ["b", "d"]
    assert result.reasons == ["too_short (1)", "bad"] and result.quarantined is None
    assert result.scores["len"].kept.to_pylist() == [1.0, None]  # NaN and None: no score
    assert result.scores["len"].dropped.to_pylist() == [2.0, None]
    assert result.scores["len"].kept.type == pa.float64()
    vec, model = result.vectors["vec"]
    assert vec.type == pa.list_(pa.float32()) and vec.to_pylist() == [[1.0, 0.0], [0.0, 0.0]] and model == "m"
    assert [len(v) for v in result.verdicts.kept.to_pylist()] == [1, 0]
    assert result.verdicts.dropped.to_pylist()[0][0]["passed"] is False
    assert result.keys.to_pylist() == [b"a", b"c"]  # kept rows only
    assert result.score("len") == [1.0, None, 2.0, None]


def test_quarantine_and_keep():
    batch = _batch(["a", "b", "c"])
    result = StageResult.quarantine(batch, [None, "unreadable", None], scores={"x": [1.0, 2.0, 3.0]})
    assert result.kept["id"].to_pylist() == ["a", "c"] and result.quarantined["id"].to_pylist() == ["b"]
    assert result.errors == ["unreadable"] and result.dropped.num_rows == 0 and result.reasons == []
    assert result.scores["x"].kept.to_pylist() == [1.0, 3.0]
    both = StageResult.split(batch, ["r", "r", None], errors=["e", None, None])  # an error wins over a reason
    assert both.quarantined["id"].to_pylist() == ["a"] and both.dropped["id"].to_pylist() == ["b"]
    kept = StageResult.keep(batch, scores={"x": np.arange(3)})
    assert kept.kept is batch and kept.dropped is None and kept.scores["x"].kept.to_pylist() == [0.0, 1.0, 2.0]
    with pytest.raises(ValueError, match="3 rows"):
        StageResult.split(batch, [None, None])


def test_plain_values_cover_the_kept_rows():
    batch = _batch(["a", "b"])
    result = StageResult(kept=batch, scores={"x": [0.5, None]}, vectors={"v": ([[1.0], [2.0]], "m")})
    assert isinstance(result.scores["x"], RowValues) and result.scores["x"].dropped is None
    assert result.vectors["v"][0].type == pa.list_(pa.float32())


# ---------------------------------------------------------------------------- the one place


class Scorer(Stage):
    """Drops `b`; scores every row by its id's length."""

    name = "scorer"

    @classmethod
    def writes(cls, params):
        return {"scores:id_length"}

    def __call__(self, batch):
        ids = batch["id"].to_pylist()
        return StageResult.split(batch, ["short (1)" if i == "b" else None for i in ids],
                                 scores={"id_length": [float(len(i)) for i in ids]})


def test_results_become_columns_in_one_place_and_land_for_kept_and_dropped_rows(tmp_path):
    batch = _batch(["a", "b", "cc"])
    out = apply_stage(Scorer(), "scorer", batch, Scorer.writes({}))
    assert LIVE_INDEX not in out.column_names and "reason" not in out.column_names
    by_id = {r["id"]: r for r in out.to_pylist()}
    assert by_id["b"][S.STATUS] == S.DROPPED and by_id["b"][S.REASON] == "short (1)" and by_id["b"][S.STAGE] == "scorer"
    steps = [Step(0, "scorer", "stream"), Step(1, "store", "store")]
    with Store(str(tmp_path / "x.duckdb")) as store:
        store.commit_shard("r", "s0", "t.jsonl", 3, out, steps, declared={"scores:id_length"})
        assert store.con.execute("SELECT id, name, value FROM scores ORDER BY id").fetchall() == [
            ("a", "id_length", 1.0), ("b", "id_length", 1.0), ("cc", "id_length", 2.0)]
        assert store.con.execute("SELECT id, reason FROM drops").fetchall() == [("b", "short (1)")]


def test_an_undeclared_result_is_an_error_that_names_the_stage():
    class Misspelt(Scorer):
        @classmethod
        def writes(cls, params):
            return {"scores:id_lenght"}

    with pytest.raises(UndeclaredResult, match=r"stage my_scorer returned scores 'id_length', which it does not declare"):
        apply_stage(Misspelt(), "my_scorer", _batch(["a", "b"]), Misspelt.writes({}))

    class ByHand(Stage):
        def __call__(self, batch):
            return StageResult(kept=batch.append_column("_score:x", pa.array([1.0] * batch.num_rows)))

    with pytest.raises(UndeclaredResult, match=r"stage by_hand appended the result column '_score:x' itself"):
        apply_stage(ByHand(), "by_hand", _batch(["a"]))

    class Verifier(Stage):
        def __call__(self, batch):
            return StageResult.keep(batch, verdicts=[[{"verifier": "code", "passed": True, "strength": "", "detail": ""}]])

    with pytest.raises(UndeclaredResult, match=r"stage verify_x returned verdicts 'code'"):
        apply_stage(Verifier(), "verify_x", _batch(["a"]), set())


def test_the_store_rejects_a_result_no_stage_declares(tmp_path):
    out = apply_stage(Scorer(), "scorer", _batch(["a", "b"]), Scorer.writes({}))
    with Store(str(tmp_path / "x.duckdb")) as store:
        with pytest.raises(CurateError, match=r"scores 'id_length' .*which no stage of this phase declares"):
            store.commit_shard("r", "s0", "t.jsonl", 2, out, [Step(0, "scorer", "stream"), Step(1, "store", "store")],
                               declared=frozenset())
        assert store.con.execute("SELECT count(*) FROM samples").fetchone() == (0,)  # nothing landed


def test_verdicts_of_two_verifiers_add_up_on_a_row():
    class V(Stage):
        def __init__(self, verifier):
            self.verifier = verifier

        def __call__(self, batch):
            return StageResult.keep(batch, verdicts=[[{"verifier": self.verifier, "passed": True, "strength": "", "detail": ""}]] * batch.num_rows)

    out = apply_stage(V("one"), "v1", _batch(["a"]), {"verdicts:one"})
    out = apply_stage(V("two"), "v2", out, {"verdicts:two"})
    assert [v["verifier"] for v in out[S.VERDICTS].to_pylist()[0]] == ["one", "two"]


def test_declared_results_name_a_global_stages_keys_by_its_name():
    from curate.pipeline.dag import stage_plans

    config = load_config(None, stages=[{"exact_dedup": {}}, {"exact_dedup": {"text": "conversation"}}, {"embed": {"vectors": "e"}}])
    assert declared_results(stage_plans(config)) == {"keys:exact_dedup", "keys:exact_dedup_2", "vectors:e"}


# ---------------------------------------------------------------------------- declarations → dependency checks


def test_dependency_tables_are_derived_from_the_declarations():
    assert STAGE_PROVIDES["embed"]({"vectors": "x"}) == {"vectors:x"}
    assert STAGE_PROVIDES["ifd"]({"prefix": "p_"}) >= {"scores:p_ifd", "scores:p_ic_ifd"}
    assert STAGE_PROVIDES["verify_code"]({}) == {"scores:code_pass_rate", "scores:code_task_pass_rate"}
    assert STAGE_PROVIDES.get("exact_dedup")({}) == set()  # keys are no one else's to read
    assert STAGE_REQUIRES["semdedup"]({"vectors": "v"}) == {"vectors:v"}
    assert SELECTOR_REQUIRES["ifd"]({"prefix": "p_", "score": "ifd", "clusters": 4, "vectors": "rds"}) == {"scores:p_ifd", "vectors:rds"}
    assert SELECTOR_REQUIRES["kmeans_diversity"]({"weight_by": "ifd"}) == {"vectors:embed", "scores:ifd"}
    assert SELECTOR_REQUIRES["random"]({}) == set()


def test_dependency_checks_reject_what_no_stage_declares():
    with pytest.raises(CurateError, match=r"selectors\.0\.kmeans_diversity needs vectors 'embed'"):
        load_config(None, stages=[{"filters": {}}], selectors=[{"kmeans_diversity": {"budget": 10}}])
    load_config(None, stages=[{"embed": {}}], selectors=[{"kmeans_diversity": {"budget": 10}}])
    with pytest.raises(CurateError, match=r"stages\.0\.semdedup needs vectors 'embed'.*earlier stage"):
        load_config(None, stages=[{"semdedup": {}}, {"embed": {}}])
    with pytest.raises(CurateError, match=r"selectors\.0\.ifd needs scores 'p_ifd'"):
        load_config(None, stages=[{"ifd": {"model": "default"}}], selectors=[{"ifd": {"prefix": "p_"}}])
    # A score any stage declares can be read: the filters' statistics, a verifier's scores.
    load_config(None, stages=[{"filters": {}}, {"embed": {}}],
                selectors=[{"kmeans_diversity": {"budget": 10, "weight_by": "filters.response_words"}}])


# ---------------------------------------------------------------------------- filters' statistics as scores


def test_filter_statistics_land_as_scores_for_kept_and_dropped_rows(ray_local, tmp_path):
    from conftest import write_jsonl
    from curate.pipeline.runner import run

    rows = [{"instruction": f"Question number {i}?",
             "output": f"A fine answer, number {i}, in a sentence." + (" It has a second sentence too." if i % 2 else "")}
            for i in range(20)]
    rows += [{"instruction": "Say yes.", "output": "Yes."},
             {"instruction": "Describe the sea.", "output": " ".join(["the sea is blue and wide"] * 20)},
             {"instruction": "Draw a border.", "output": "=== *** ### --- +++ !!! @@@ %%% ^^^ &&& ((( ))) <<< >>> word"},
             {"instruction": "Beschreiben Sie Ihren Lieblingsort.",
              "output": "Mein Lieblingsort ist der Wald hinter unserem Haus, wo ich jeden Morgen spazieren gehe und den Vögeln zuhöre."}]
    src = write_jsonl(tmp_path / "s.jsonl", rows)
    db = tmp_path / "f.duckdb"
    bounds = {"min_response_words": 3, "max_repeated_ngram_ratio": 0.5, "max_non_alnum_ratio": 0.6}
    cfg = load_config(None, input=[str(src)], db=str(db), shard_size=8, stages=[{"filters": {**bounds, "languages": ["en"]}}])
    report = run(cfg, progress="off")
    assert report.dropped == 4
    with Store(str(db), read_only=True) as store:
        con = store.con
        stats = ["instruction_chars", "instruction_words", "response_chars", "response_words",
                 "repeated_ngram_ratio", "non_alnum_ratio"]
        scored = con.execute("""SELECT s.kept, sc.name, count(*) FROM samples s JOIN scores sc USING (run_id, id)
                                WHERE sc.name LIKE 'filters.%' GROUP BY ALL""").fetchall()
        counts = {(kept, name): n for kept, name, n in scored}
        for stat in stats:  # every row, kept and dropped
            assert counts[(True, f"filters.{stat}")] == 20 and counts[(False, f"filters.{stat}")] == 4, stat

        def score(id_, name):
            found = con.execute("SELECT value FROM scores WHERE id = ? AND name = ?", [id_, f"filters.{name}"]).fetchone()
            return found[0] if found else None

        drops = dict(con.execute("SELECT id, reason FROM drops WHERE stage = 'filters'").fetchall())
        by_kind = {reason.split("<")[0].split(">")[0].split(":")[0]: id_ for id_, reason in drops.items()}
        assert set(by_kind) == {"response_words", "repeated_ngram_ratio", "non_alnum_ratio", "language"}
        # A dropped row's value lies beyond the bound that dropped it, and is the value its reason shows.
        assert score(by_kind["response_words"], "response_words") == 1 < bounds["min_response_words"]
        assert drops[by_kind["response_words"]] == "response_words<3 (1)"
        ratio = score(by_kind["repeated_ngram_ratio"], "repeated_ngram_ratio")
        assert ratio > bounds["max_repeated_ngram_ratio"] and drops[by_kind["repeated_ngram_ratio"]].endswith(f"({ratio:.3f})")
        assert score(by_kind["non_alnum_ratio"], "non_alnum_ratio") > bounds["max_non_alnum_ratio"]
        assert score(by_kind["language"], "language_wanted") == 0.0
        conf = float(drops[by_kind["language"]].rsplit("(", 1)[1].rstrip(")"))
        assert score(by_kind["language"], "language_confidence") == pytest.approx(conf, abs=0.005)
        # The kept rows lie within every bound, and so a threshold can be tried in SQL.
        kept = [r[0] for r in con.execute("SELECT id FROM samples WHERE kept").fetchall()]
        for id_ in kept:
            assert score(id_, "response_words") >= 3 and score(id_, "repeated_ngram_ratio") <= 0.5
            assert score(id_, "non_alnum_ratio") <= 0.6 and score(id_, "language_wanted") in (1.0, None)  # None: undetermined
        assert sum(score(id_, "language_wanted") == 1.0 for id_ in kept) >= 10
        stricter = con.execute("""SELECT count(*) FROM samples s JOIN scores sc USING (run_id, id)
                                  WHERE s.kept AND sc.name = 'filters.response_words' AND sc.value < 9""").fetchone()[0]
        assert stricter == 10  # the rows of one sentence (8 words)
