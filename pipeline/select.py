"""The global phase: run the configured selectors over a run's curated rows, in order."""

from __future__ import annotations

import json
import time

from curate.errors import CurateError
from curate.pipeline.config import SelectorConfig
from curate.pipeline.registry import selector_class
from curate.selectors.base import budget_rows
from curate.storage.store import Store


def run_selectors(store: Store, run_id: str, selectors: list[SelectorConfig]) -> list[dict]:
    """Write each selection unless the same selector with the same parameters already did."""
    done = []
    for sc in selectors:
        params = json.dumps(sc.params, sort_keys=True)
        if store.selection_params(run_id, sc.name) == (sc.key, params):
            continue
        selector = selector_class(sc.key)(**sc.params)
        con = store.con
        # run_id is a hex fingerprint, safe to inline; views take no parameters.
        con.execute(f"CREATE OR REPLACE TEMP VIEW _pool AS SELECT * FROM samples WHERE run_id = '{run_id}' AND kept")
        pool = con.execute("SELECT count(*) FROM _pool").fetchall()[0][0]  # fetchall: a half-read result blocks the next con.sql
        try:
            n = budget_rows(selector.budget, pool)
        except ValueError as e:
            raise CurateError(f"selector {sc.name}: {e}") from None
        start = time.perf_counter()
        picked = selector.select(con, run_id, "_pool", n)
        store.write_selection(run_id, sc.name, sc.key, params, pool, picked, time.perf_counter() - start)
        done.append({"name": sc.name, "pool": pool, "rows": len(picked)})
    return done
