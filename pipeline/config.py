"""Run configuration: YAML → pydantic models. An unknown key or a bad value is an error that
names it (`stages.0.filters.min_words: unknown parameter`)."""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import re
import sys
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator, model_validator

from curate.errors import CurateError
from curate.pipeline.registry import selector_class, stage_class


class _YamlLoader(yaml.SafeLoader):
    """YAML 1.2 booleans: only true/false. YAML 1.1 also reads on/off/yes/no as booleans, which
    would turn `exact_dedup: {on: instruction}` into `{True: instruction}`."""


_YamlLoader.yaml_implicit_resolvers = {
    k: [(tag, rx) for tag, rx in v if tag != "tag:yaml.org,2002:bool"]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def parse_yaml(text: str):
    return yaml.load(text, Loader=_YamlLoader)  # noqa: S506 - a SafeLoader subclass


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class IngestConfig(Strict):
    max_row_bytes: int = Field(1_000_000, gt=0)
    require_response: bool = True
    origin: str = "seed"
    # {recognised field: the data set's column}, e.g. {instruction: question, response: answer}
    fields: dict[str, str] = {}

    @field_validator("fields")
    @classmethod
    def _known_fields(cls, v):
        from curate.stages.ingest import check_field_map

        return check_field_map(v)


class InputConfig(Strict):
    """An input with options: `{path: ./hf_dd, splits: [train, test]}`."""

    path: str
    splits: list[str] | None = None  # a DatasetDict's splits to read (default: train, saying what it skips)

    @field_validator("splits", mode="before")
    @classmethod
    def _one_or_many(cls, v):
        return [v] if isinstance(v, str) else v


class ResourcesConfig(Strict):
    num_cpus: float | None = Field(None, ge=0)
    num_gpus: float | None = Field(None, ge=0)
    concurrency: int | None = Field(None, ge=1)
    actor: bool | None = None
    calls_per_actor: int | None = Field(None, ge=1)


class StageConfig(Strict):
    """One configured stage: its registry key, its validated parameters, and overrides."""

    key: str
    name: str
    params: dict[str, Any] = {}
    resources: ResourcesConfig = ResourcesConfig()
    batch_size: int | None = None


class SelectorConfig(Strict):
    """One configured selector; `name` is the selection it writes (default: the key)."""

    key: str
    name: str
    params: dict[str, Any] = {}


class RayConfig(Strict):
    address: str | None = None  # default: $RAY_ADDRESS if set, else an embedded local Ray
    num_cpus: int | None = Field(None, ge=1)


class ExportConfig(Strict):
    """What `curate run` exports at the end; the fields are `curate export`'s options."""

    format: Literal["hf", "parquet", "jsonl"] = "hf"
    out: str
    selection: str | None = None
    shape: Literal["messages", "alpaca", "sharegpt"] | None = None  # default messages
    template: str | None = None  # a Jinja file rendering each row (instead of a shape)
    overwrite: bool = False  # replace a target curate did not write (never the database or the cwd)
    skip_unfit: bool = False  # leave out, and count, rows the shape cannot express


class RunConfig(Strict):
    name: str | None = None
    vars: dict[str, Any] = {}  # ${name} in any string value below is replaced by vars[name]
    input: list[str | InputConfig] = ["demo"]
    db: str = "curated.duckdb"
    shard_size: int = Field(1000, ge=1)
    # Where each phase hands its survivors to the next (Parquet per shard); default `<db>.phases`.
    # On a cluster: storage every node reads.
    work_dir: str | None = None
    ingest: IngestConfig = IngestConfig()
    stages: list[StageConfig] = []
    selectors: list[SelectorConfig] = []
    export: ExportConfig | None = None
    ray: RayConfig = RayConfig()

    @field_validator("input", mode="before")
    @classmethod
    def _one_or_many(cls, v):
        items = [v] if isinstance(v, (str, dict)) else v
        return [_input_item(i, item) for i, item in enumerate(items)] if isinstance(items, list) else items

    @field_validator("stages", "selectors", mode="before")
    @classmethod
    def _parse_components(cls, v, info):
        if v is None:
            return []
        if not isinstance(v, list):
            raise ValueError(f"{info.field_name} must be a list of {{name: {{parameters}}}}")
        parse = _parse_stage if info.field_name == "stages" else _parse_selector
        return [parse(i, item) for i, item in enumerate(v)]

    @model_validator(mode="after")
    def _dependencies(self):
        from curate.pipeline.dependencies import check_dependencies

        check_dependencies(self.stages, self.selectors)
        return self

    def fingerprint(self, inputs: list[dict]) -> str:
        """What makes a run: its inputs, ingest settings, sharding and stages. The same
        fingerprint means the same rows, so a rerun resumes instead of starting over."""
        ingest = self.ingest.model_dump()
        if not ingest["fields"]:
            del ingest["fields"]  # the same run id as before the option existed
        body = {
            "inputs": inputs,
            "ingest": ingest,
            "shard_size": self.shard_size,
            "stages": [s.model_dump(exclude={"resources"}) for s in self.stages],
        }
        return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _input_item(index: int, item):
    """A dict input → InputConfig here, so that an error names the input and the key."""
    if not isinstance(item, dict):
        return item
    try:
        return InputConfig(**item)
    except ValidationError as e:
        raise ValueError(f"{index}: {format_errors(e)}") from None


class StageConfigError(ValueError):
    def __init__(self, where: str, msg: str):
        super().__init__(msg)
        self.where = where


def _parse_component(index: int, item, lookup, reserved: tuple[str, ...]) -> tuple[str, dict, dict]:
    """`{key: {params}}` → (key, validated params, reserved settings), errors naming the place."""
    if isinstance(item, str):
        item = {item: {}}
    if not isinstance(item, dict) or len(item) != 1:
        raise StageConfigError(str(index), "each entry is a mapping with one key, its name: {filters: {...}}")
    (key, params), = item.items()
    if params is not None and not isinstance(params, dict):
        raise StageConfigError(f"{index}.{key}", "parameters must be a mapping")
    params = dict(params or {})
    try:
        cls = lookup(key)
    except CurateError as e:
        raise StageConfigError(str(index), str(e)) from None
    extra = {k: params.pop(k) for k in reserved if k in params}
    try:
        validated = _params_model(cls)(**params).model_dump()
    except ValidationError as e:
        raise StageConfigError(f"{index}.{key}", format_errors(e)) from None
    return key, validated, extra


def _parse_stage(index: int, item) -> StageConfig:
    key, params, extra = _parse_component(index, item, stage_class, ("resources", "batch_size", "name"))
    config = StageConfig(key=key, name=extra.get("name", key), params=params,
                         resources=extra.get("resources") or {}, batch_size=extra.get("batch_size"))
    if getattr(stage_class(key), "pool", None) and ((config.resources.concurrency or 1) > 1 or config.resources.actor is False):
        raise StageConfigError(f"{index}.{key}.resources", (
            f"{key} works on whole shards (each shard's rows are its pool), which one actor gathers: it takes "
            "no concurrency above 1 and no actor: false; use calls_per_actor to run several shards at once"))
    return config


def _parse_selector(index: int, item) -> SelectorConfig:
    key, params, extra = _parse_component(index, item, selector_class, ("name",))
    return SelectorConfig(key=key, name=extra.get("name", key), params=params)


def _params_model(cls) -> type[BaseModel]:
    """A pydantic model of a stage's constructor, so parameters are checked before any Ray work."""
    fields = {}
    for p in list(inspect.signature(cls.__init__).parameters.values())[1:]:
        if p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
            continue
        ann = p.annotation if p.annotation is not inspect.Parameter.empty else Any
        if isinstance(ann, str):
            ann = eval(ann, vars(inspect.getmodule(cls)))  # noqa: S307 - annotations of our own code
        fields[p.name] = (ann, ... if p.default is inspect.Parameter.empty else p.default)
    return create_model(f"{cls.__name__}Params", __config__=ConfigDict(extra="forbid"), **fields)


def format_errors(e: ValidationError) -> str:
    parts = []
    for err in e.errors():
        loc = ".".join(str(x) for x in err["loc"])
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "value_error":
            cause = err.get("ctx", {}).get("error")
            msg = str(cause or err["msg"])
            if isinstance(cause, StageConfigError):
                loc = f"{loc}.{cause.where}"
        else:
            msg = f"{err['msg']} (got {err.get('input')!r})"
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)


