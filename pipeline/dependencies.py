"""What each stage leaves on the rows (scores, vectors) and what later stages and selectors
read, so that a config that cannot work is rejected before anything runs: a k-means selector
with no embedding stage, a SemDeDup placed before the embedding it reads, an IFD selector
with no IFD scores. And, a warning only, an expensive stage placed before a global stage
(dedup) that it does not feed, so it works on rows the dedup will drop (`order_warnings`).

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

# Stages read what earlier stages made (semdedup: the vectors stored by an embed stage, after
# the stream), so an earlier stage must make it.
STAGE_REQUIRES = {
    "semdedup": lambda p: {f"vectors:{p['vectors']}"},
}

# Selectors read what the stream's stages stored.
SELECTOR_REQUIRES = {
    "kmeans_diversity": lambda p: {f"vectors:{p['vectors']}"} | {f"scores:{p[k]}" for k in ("weight_by", "refine_by") if p.get(k)},
    "deita": lambda p: {f"vectors:{p['vectors']}"} | {f"scores:{s}" for s in ([p["score"]] if isinstance(p["score"], str) else p["score"])},
    "ifd": lambda p: {f"scores:{p['prefix']}{p['score']}"} | ({f"vectors:{p['vector']}"} if p.get("clusters") else set()),
    "facility_location": lambda p: {f"vectors:{p['vectors']}"} | ({f"scores:{p['weight_by']}"} if p.get("weight_by") else set()),
    "k_center": lambda p: {f"vectors:{p['vectors']}"},
}

# Generators make rows: a dedup after one dedups its new rows, which is a reason to put it first.
GENERATORS = {"respond", "evol_instruct", "self_instruct", "skillmix"}

# What an expensive stage does to the rows, for the warning's advice.
VERBS = {"embed": "embed", "rds_embed": "embed", "ifd": "score", "verify_code": "verify", "verify_math": "verify",
         "verify_constraints": "verify"}

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


def order_warnings(stages: list) -> list[str]:
    """One warning per expensive stage (an LLM stage: a `backend` parameter; an actor or GPU
    stage) placed before global stages (exact_dedup, near_dedup, semdedup) it does not feed:
    global stages decide between phases (pipeline/phases.py), so the stages after one see only
    its survivors, and this one works on every row the dedup drops. A stage feeds a global stage
    when it makes what that stage needs (the vectors SemDeDup reads) or makes rows (generators:
    the dedup then covers their rows). The advice stops at the first later stage that needs
    what this one makes: it cannot move past it.

    stages: parsed configs with `key`, `name`, `params` and `resources` (default: none)."""
    from curate.pipeline.registry import stage_class
    from curate.stages.base import GlobalStage

    is_global = [issubclass(stage_class(sc.key), GlobalStage) for sc in stages]
    warnings = []
    for i, sc in enumerate(stages):
        if is_global[i] or sc.key in GENERATORS or not _expensive(sc):
            continue
        provides = STAGE_PROVIDES.get(sc.key, lambda p: set())(sc.params)
        skipped = []
        for j in range(i + 1, len(stages)):
            later = stages[j]
            if provides & STAGE_REQUIRES.get(later.key, lambda p: set())(later.params):
                break  # it needs this stage's output: this stage stays before it
            if is_global[j]:
                skipped.append(later.name)
        if skipped:
            names = " and ".join([", ".join(skipped[:-1]), skipped[-1]] if len(skipped) > 1 else skipped)
            who = "they" if len(skipped) > 1 else skipped[0]
            verb = VERBS.get(sc.key)
            survivors = f"{verb} only the survivors" if verb else "run it on the survivors only"
            warnings.append(f"{sc.name} runs before {names} on every row {who} will drop; "
                            f"move it after {skipped[-1]} to {survivors}")
    return warnings


def _expensive(sc) -> bool:
    """An LLM stage, or an actor or GPU stage (its class's resources, as the config overrides them)."""
    if "backend" in sc.params:
        return True
    from curate.pipeline.registry import stage_class

    res = stage_class(sc.key).resources
    override = getattr(sc, "resources", None)
    actor = getattr(override, "actor", None)
    gpus = getattr(override, "num_gpus", None)
    return bool(res.actor if actor is None else actor) or bool(res.num_gpus if gpus is None else gpus)
