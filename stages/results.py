"""Stage results → the columns that travel with the rows, and back: the one place that spells them.

A stage returns typed results (`StageResult.scores`, `vectors`, `verdicts`, `keys`, `reasons`,
`errors`: stages/base.py). Rows cross Ray Data to the single writer as Arrow tables, so the
results must ride on the rows as columns: `to_stream` (called by pipeline/dag.py `apply_stage`)
checks them against what the stage declares (`Stage.writes`) and adds the columns; the store
(storage/store.py) reads them back with `stored_columns`. Nothing else names these columns:

    _score:<name>     float64          → scores(run_id, id, name, value)     kept, dropped and generated rows
    _vec:<name>       list<float32>    → vectors(run_id, name, id, model, vec)  kept rows
    _vecmodel:<name>  string, the model that made _vec:<name>
    _verdicts         list<VERDICT>    → verdicts(run_id, id, verifier, ...)  kept, dropped and generated rows;
                                         each verifier stage appends its verdicts to the row's list
    _key:<stage>      binary           → row_keys (a GlobalStage's key, for its global step)

A result the stage does not declare (`scores:<name>`, `vectors:<name>`, `verdicts:<verifier>`,
`keys`) is an `UndeclaredResult` naming the stage, and so is a result column a stage appended by
hand: neither is silently lost. A later stage that writes a score or vector of the same name
overwrites it on the rows it gives a value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import pyarrow as pa
import pyarrow.compute as pc

from curate.stages.base import RowValues, StageResult
from curate.storage import schema as S

# Column prefixes of results (storage/schema.py defines them, beside the other stream columns).
RESULT_PREFIXES = (S.SCORE_PREFIX, S.VEC_PREFIX, S.VECMODEL_PREFIX, S.KEY_PREFIX)


class UndeclaredResult(RuntimeError):
    """A stage returned a result its `writes` does not declare, or wrote a result column itself."""


def is_result_column(name: str) -> bool:
    return name == S.VERDICTS or name.startswith(RESULT_PREFIXES)


@dataclass
class StreamParts:
    """A stage's result as the stream carries it: tables with their result columns, and the
    reason (error) of each dropped (quarantined) row."""

    kept: pa.Table
    dropped: pa.Table | None
    reasons: pa.Array | None
    quarantined: pa.Table | None
    errors: pa.Array | None
    generated: pa.Table | None = None  # a generator's new rows, with their own results (judged children)


def to_stream(result: StageResult, stage: str, declared: set[str] | None, input_columns: Iterable[str]) -> StreamParts:
    """Check `result` (of the stage named `stage`, run on a batch with `input_columns`) against
    `declared` (its `writes`; None: not checked) and put its results on its rows as columns."""
    before = set(input_columns)
    for part in (result.kept, result.dropped, result.quarantined, result.generated):
        if part is not None:
            added = sorted(c for c in part.column_names if c not in before and is_result_column(c))
            if added:
                raise UndeclaredResult(
                    f"stage {stage} appended the result column {added[0]!r} itself: return results in "
                    "StageResult (scores, vectors, verdicts, keys) and declare them in the stage's writes()")
    if declared is not None:
        _check_declared(result, stage, set(declared))
    dropped, reasons = _why(result.dropped, result.reasons, "reason", "reasons", stage)
    quarantined, errors = _why(result.quarantined, result.errors, "error", "errors", stage)
    kept = result.kept
    for name, values in result.scores.items():
        kept, dropped = _add(kept, dropped, S.SCORE_PREFIX + name, values, stage, f"score {name!r}")
    for name, (values, model) in result.vectors.items():
        kept, _ = _add(kept, None, S.VEC_PREFIX + name, RowValues(values), stage, f"vectors {name!r}")
        models = pa.array([model] * kept.num_rows, pa.string())
        kept, _ = _add(kept, None, S.VECMODEL_PREFIX + name, RowValues(models), stage, f"vectors {name!r}")
    if result.verdicts is not None:
        kept = _add_verdicts(kept, result.verdicts.kept, stage)
        if result.verdicts.dropped is not None:
            dropped = _add_verdicts(dropped, result.verdicts.dropped, stage, "dropped")
    if result.keys is not None:
        kept, _ = _add(kept, None, S.KEY_PREFIX + stage, RowValues(result.keys.cast(pa.binary())), stage, "keys")
    generated = result.generated
    if generated is not None:
        for name, values in result.generated_scores.items():
            generated = _set(generated, S.SCORE_PREFIX + name, values, stage, f"score {name!r} (generated rows)")
        if result.generated_verdicts is not None:
            generated = _add_verdicts(generated, result.generated_verdicts, stage, "generated")
    elif result.generated_scores or result.generated_verdicts is not None:
        raise ValueError(f"stage {stage}: results for generated rows, but it generates none")
    return StreamParts(kept, dropped, reasons, quarantined, errors, generated)


def _check_declared(result: StageResult, stage: str, declared: set[str]) -> None:
    wrote = {f"scores:{n}" for n in (*result.scores, *result.generated_scores)} | {f"vectors:{n}" for n in result.vectors}
    if result.verdicts is not None or result.generated_verdicts is not None:
        parts = (result.verdicts.kept, result.verdicts.dropped) if result.verdicts is not None else ()
        for part in (*parts, result.generated_verdicts):
            if part is not None and len(part):
                wrote |= {f"verdicts:{v}" for v in pc.unique(pc.list_flatten(part).field("verifier")).to_pylist() if v is not None}
    if result.keys is not None:
        wrote.add("keys")
    undeclared = sorted(wrote - declared)
    if undeclared:
        kind, _, name = undeclared[0].partition(":")
        what = f"{kind} {name!r}" if name else kind
        raise UndeclaredResult(f"stage {stage} returned {what}, which it does not declare "
                               f"(its writes(): {', '.join(sorted(declared)) or 'nothing'}); add {undeclared[0]!r} to them")


def _why(table: pa.Table | None, given: list | None, column: str, field: str, stage: str) -> tuple[pa.Table | None, pa.Array | None]:
    """The table without its reason (error) column, and the reasons: from the typed field, or
    from the column of the older form."""
    if table is None or not table.num_rows:
        return (table.drop_columns([column]) if table is not None and column in table.column_names else table), None
    if given is not None:
        if column in table.column_names:
            raise ValueError(f"stage {stage}: give {field} either in StageResult.{field} or as a {column!r} column, not both")
        if len(given) != table.num_rows:
            raise ValueError(f"stage {stage}: {len(given)} {field} for {table.num_rows} rows")
        why = pa.array(given, pa.string())
        if why.null_count:
            raise ValueError(f"stage {stage}: every {'dropped' if column == 'reason' else 'quarantined'} row needs a {column}")
        return table, why
    if column not in table.column_names:
        raise ValueError(f"stage {stage}: {table.num_rows} {'dropped' if column == 'reason' else 'quarantined'} rows "
                         f"without {field} (StageResult.{field})")
    return table.drop_columns([column]), table[column].combine_chunks().cast(pa.string())


def _add(kept: pa.Table, dropped: pa.Table | None, column: str, values: RowValues, stage: str, what: str):
    kept = _set(kept, column, values.kept, stage, what)
    if values.dropped is not None:
        if dropped is None:
            if len(values.dropped):
                raise ValueError(f"stage {stage}: {what} has values for dropped rows but drops none")
        else:
            dropped = _set(dropped, column, values.dropped, stage, what + " (dropped rows)")
    return kept, dropped


def _set(table: pa.Table, column: str, values: pa.Array, stage: str, what: str) -> pa.Table:
    if len(values) != table.num_rows:
        raise ValueError(f"stage {stage}: {what} has {len(values)} values for {table.num_rows} rows")
    if column in table.column_names:  # an earlier stage's result of the same name: this stage's value wins where it has one
        i = table.column_names.index(column)
        old = table[column].combine_chunks()
        return table.set_column(i, column, pc.coalesce(values, old.cast(values.type)))
    return table.append_column(column, values)


def _add_verdicts(table: pa.Table, new: pa.Array, stage: str, what: str = "kept") -> pa.Table:
    """Append each row's new verdicts to those earlier stages gave it."""
    if len(new) != table.num_rows:
        raise ValueError(f"stage {stage}: verdicts for {len(new)} {what} rows, but it returns {table.num_rows}")
    if S.VERDICTS not in table.column_names:
        return table.append_column(S.VERDICTS, new)
    old = table[S.VERDICTS].to_pylist()
    merged = pa.array([(o or []) + (n or []) for o, n in zip(old, new.to_pylist())], pa.list_(S.VERDICT))
    return table.set_column(table.column_names.index(S.VERDICTS), S.VERDICTS, merged)


