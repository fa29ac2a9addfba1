"""Phases: the stage list cut at its barriers (global stages), and the funnel they make.

A global stage (exact_dedup, near_dedup, semdedup, best_of_n) computes keys in the stream but can only
decide once it has seen every row. So the runner cuts the stage list after each run of
consecutive global stages: phase k streams its stages (the key halves of its global stages
last), commits shard by shard, then runs its global stages' decisions (the barrier); phase k+1
streams only the survivors, read back per shard from Parquet (`handoff_path`). A config with no
global stage is one phase. Selectors run after the last phase.

The funnel is the order a row meets the run's steps, top to bottom in config order: within a
phase its stream stages, then `store` (a kept row whose id was already kept is a duplicate,
dropped at commit), then its global stages' decisions. Every step's rows in are the rows the
step before it kept; `stage_stats.position` is a row's place in this list.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from curate.pipeline.dag import StagePlan

STORE = "store"


@dataclass(frozen=True)
class Step:
    """One line of the funnel: a stream stage, a phase's `store` step, or a global stage."""

    position: int
    name: str
    kind: str  # "stream" | "store" | "global"


@dataclass(frozen=True)
class Phase:
    index: int
    stream: list[StagePlan]  # streamed in order; a global stage's key half included
    barrier: list[StagePlan] = field(default_factory=list)  # global stages decided after the stream
    steps: list[Step] = field(default_factory=list)  # this phase's part of the funnel

    @property
    def stream_names(self) -> list[str]:
        return [p.name for p in self.stream]


def split_phases(plans: list[StagePlan]) -> list[Phase]:
    """Cut `plans` (ingest first) after each run of consecutive global stages."""
    groups: list[list[StagePlan]] = [[]]
    for i, plan in enumerate(plans):
        groups[-1].append(plan)
        following = plans[i + 1] if i + 1 < len(plans) else None
        if plan.is_global and following is not None and not following.is_global:
            groups.append([])
    phases, position = [], 0
    for index, group in enumerate(groups):
        steps = []
        for plan in group:
            if not plan.is_global:
                steps.append(Step(position, plan.name, "stream"))
                position += 1
        steps.append(Step(position, STORE, "store"))
        position += 1
        barrier = [p for p in group if p.is_global]
        for plan in barrier:
            steps.append(Step(position, plan.name, "global"))
            position += 1
        phases.append(Phase(index, group, barrier, steps))
    return phases


def handoff_dir(db: str, run_id: str, phase: int, work_dir: str | None = None) -> str:
    """Where phase `phase` reads its input (the survivors of phase − 1), one Parquet file per
    shard: `<work_dir or <db>.phases>/<run_id>/<phase>/`. On a cluster, `work_dir` must be
    storage every node can read."""
    base = os.path.abspath(work_dir) if work_dir else os.path.abspath(db) + ".phases"
    return os.path.join(base, run_id, str(phase))
