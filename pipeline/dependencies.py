"""What each stage leaves on the rows (scores, vectors) and what later stages and selectors
read, so that a config that cannot work is rejected before anything runs: a k-means selector
with no embedding stage, a SemDeDup placed before the embedding it reads, an IFD selector
with no IFD scores.

Keyed by config key, over the validated parameters (defaults filled in). A component absent
here neither provides nor requires anything.
"""

from __future__ import annotations

from curate.errors import CurateError

IFD_SCORES = ("ifd", "ic_ifd", "loss_answer_given_prompt", "loss_answer", "loss_prompt")

STAGE_PROVIDES = {
    "embed": lambda p: {f"vectors:{p['vectors']}"},
    "rds_embed": lambda p: {f"vectors:{p['vector']}"},
    "ifd": lambda p: {f"scores:{p['prefix']}{name}" for name in IFD_SCORES},
}

# Stages read from the rows in the stream, so an earlier stage must make what they need.
STAGE_REQUIRES = {
    "semdedup": lambda p: {f"vectors:{p['vectors']}"},
}

# Selectors read what the stream's stages stored.
SELECTOR_REQUIRES = {
    "kmeans_diversity": lambda p: {f"vectors:{p['vectors']}"} | {f"scores:{p[k]}" for k in ("weight_by", "refine_by") if p.get(k)},
    "deita": lambda p: {f"vectors:{p['vectors']}"} | {f"scores:{s}" for s in ([p["score"]] if isinstance(p["score"], str) else p["score"])},
    "ifd": lambda p: {f"scores:{p['prefix']}{p['score']}"} | ({f"vectors:{p['vector']}"} if p.get("clusters") else set()),
}

HOW = {"vectors": "an `embed` (or `rds_embed`) stage with that vector name",
       "scores": "a scoring stage (such as `ifd`) that writes it"}


def check_dependencies(stages: list, selectors: list) -> None:
    """stages and selectors: parsed configs with `key`, `name` and `params`."""
    provided: dict[str, str] = {}
    for i, sc in enumerate(stages):
        _check(f"stages.{i}.{sc.key}", STAGE_REQUIRES.get(sc.key), sc.params, provided, "an earlier stage")
        for item in STAGE_PROVIDES.get(sc.key, lambda p: set())(sc.params):
            provided.setdefault(item, sc.name)
    for i, sel in enumerate(selectors):
        _check(f"selectors.{i}.{sel.key}", SELECTOR_REQUIRES.get(sel.key), sel.params, provided, "a stage")


def _check(where: str, requires, params: dict, provided: dict, who: str) -> None:
    if requires is None:
        return
    missing = sorted(requires(params) - provided.keys())
    if missing:
        kind, _, name = missing[0].partition(":")
        have = sorted(k.partition(":")[2] for k in provided if k.startswith(kind + ":"))
        known = f" (the config makes {kind} {', '.join(have)})" if have else ""
        raise CurateError(f"config error: {where} needs {kind} '{name}', which {who} must provide: "
                          f"add {HOW[kind]} before it{known}")
