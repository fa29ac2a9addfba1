"""Run configuration: YAML → pydantic models. An unknown key or a bad value is an error that
names it (`stages.0.filters.min_words: unknown parameter`)."""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import os
import re
import sys
from typing import Annotated, Any, Literal

import yaml
from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, TypeAdapter, ValidationError, create_model,
                      field_validator, model_validator)

from curate.errors import CurateError
from curate.pipeline.registry import selector_class, stage_class


class _YamlLoader(yaml.SafeLoader):
    """YAML 1.2 booleans: only true/false. YAML 1.1 also reads on/off/yes/no as booleans, which
    would turn `exact_dedup: {on: instruction}` (`on`: the old name of `text`) into `{True: instruction}`."""


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

    @model_validator(mode="after")
    def _out_named_for_format(self):
        from curate.storage.export import suffix_mismatch  # checked now, not after the run

        mismatch = suffix_mismatch(self.out, self.format)
        if mismatch:
            raise ValueError(mismatch.replace("--out", "out").replace("--format", "format"))
        if self.out == "-":  # the run's own output is on standard output
            raise ValueError("out '-' (standard output) is for `curate export -f jsonl --out -`; a run's export needs a path")
        return self


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

    @field_validator("db")
    @classmethod
    def _db_named(cls, v: str) -> str:
        if not v.strip():  # DuckDB would open an in-memory database: the run's rows lost at its end
            raise ValueError("an empty path: name the database file (db: curated.duckdb)")
        return v

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

    @model_validator(mode="after")
    def _selection_names(self):
        """Each selector writes its own selection (two with one name would overwrite each
        other), and the export names one of them."""
        seen: dict[str, int] = {}
        for i, sel in enumerate(self.selectors):
            if sel.name in seen:
                raise ValueError(f"selectors.{i} ({sel.key}) writes the selection '{sel.name}', as selectors.{seen[sel.name]} "
                                 "does, and would overwrite it: give one of them a `name:`")
            seen[sel.name] = i
        if self.export and self.export.selection is not None and self.export.selection not in seen:
            have = ", ".join(f"'{n}'" for n in seen) or "none: this config has no selectors"
            raise ValueError(f"export.selection: no selector writes '{self.export.selection}' (selections: {have}); "
                             "`curate export --selection` exports one an earlier run wrote")
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
        for stage in body["stages"]:  # a model stage's output cache on or off: the same rows, the same run id as before it existed
            if isinstance(stage["params"].get("cache"), bool):
                del stage["params"]["cache"]
            # a renamed parameter: the run id it had under its old name
            _old_names(stage_class(stage["key"]), stage["params"])
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
    params = resolve_aliases(cls, params, f"{'stages' if lookup is stage_class else 'selectors'}.{index}.{key}")
    try:
        validated = _params_model(cls)(**params).model_dump()
    except ValidationError as e:
        raise StageConfigError(f"{index}.{key}", format_errors(e)) from None
    check = getattr(cls, "check_params", None)  # checks across parameters (Stage.check_params)
    if check is not None:
        try:
            check(validated)
        except ValueError as e:
            raise StageConfigError(f"{index}.{key}", str(e)) from None
    return key, validated, extra


def _parse_stage(index: int, item) -> StageConfig:
    key, params, extra = _parse_component(index, item, stage_class, ("resources", "batch_size", "name"))
    backend = params.get("backend")
    if isinstance(backend, dict) and backend.get("kind") == "openai" and isinstance(backend.get("base_url"), str):
        # `http://host:8000` → `http://host:8000/v1`, here so that preflight probes what the backend calls
        from curate.generators.backends.openai_http import normalise_base_url

        url = normalise_base_url(backend["base_url"])
        if url != backend["base_url"].strip().rstrip("/"):  # a URL left as given keeps its run id
            params["backend"] = {**backend, "base_url": url}
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