# ---------------------------------------------------------------------------- store side


@dataclass(frozen=True)
class StoredColumn:
    """A result column of a committed batch: what it holds and where it goes."""

    kind: str  # "scores" | "vectors" | "verdicts" | "keys"
    name: str  # the score's or vectors' name; the stage of keys; "" for verdicts
    column: str
    model_column: str | None = None  # vectors: the column of the model that made them

    @property
    def item(self) -> str:
        """As a phase's declared set spells it (pipeline/dag.py `declared_results`: a stage's
        `writes`, with `keys` as `keys:<stage>`); verdicts are checked per verifier in `to_stream`."""
        return {"scores": f"scores:{self.name}", "vectors": f"vectors:{self.name}", "keys": f"keys:{self.name}",
                "verdicts": "verdicts"}[self.kind]


def stored_columns(columns: Iterable[str]) -> list[StoredColumn]:
    """The result columns among a committed batch's `columns`, for the store to land; raises on
    a column that looks like a result but names none (`_score:` with no name)."""
    columns = set(columns)
    out = []
    for col in sorted(columns):
        if col == S.VERDICTS:
            out.append(StoredColumn("verdicts", "", col))
            continue
        for prefix, kind in ((S.SCORE_PREFIX, "scores"), (S.VEC_PREFIX, "vectors"), (S.KEY_PREFIX, "keys")):
            if col.startswith(prefix):
                name = col[len(prefix):]
                if not name:
                    raise ValueError(f"result column {col!r} names no {kind}")
                model = S.VECMODEL_PREFIX + name if kind == "vectors" and S.VECMODEL_PREFIX + name in columns else None
                out.append(StoredColumn(kind, name, col, model))
    return out
