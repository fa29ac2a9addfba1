"""How the configured stages become Ray Data steps."""

from curate.pipeline.config import load_config
from curate.pipeline.dag import build_dataset, stage_plans
from curate.stages.readers import plan_shards, resolve_inputs


def test_task_stages_are_not_fused_into_an_actor_stage(ray_local, tmp_path, alpaca_rows):
    """CPU task stages before an actor stage stay their own operator: fused into the actor they
    would run one batch at a time inside its single process instead of as parallel tasks."""
    from conftest import write_jsonl

    src = write_jsonl(tmp_path / "in.jsonl", alpaca_rows[:60])
    config = load_config(None, input=[str(src)], db=str(tmp_path / "x.duckdb"), shard_size=20,
                         stages=[{"filters": {}}, {"exact_dedup": {}}, {"near_dedup": {"resources": {"actor": True}}}])
    plans = stage_plans(config)
    assert [p.resources.actor for p in plans] == [False, False, False, True]  # ingest, filters, exact, near
    ds = build_dataset(plan_shards(resolve_inputs(config.input), config.shard_size), plans)
    rows = sum(b.num_rows for b in ds.iter_batches(batch_format="pyarrow", batch_size=None))
    assert rows == 60
    operators = [line for line in ds.stats().splitlines() if line.startswith("Operator ")]
    actor_ops = [op for op in operators if "StageActor" in op]
    assert actor_ops and all("run_stage_task" not in op and "ReadShard" not in op for op in actor_ops), operators
    assert any("run_stage_task" in op for op in operators), operators


def test_a_run_with_an_actor_stage_gives_no_memory_advice(ray_local, tmp_path, alpaca_rows, capfd):
    """Actor steps reserve a nominal byte of memory (to stay unfused); Ray Data's high-memory
    detector must not tell the user to reserve more because of it."""
    from conftest import write_jsonl
    from curate.pipeline.runner import run

    src = write_jsonl(tmp_path / "in.jsonl", alpaca_rows[:60])
    config = load_config(None, input=[str(src)], db=str(tmp_path / "x.duckdb"), shard_size=20,
                         stages=[{"filters": {}}, {"near_dedup": {"resources": {"actor": True}}}])
    report = run(config, progress="off")
    assert report.rows_in == 60
    out, err = capfd.readouterr()  # Ray Data logs through its own handlers, to the terminal
    assert "logical memory" not in out + err and "memory=" not in out + err, err[-2000:]
