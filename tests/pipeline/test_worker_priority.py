"""An embedded Ray runs its stage workers at the driver's priority (pipeline/runner.py
ray_session): Ray's default worker niceness of 15 starved every stage beside any other process."""

from __future__ import annotations

import os

from curate.pipeline.config import load_config
from curate.pipeline.runner import ray_session


def test_stage_workers_run_at_the_driver_priority(tmp_path, monkeypatch):
    import ray

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    config = load_config(None, input=[str(tmp_path / "x.jsonl")], db=str(tmp_path / "db.duckdb"), stages=[{"filters": {}}])

    @ray.remote
    def niceness() -> int:
        return os.getpriority(os.PRIO_PROCESS, 0)

    @ray.remote
    class Actor:
        def niceness(self) -> int:
            return os.getpriority(os.PRIO_PROCESS, 0)

    with ray_session(config):
        driver = os.getpriority(os.PRIO_PROCESS, 0)
        assert ray.get(niceness.remote()) == driver
        assert ray.get(Actor.remote().niceness.remote()) == driver
