"""The global phase: run the configured selectors over a run's curated rows, in order."""

from __future__ import annotations

import json
import time

from curate.errors import CurateError
from curate.pipeline.config import SelectorConfig
from curate.pipeline.registry import selector_class
from curate.selectors.base import budget_rows
from curate.selectors.coverage import measure, vectors_for
from curate.storage.store import Store


def run_selectors(store: Store, run_id: str, selectors: list[SelectorConfig]) -> list[dict]:
    """Write each selection unless the same selector with the same parameters already did, with
    its coverage (selectors/coverage.py) beside it; a selection written before coverage was
    measured gets its figures added."""
    done = []
    for sc in selectors:
        params = json.dumps(sc.params, sort_keys=True)
        selector = selector_class(sc.key)(**sc.params)
        con = store.con
        # run_id is a hex fingerprint, safe to inline; views take no parameters.
        con.execute(f"CREATE OR REPLACE TEMP VIEW _pool AS SELECT * FROM samples WHERE run_id = '{run_id}' AND kept")
        if store.selection_params(run_id, sc.name) == (sc.key, params):
            if store.selection_coverage_missing(run_id, sc.name):
                ids = [r[0] for r in con.execute("SELECT id FROM selections WHERE run_id = ? AND name = ? ORDER BY rank",
                                                 [run_id, sc.name]).fetchall()]
                coverage = _coverage(con, run_id, selector, ids)
                if coverage:
                    store.set_selection_coverage(run_id, sc.name, coverage)
            continue
        pool = con.execute("SELECT count(*) FROM _pool").fetchall()[0][0]  # fetchall: a half-read result blocks the next con.sql
        try:
            n = budget_rows(selector.budget, pool)
        except ValueError as e:
            raise CurateError(f"selector {sc.name}: {e}") from None
        start = time.perf_counter()
        picked = selector.select(con, run_id, "_pool", n)
        seconds = time.perf_counter() - start
        coverage = _coverage(con, run_id, selector, [p[0] for p in picked])
        store.write_selection(run_id, sc.name, sc.key, params, pool, picked, seconds, coverage)
        done.append({"name": sc.name, "pool": pool, "rows": len(picked),
                     **({"budget": selector.budget} if isinstance(selector.budget, int) and selector.budget > pool else {}),
                     **({"coverage_mean": coverage["coverage_mean"], "random_coverage_mean": coverage["random_coverage_mean"]}
                        if coverage else {})})
    return done


def _coverage(con, run_id: str, selector, ids: list[str]) -> dict | None:
    """Coverage of a selection over the `_pool` view, in the vectors the selector read (or the
    run's `embed` vectors); None when the run stored no vectors or nothing was selected."""
    vectors = vectors_for(con, run_id, selector)
    if vectors is None or not ids:
        return None
    return measure(con, run_id, "_pool", vectors, ids)