def alias_table(cls) -> dict[str, tuple[str, dict]]:
    """A stage's or selector's retired parameter names (its `ALIASES`): {old name: (new name,
    {old value: new value})}. An entry is `"vector": "vectors"`, or `"fields": ("text", {"both":
    ["instruction", "response"]})` when some old values are spelt differently under the new name."""
    table = {}
    for old, new in (getattr(cls, "ALIASES", None) or {}).items():
        name, values = (new, {}) if isinstance(new, str) else (new[0], dict(new[1]))
        table[old] = (name, values)
    return table


def aliases(cls) -> dict[str, str]:
    """{old parameter name: new name} of a stage or selector."""
    return {old: new for old, (new, _) in alias_table(cls).items()}


def resolve_aliases(cls, params: dict, where: str) -> dict:
    """`params` with each retired name (`vector`) renamed to its new one (`vectors`), its value
    translated where the new name spells it differently, saying so in a one-line warning on
    stderr; giving both names is an error (StageConfigError)."""
    renamed = dict(params)
    for old, (new, values) in alias_table(cls).items():
        if old not in renamed:
            continue
        if new in renamed:
            raise StageConfigError(where, f"{old} and {new} name the same parameter: give only {new} ({old} is its old name)")
        value = renamed.pop(old)
        renamed[new] = values.get(value, value) if isinstance(value, str) else value
        said = f" ({old}: {value} is {new}: {renamed[new]})" if renamed[new] != value else ""
        print(f"warning: {where}.{old} is deprecated: use {new}{said}", file=sys.stderr, flush=True)
    return renamed


def _old_names(cls, params: dict) -> dict:
    """Validated `params` under their retired names and values, for the run id a run had before
    a rename (resolve_aliases backwards)."""
    for old, (new, values) in alias_table(cls).items():
        if new in params:
            value = params.pop(new)
            params[old] = next((o for o, n in values.items() if n == value), value)
    return params


@functools.lru_cache(maxsize=None)
def _params_model(cls) -> type[BaseModel]:
    """A pydantic model of a stage's constructor, so parameters are checked before any Ray work.
    A parameter that takes a list of strings but not a string (`benchmarks: list[str] | dict`)
    also takes one string, as a list of one (`benchmarks: bench/*.jsonl`)."""
    fields = {}
    for p in list(inspect.signature(cls.__init__).parameters.values())[1:]:
        if p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
            continue
        ann = p.annotation if p.annotation is not inspect.Parameter.empty else Any
        if isinstance(ann, str):
            ann = eval(ann, vars(inspect.getmodule(cls)))  # noqa: S307 - annotations of our own code
        if _takes_list_not_string(ann):
            ann = Annotated[ann, BeforeValidator(_one_or_list)]
        fields[p.name] = (ann, ... if p.default is inspect.Parameter.empty else p.default)
    return create_model(f"{cls.__name__}Params", __config__=ConfigDict(extra="forbid"), **fields)


def _takes_list_not_string(ann) -> bool:
    """A type that validates a list of strings but not a string (list[str], list[str] | None, ...)."""
    try:
        adapter = TypeAdapter(ann)
    except Exception:  # noqa: BLE001 - a type pydantic cannot build an adapter for: left as it is
        return False
    try:
        adapter.validate_python("x")
        return False
    except ValidationError:
        pass
    try:
        adapter.validate_python(["x"])
        return True
    except ValidationError as e:
        # A list whose items have a value check ("x" is no language code) is still a list of strings.
        return any(err["type"] == "value_error" for err in e.errors())