def load_config(path: str | None = None, overrides: list[str] | None = None, **values) -> RunConfig:
    """Read a YAML config (optional), apply `key=value` overrides and keyword values, validate."""
    data: dict = {}
    if path:
        if not os.path.exists(path):
            raise CurateError(f"config file not found: {path}")
        try:
            with open(path) as f:
                data = parse_yaml(f.read()) or {}
        except yaml.YAMLError as e:
            raise CurateError(f"{path} is not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise CurateError(f"{path} must hold a mapping of settings")
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise CurateError(f"--set takes key=value, got {item!r}")
        _set_path(data, key.strip(), parse_yaml(raw) if raw else "")
    data.update({k: v for k, v in values.items() if v is not None})
    if data.get("vars"):
        data = {k: (v if k == "vars" else _substitute(v, data["vars"])) for k, v in data.items()}
    try:
        config = RunConfig(**data)
    except ValidationError as e:
        where = f"{path}: " if path else ""
        raise CurateError(f"config error: {where}{format_errors(e)}") from None
    from curate.pipeline.dependencies import order_warnings

    for warning in order_warnings(config.stages):  # advice, not an error: the run goes on
        print(f"warning: {warning}", file=sys.stderr, flush=True)
    return config


def _substitute(value, variables: dict):
    """${name} → vars[name] in every string; a string that is only ${name} takes the value as is
    (a number, a mapping)."""
    if isinstance(value, dict):
        return {k: _substitute(v, variables) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, variables) for v in value]
    if isinstance(value, str) and "${" in value:
        whole = re.fullmatch(r"\$\{(\w+)\}", value)
        if whole and whole.group(1) in variables:
            return variables[whole.group(1)]

        def one(m):
            if m.group(1) not in variables:
                raise CurateError(f"config error: ${{{m.group(1)}}} is not among vars ({', '.join(sorted(variables))})")
            return str(variables[m.group(1)])

        return re.sub(r"\$\{(\w+)\}", one, value)
    return value


def _set_path(data: dict, dotted: str, value) -> None:
    keys = dotted.split(".")
    node = data
    for i, k in enumerate(keys[:-1]):
        nxt = keys[i + 1]
        if isinstance(node, list):
            node = node[int(k)]
            continue
        if k not in node or node[k] is None:
            node[k] = [] if nxt.isdigit() else {}
        node = node[k]
    last = keys[-1]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value


def config_to_dict(config: RunConfig) -> dict:
    return json.loads(config.model_dump_json())
