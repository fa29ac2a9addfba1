"""What each stage leaves on the rows (scores, vectors) and what later stages and selectors
read, so that a config that cannot work is rejected before anything runs: a k-means selector
with no embedding stage, a SemDeDup placed before the embedding it reads, an IFD selector
with no IFD scores. And, a warning only, an expensive stage placed before a global stage
(dedup) that it does not feed, so it works on rows the dedup will drop (`order_warnings`).

The stages and selectors declare it themselves (`Stage.writes`, `Stage.reads`,
`Selector.reads`, from their validated parameters); the tables below, keyed by config key,
are views of those declarations. Only scores and vectors are read across stages, so those are
what a stage provides here.
"""

from __future__ import annotations

from collections.abc import Mapping

from curate.errors import CurateError

PROVIDED_KINDS = ("scores", "vectors")  # what later stages and selectors can read


class _Declarations(Mapping):
    """Config key → a function of the validated parameters giving a set of `kind:name` items,
    read from the registered class's declaration (`what`: "writes" or "reads"; `kinds`: only
    items of these kinds). Every registered key is present; a class that declares nothing gives
    the empty set."""

    def __init__(self, registry: str, what: str, kinds: tuple[str, ...] | None = None):
        self.registry, self.what, self.kinds = registry, what, kinds

    def _classes(self) -> dict:
        from curate.pipeline import registry

        return getattr(registry, self.registry)

    def _class(self, key: str):
        from curate.pipeline.registry import selector_class, stage_class

        return (stage_class if self.registry == "STAGES" else selector_class)(key)

    def __getitem__(self, key: str):
        if key not in self._classes():
            raise KeyError(key)
        cls = self._class(key)
        declared = getattr(cls, self.what, None)
        if declared is None:
            raise KeyError(key)

        def items(params: dict) -> set[str]:
            found = set(declared(params))
            return {i for i in found if i.partition(":")[0] in self.kinds} if self.kinds else found

        return items

    def __iter__(self):
        return iter(self._classes())

    def __len__(self) -> int:
        return len(self._classes())


STAGE_PROVIDES = _Declarations("STAGES", "writes", PROVIDED_KINDS)
# Stages read what earlier stages made (semdedup: the vectors stored by an embed stage, after
# the stream), so an earlier stage must make it.
STAGE_REQUIRES = _Declarations("STAGES", "reads")
# Selectors read what the stream's stages stored.
SELECTOR_REQUIRES = _Declarations("SELECTORS", "reads")

# Generators make rows: a dedup after one dedups its new rows, which is a reason to put it first.
GENERATORS = {"respond", "evol_instruct", "self_instruct", "skillmix", "revise", "codeclm"}

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
        makers = _default_writers(missing[0])
        how = (f"{'an' if makers[0][0] in 'aeiou' else 'a'} {' or '.join(f'`{m}`' for m in makers)} stage"
               if makers else HOW[kind])
        raise CurateError(f"config error: {where} needs {kind} '{name}', which {who} must provide: "
                          f"add {how} before it{known}")


def _default_writers(item: str) -> list[str]:
    """The registered stages that write `item` (`scores:deita`) with their default parameters."""
    out = []
    for key in STAGE_PROVIDES:
        try:
            if item in STAGE_PROVIDES[key]({}):
                out.append(key)
        except (KeyError, TypeError, ValueError):  # a declaration that needs a parameter without a default
            continue
    return out


def order_warnings(stages: list) -> list[str]:
    """One warning per expensive stage (an LLM stage: a `backend` parameter; an actor or GPU
    stage) placed before global stages (exact_dedup, near_dedup, semdedup, best_of_n) it does not feed:
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


# Judges of responses: rows without an assistant turn pass through them unjudged.
RESPONSE_JUDGES = {"tick", "decrim", "meta_rank", "contrastive_filter", "revise"}
RESPONDERS = {"respond", "evol_instruct", "skillmix", "revise", "codeclm"}


def response_warnings(stages: list, require_response: bool) -> list[str]:
    """A judge of responses with nothing before it that writes them, on an input that may hold
    rows without one (`ingest.require_response: false`): such rows pass through unjudged, which
    looks like a judge that did nothing."""
    if require_response:
        return []
    out = []
    for i, sc in enumerate(stages):
        if sc.key in RESPONSE_JUDGES and not any(s.key in RESPONDERS for s in stages[:i]):
            out.append(f"{sc.name} judges responses, and no stage before it writes them while the input may have rows "
                       "without one (ingest.require_response: false): such rows pass through unjudged; add a respond "
                       "stage before it, or set ingest.require_response: true")
    return out


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