def _one_or_list(value):
    return [value] if isinstance(value, str) else value


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
    """Read a YAML config (optional), apply `key=value` overrides and keyword values, validate.

    An override's key is a dotted path from the top (`shard_size`, `stages.3.near_dedup.threshold`)
    or starts with a stage's or selector's name (`near_dedup.threshold`, `random_half.budget`;
    see `component_path`). A config file that sets no `db` (nor do `overrides` or `values`)
    writes `<name>.duckdb`, after its `name` or else its file name (`default_db`); with no
    config file the default stays `curated.duckdb`. Raises CurateError."""
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
        try:
            value = parse_yaml(raw) if raw else ""
        except yaml.YAMLError as e:
            problem = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise CurateError(f"--set {item}: the value is not valid YAML ({problem}); quote it to pass text") from None
        _set_override(data, key.strip(), value)
    data.update({k: v for k, v in values.items() if v is not None})
    # Always, so that a ${name} with no vars block is named as such, not read as a file name.
    data = {k: (v if k == "vars" else _substitute(v, data.get("vars") or {})) for k, v in data.items()}
    if path and data.get("db") is None:
        data["db"] = default_db(path, data.get("name"))
    try:
        config = RunConfig(**data)
    except ValidationError as e:
        where = f"{path}: " if path else ""
        raise CurateError(f"config error: {where}{format_errors(e)}") from None
    from curate.pipeline.dependencies import order_warnings, response_warnings

    warnings = order_warnings(config.stages) + response_warnings(config.stages, config.ingest.require_response)
    for warning in warnings:  # advice, not an error: the run goes on
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
                have = ", ".join(sorted(variables)) or "the config has no vars: block"
                raise CurateError(f"config error: ${{{m.group(1)}}} is not among vars ({have})")
            return str(variables[m.group(1)])

        return re.sub(r"\$\{(\w+)\}", one, value)
    return value


def default_db(config_path: str, name=None) -> str:
    """`<name>.duckdb` in the working directory: the config's `name`, else its file name without
    the extension, with characters other than letters, digits, `.`, `-` and `_` made `_`."""
    base = str(name) if name not in (None, "") else os.path.splitext(os.path.basename(config_path))[0]
    return (re.sub(r"[^\w.-]+", "_", base).strip("._") or "curated") + ".duckdb"


COMPONENT_LISTS = ("stages", "selectors")


def component_names(items, reserved: tuple[str, ...] = ()) -> list[tuple[str, str, str]]:
    """(key, configured name, name in the run) of each entry of a raw `stages` or `selectors`
    list. The run names a stage whose name is taken `<name>_2`, `<name>_3`, ... as
    pipeline/dag.py `stage_plans` does (`reserved`: names taken from the start, `ingest` and
    `store` for stages); a malformed entry gives (None, None, None) (validation names it)."""
    out, seen = [], set(reserved)
    for item in items if isinstance(items, list) else []:
        if isinstance(item, str):
            key, params = item, {}
        elif isinstance(item, dict) and len(item) == 1:
            (key, params), = item.items()
        else:
            out.append((None, None, None))
            continue
        name = params.get("name", key) if isinstance(params, dict) else key
        name, base, n = str(name), str(name), 2
        if reserved:
            while name in seen:
                name, n = f"{base}_{n}", n + 1
            seen.add(name)
        out.append((key, base, name))
    return out


def component_path(data: dict, name: str, override: str, required: bool = True) -> list | None:
    """The path (`["stages", 3, "near_dedup"]`) of the stage or selector that `name` names in
    the raw config `data`: a stage's name in the run (a second `near_dedup` is `near_dedup_2`) or a
    selector's name. Raises CurateError (`override` is the whole --set, for the message) when
    several stages share it (naming each and how to address it), when a stage and a selector
    both have it, or (with `required`; else None) when nothing has it."""
    found, shared = [], []
    for field in COMPONENT_LISTS:
        names = component_names(data.get(field), ("ingest", "store") if field == "stages" else ())
        for i, (key, base, run_name) in enumerate(names):
            if key is None:
                continue
            if run_name == name or base == name:
                shared.append((field, i, key, run_name))
            if run_name == name:
                found.append((field, i, key, run_name))
    if len(shared) > 1:
        where = "; ".join(f"{f}.{i} ({f[:-1]} {key}, {'named' if f == 'selectors' else 'run as'} {rn})"
                          for f, i, key, rn in shared)
        how = " and ".join(f"{rn}.…" if f == "stages" and rn != name else f"{f}.{i}.{key}.…" for f, i, key, rn in shared)
        raise CurateError(f"--set {override}: {name} names {len(shared)} entries: {where}; address them as {how}")
    if not found and not required:
        return None
    if not found:
        listed = []
        for field in COMPONENT_LISTS:
            names = [rn for key, _, rn in component_names(data.get(field), ("ingest", "store") if field == "stages" else ())
                     if key is not None]
            listed.append(f"{field}: {', '.join(names) if names else '(none)'}")
        raise CurateError(f"--set {override}: {name!r} is neither a config key nor the name of a stage or selector "
                          f"({'; '.join(listed)}; config keys: {', '.join(RunConfig.model_fields)})")
    field, i, key, _ = found[0]
    _entry_params(data[field], i)
    return [field, i, key]


