"""Target sets for targeted selection (RDS+, LESS): a JSONL file of examples in any input format
ingest reads (messages, Alpaca, ShareGPT, prompt/response), each with an optional `task`."""

from __future__ import annotations

import json
from dataclasses import dataclass

from curate.errors import CurateError
from curate.stages.ingest import Ingest, RowError


@dataclass
class Targets:
    convs: list[list[dict]]
    tasks: list[str]  # one per example; "" when the file names none

    @property
    def task_names(self) -> list[str]:
        return list(dict.fromkeys(self.tasks))

    def task_index(self):
        """(M,) int array: each example's task position in task_names."""
        import numpy as np

        pos = {t: i for i, t in enumerate(self.task_names)}
        return np.array([pos[t] for t in self.tasks], dtype=np.int64)


def load_targets(path: str) -> Targets:
    ingest = Ingest(require_response=True)
    convs, tasks = [], []
    try:
        lines = open(path, encoding="utf-8").read().splitlines()
    except OSError as e:
        raise CurateError(f"cannot read targets {path}: {e.strerror}") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            sample = ingest.parse(line, path)
        except RowError as e:
            raise CurateError(f"targets {path}:{n}: {e}") from None
        convs.append(sample["messages"])
        tasks.append(str(json.loads(line).get("task") or ""))
    if not convs:
        raise CurateError(f"targets {path}: no examples")
    return Targets(convs, tasks)
