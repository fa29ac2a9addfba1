"""Config key → stage or selector class. A config key is the same word as the class's `name`."""

from __future__ import annotations

import difflib
import importlib

from curate.errors import CurateError

STAGES = {
    "filters": "curate.stages.filters:Filters",
    "exact_dedup": "curate.stages.dedup:ExactDedup",
    "near_dedup": "curate.stages.dedup:NearDedup",
    "decontaminate": "curate.stages.decontam:Decontaminate",
    "respond": "curate.generators.respond:Respond",
    "evol_instruct": "curate.generators.evol:EvolInstruct",
    "verify_code": "curate.stages.verify.code:CodeExecution",
    "verify_math": "curate.stages.verify.math_answers:MathAnswer",
    "add_constraints": "curate.generators.add_constraints:AddConstraints",
    "verify_constraints": "curate.stages.verify.ifeval:VerifyConstraints",
    "ifd": "curate.stages.score.ifd:IFDScore",
    "deita_scores": "curate.stages.score.deita:DeitaScores",
    "rds_embed": "curate.stages.score.rds:RDSEmbed",
    "self_instruct": "curate.generators.self_instruct:SelfInstruct",
    "skillmix": "curate.generators.skillmix:SkillMix",
    "embed": "curate.stages.embed:Embed",
    "semdedup": "curate.stages.semdedup:SemDeDup",
    "tick": "curate.stages.judge.tick:Tick",
    "best_of_n": "curate.stages.judge.best_of_n:BestOfN",
    "decrim": "curate.stages.judge.decrim:Decrim",
    "revise": "curate.stages.judge.revise:Revise",
    "meta_rank": "curate.stages.judge.meta_rank:MetaRank",
    "codeclm": "curate.generators.codeclm:CodecLM",
    "contrastive_filter": "curate.stages.judge.contrastive:ContrastiveFilter",
}


SELECTORS = {
    "random": "curate.selectors.random:RandomSelection",
    "ifd": "curate.selectors.ifd:IFDSelector",
    "rds": "curate.selectors.rds:RDSSelector",
    "less": "curate.selectors.less:LessSelector",
    "kmeans_diversity": "curate.selectors.kmeans:KMeansDiversity",
    "deita": "curate.selectors.deita:DeitaSelection",
    "facility_location": "curate.selectors.facility_location:FacilityLocation",
    "k_center": "curate.selectors.k_center:KCenter",
}


def stage_class(key: str):
    return _load("stage", STAGES, key)


def selector_class(key: str):
    return _load("selector", SELECTORS, key)


def _load(kind: str, registry: dict[str, str], key: str):
    if key not in registry:
        close = difflib.get_close_matches(str(key), registry, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise CurateError(f"unknown {kind} '{key}': {hint}(known: {', '.join(sorted(registry))})")
    module, _, cls = registry[key].partition(":")
    return getattr(importlib.import_module(module), cls)