def _entry_params(items: list, i: int) -> dict:
    """Entry i of a stages/selectors list as `{key: {params}}` (a bare `- exact_dedup` or
    `exact_dedup:` with no parameters gets an empty mapping); returns its parameters."""
    item = items[i]
    if isinstance(item, str):
        items[i] = item = {item: {}}
    (key, params), = item.items()
    if params is None:
        item[key] = params = {}
    return params


def _set_override(data: dict, dotted: str, value) -> None:
    """Apply one --set: `dotted` from the top, or from a stage's or selector's name."""
    keys = dotted.split(".")
    if keys[0] not in RunConfig.model_fields:
        # a bare unknown key (`--set colour=blue`) is left for validation to name
        path = component_path(data, keys[0], dotted, required=len(keys) > 1)
        keys = [*path, *keys[1:]] if path else keys
    _set_path(data, keys, value, dotted)


def _set_path(data: dict, keys: list, value, override: str) -> None:
    """Set `value` at the path `keys` in the raw config, making mappings (or lists, before an
    index) on the way; an entry of `stages` or `selectors` is passed through its key
    (`stages.3.near_dedup.threshold`), which must be the entry's."""
    node, depth = data, 0
    while True:
        k, last = keys[depth], depth == len(keys) - 1
        where = ".".join(str(x) for x in keys[:depth])
        if isinstance(node, list):
            k = _list_index(node, k, where, override)
            if depth == 1 and keys[0] in COMPONENT_LISTS and not last:
                params = _entry_params(node, k)
                entry_key = next(iter(node[k]))
                if str(keys[depth + 1]) != entry_key:
                    raise CurateError(f"--set {override}: {where}.{k} is {entry_key}, not {keys[depth + 1]} "
                                      f"(address it as {where}.{k}.{entry_key}.… or by its name)")
                if depth + 1 == len(keys) - 1:  # stages.3.near_dedup={...}: all its parameters
                    node[k] = {entry_key: value}
                    return
                node, depth = params, depth + 2
                continue
        elif not isinstance(node, dict):
            raise CurateError(f"--set {override}: {where} is {node!r}, not a mapping")
        if last:
            node[k] = value
            return
        if isinstance(node, dict) and (k not in node or node[k] is None):
            node[k] = [] if str(keys[depth + 1]).isdigit() else {}
        node, depth = node[k], depth + 1


def _list_index(node: list, k, where: str, override: str) -> int:
    try:
        i = int(k)
    except ValueError:
        raise CurateError(f"--set {override}: {where} is a list: expected an index, got {k!r}") from None
    if not 0 <= i < len(node):
        span = f"0 to {len(node) - 1}" if node else "none: it is empty"
        extra = ""
        if where in COMPONENT_LISTS:
            extra = f" ({', '.join(rn for key, _, rn in component_names(node, ('ingest', 'store') if where == 'stages' else ()) if key)})"
        raise CurateError(f"--set {override}: {where} has {len(node)} entries (indices {span}){extra}; "
                          f"no {where}.{k}" + ("; stages and selectors can also be addressed by name" if extra else ""))
    return i


def config_to_dict(config: RunConfig) -> dict:
    return json.loads(config.model_dump_json())
