"""Row shapes of an export: what one exported row looks like.

Every shape gets a sample `{"id", "messages", "origin", "source", "parent_ids", "meta": dict}`:

- `messages` (curate's own): `{"id", "messages": [{"role", "content"}], "tools"?, "functions"?,
  "origin", "source", "parent_ids", "meta"}`, an OpenAI fine-tuning row. The row's tool
  definitions (schema.TOOL_DEFINITIONS, kept in `meta`) are lifted to the top: lists in JSONL,
  JSON text in Parquet and HF (their JSON schemas differ from row to row: no one Arrow type holds
  them), a column only when an exported row has them, null in the others. A turn with tool
  fields (schema.TOOL_FIELDS: `tool_calls`, `tool_call_id`, `name`, `function_call`) has them as
  it was read. In Parquet and HF, when any exported row has them, every turn has the four fields,
  null where absent, `tool_calls` and `function_call` as JSON text (Arrow needs one type per
  column); otherwise turns are {role, content}.
- `alpaca`: `{"id", "instruction", "input": "", "output", "system", "history", "tools"?, "meta"}`:
  the last user turn and its answer, `system` the leading system turn, `history` the earlier
  exchanges as `[[user, assistant], ...]` (each left out, or null in Parquet/HF, when there is
  none), `tools` as in `sharegpt`.
- `sharegpt`: `{"id", "conversations": [{"from", "value"}], "system", "tools"?, "meta"}` with `from`
  one of human, gpt, system, function_call, observation (a tool turn), LLaMA-Factory's convention
  (storage/sharegpt_tools.py): calls as a `function_call` turn of JSON text, `tools` JSON text of
  the definitions (legacy `functions`: unfit); the leading system turn goes to `system`. Call
  ids are not written: a row read back has ids `call_0`, `call_1`, ... (and arguments as
  `json.dumps` writes them), so its id is the same when those were already so (a row read from
  ShareGPT), another otherwise.
- `template`: `{"id", "text"}`, `text` a Jinja template of the user's rendered per row with
  `messages`, `tools` (the tool definitions, else the legacy `functions`, else none), `meta`
  (without them) and `id`; `raise_exception(reason)` in the template leaves the row out as
  unfit, and so does a row that renders to blank text.

`meta` is a JSON object in JSONL and a JSON string in Parquet and HF (Arrow needs one type per
column); `curate run` reads either back. A row a shape cannot express raises `Unfit` with a
reason the user can read (an Alpaca row must be user/assistant exchanges after an optional
system prompt); a broken template raises `CurateError`.
"""

from __future__ import annotations

import json
import re

import pyarrow as pa

from curate.errors import CurateError
from curate.storage import schema as S
from curate.storage.sharegpt_tools import call_value, number_calls, parse_calls, unpaired_result

SHAPES = ("messages", "alpaca", "sharegpt", "template")
SHAREGPT_FROM = {"user": "human", "assistant": "gpt", "system": "system", "tool": "observation"}
_SHAREGPT_ROLE = {v: k for k, v in SHAREGPT_FROM.items()}
FUNCTION_CALL = "function_call"  # the `from` of LLaMA-Factory's call turn
_ID = re.compile(r"[0-9a-f]{32}")

_EXPORTED = [f for f in S.SAMPLE_SCHEMA if f.name != "tool_fields"]  # the tool fields go back into the turns
TOOL_MESSAGE = pa.struct([*S.MESSAGE, ("tool_calls", pa.string()), ("tool_call_id", pa.string()), ("name", pa.string()),
                          ("function_call", pa.string())])
SCHEMAS = {
    "messages": pa.schema(_EXPORTED),
    "messages+tools": pa.schema([pa.field("messages", pa.list_(TOOL_MESSAGE)) if f.name == "messages" else f for f in _EXPORTED]),
    "alpaca": pa.schema([("id", pa.string()), ("instruction", pa.string()), ("input", pa.string()),
                         ("output", pa.string()), ("system", pa.string()),
                         ("history", pa.list_(pa.list_(pa.string()))), ("meta", pa.string())]),
    "sharegpt": pa.schema([("id", pa.string()),
                           ("conversations", pa.list_(pa.struct([("from", pa.string()), ("value", pa.string())]))),
                           ("system", pa.string()), ("meta", pa.string())]),
    "template": pa.schema([("id", pa.string()), ("text", pa.string())]),
}
DEFINITION_SHAPES = ("messages", "alpaca", "sharegpt")  # the shapes with a column for tool definitions
COLUMNS = {
    "messages": "`id` (content hash of the messages), `messages` (list of {role, content}), `origin`, `source`, "
                "`parent_ids` (lineage), `meta` (JSON)",
    "messages+tools": "`id` (content hash of the messages), `messages` (list of {role, content, tool_calls (JSON), "
                      "tool_call_id, name, function_call (JSON)}, the tool fields null where a turn has none), "
                      "`origin`, `source`, `parent_ids` (lineage), `meta` (JSON)",
    "alpaca": "`id`, `instruction` (the last user turn), `input` (empty), `output` (its answer), `system` "
              "(system prompt or null), `history` ([[user, assistant], ...] before it), `meta` (JSON)",
    "sharegpt": "`id`, `conversations` (list of {from: human|gpt|system|function_call|observation, value}), `system` "
                "(system prompt or null), `meta` (JSON)",
    "template": "`id`, `text` (the rows rendered by the export's Jinja template)",
}


class Unfit(ValueError):
    """A row the chosen shape cannot express; the message is the reason."""


class Shape:
    """Turns samples into rows of one shape. `row(sample)` → dict with `meta` as a dict (the
    writers make it a JSON string where a column must be one); raises Unfit or CurateError."""

    def __init__(self, name: str = "messages", template: str | None = None, tools: bool = False,
                 definitions: tuple[str, ...] = ()):
        """`tools`: some exported row has tool fields (the `messages` shape's Parquet and HF schema);
        `definitions`: the TOOL_DEFINITIONS some exported row has (a column each in Parquet and HF)."""
        if name not in SHAPES:
            raise CurateError(f"unknown export shape {name!r}: use {', '.join(SHAPES[:-1])} or --template FILE")
        if (name == "template") != (template is not None):
            raise CurateError("a template export needs --template FILE" if template is None else
                              f"--template renders its own rows: leave out --shape {name}")
        self.name = name
        self.tools = tools and name == "messages"
        self.schema = SCHEMAS["messages+tools" if self.tools else name]
        self.columns = COLUMNS["messages+tools" if self.tools else name]
        self.lifts = bool(definitions)  # rows may have tool definitions in meta: lift them (lift_definitions)
        # the definitions' columns, after the turns: `tools` (and `functions`, messages only) as JSON text
        self.definitions = tuple(d for d in definitions if name == "messages" or (d == "tools" and name in DEFINITION_SHAPES))
        at = self.schema.get_field_index("messages") + 1 if name == "messages" else self.schema.get_field_index("meta")
        for d in reversed(self.definitions):
            self.schema = self.schema.insert(at, pa.field(d, pa.string()))
        self.columns += "".join(f"; `{d}` (the row's tool definitions as JSON text, null when it has none)" for d in self.definitions)
        self._template = _load_template(template) if template else None
        self.template_path = template

    def row(self, sample: dict) -> dict:
        """`sample`: the sample columns, messages with their tool fields put back (no `tool_fields`),
        its tool definitions lifted out of `meta` (`lift_definitions`)."""
        if self.name == "messages":
            defs = {k: sample[k] for k in S.TOOL_DEFINITIONS if k in sample}
            return {"id": sample["id"], "messages": sample["messages"], **defs,
                    **{k: sample[k] for k in ("origin", "source", "parent_ids", "meta")}}
        if self.name == "alpaca":
            row = to_alpaca(sample["messages"])
            return {"id": sample["id"], **row, **llamafactory_tools(sample, "Alpaca"), "meta": sample["meta"]}
        if self.name == "sharegpt":
            row = to_sharegpt(sample["messages"])
            return {"id": sample["id"], **row, **llamafactory_tools(sample, "ShareGPT"), "meta": sample["meta"]}
        return {"id": sample["id"], "text": self._render(sample)}

    def _render(self, sample: dict) -> str:
        import jinja2

        try:
            tools = sample.get("tools", sample.get("functions"))
            text = self._template.render(messages=sample["messages"], tools=tools, meta=sample["meta"], id=sample["id"])
        except _Raised as e:
            raise Unfit(str(e)) from None
        except jinja2.TemplateError as e:
            raise CurateError(f"template {self.template_path} failed on row {sample['id']}: {e}") from None
        if not text.strip():
            raise Unfit("the template rendered blank text")
        return text


def lift_definitions(sample: dict) -> dict:
    """The sample with its tool definitions (schema.TOOL_DEFINITIONS) moved from `meta` (a dict,
    or JSON text, kept as text) to keys of their own."""
    meta = sample["meta"]
    text = isinstance(meta, str)
    if text and not any(f'"{k}"' in meta for k in S.TOOL_DEFINITIONS):
        return sample  # the common case: no definitions, no JSON parsing
    parsed = (json.loads(meta) if meta else {}) if text else meta
    defs = S.tool_definitions(parsed) if isinstance(parsed, dict) else {}
    if not defs:
        return sample
    rest = {k: v for k, v in parsed.items() if k not in defs}
    return {**sample, **defs, "meta": json.dumps(rest, ensure_ascii=False, sort_keys=True) if text else rest}


def llamafactory_tools(sample: dict, shape: str) -> dict:
    """{"tools": JSON text} for a row with tool definitions, as LLaMA-Factory's Alpaca and
    ShareGPT rows hold them; Unfit for the legacy `functions`, which they have no field for."""
    if "functions" in sample:
        raise Unfit(f"legacy `functions` definitions ({shape} rows have `tools`: export as messages)")
    return {"tools": json.dumps(sample["tools"], ensure_ascii=False)} if "tools" in sample else {}


def to_alpaca(messages: list[dict]) -> dict:
    """[system?, user, assistant, ..., user, assistant] → instruction/input/output/system/history."""
    turns = list(messages)
    system = turns.pop(0)["content"] if turns and turns[0]["role"] == "system" else None
    for k, t in enumerate(turns):
        if t.get("tool_calls") or t.get("function_call"):
            raise Unfit("an assistant turn with tool calls (Alpaca has no field for them: export as messages)")
        if t["role"] not in ("user", "assistant"):
            what = "a system turn after the first turn" if t["role"] == "system" else f"a {t['role']} turn"
            raise Unfit(f"{what} (Alpaca holds an optional system prompt, then user/assistant exchanges)")
        if t["role"] != ("user" if k % 2 == 0 else "assistant"):
            raise Unfit("turns do not alternate user, assistant (Alpaca holds user/assistant exchanges)")
    if not turns or turns[-1]["role"] != "assistant":
        raise Unfit("the last turn is not an assistant answer (Alpaca needs an output)")
    _no_turn_names(messages, "Alpaca")
    history = [[turns[i]["content"], turns[i + 1]["content"]] for i in range(0, len(turns) - 2, 2)]
    row = {"instruction": turns[-2]["content"], "input": "", "output": turns[-1]["content"]}
    if system is not None:
        row["system"] = system
    if history:
        row["history"] = history
    return row


def to_sharegpt(messages: list[dict]) -> dict:
    """messages → {"conversations": [{from, value}], "system"?}: the leading system turn moves to
    `system` (unless a second system turn follows it: a reader puts `system` before the first);
    an assistant turn's tool_calls become a `function_call` turn, tool turns `observation` turns
    (LLaMA-Factory's convention, storage/sharegpt_tools.py)."""
    turns = list(messages)
    row = {}
    if turns and turns[0]["role"] == "system" and (len(turns) < 2 or turns[1]["role"] != "system"):
        row["system"] = turns.pop(0)["content"]
    conv = []
    for t in turns:
        if t["role"] not in SHAREGPT_FROM:
            raise Unfit(f"a {t['role']} turn (ShareGPT has human, gpt, system, function_call and observation)")
        if t.get("function_call"):
            raise Unfit("an assistant turn with a legacy function_call (ShareGPT writes tool_calls: export as messages)")
        if t.get("tool_calls"):
            conv.append(_function_call_turn(t))
        else:
            conv.append({"from": SHAREGPT_FROM[t["role"]], "value": t["content"]})
    unpaired = unpaired_result(turns)
    if unpaired is not None:
        raise Unfit(f"a tool turn with tool_call_id {unpaired['tool_call_id']} that does not answer the calls before it "
                    "in order (ShareGPT pairs results with calls by order: export as messages)")
    _no_turn_names(messages, "ShareGPT", ("name",))
    return {"conversations": conv, **row}


def _function_call_turn(turn: dict) -> dict:
    if turn["content"].strip():
        raise Unfit("an assistant turn with both text and tool calls (a ShareGPT function_call turn holds "
                    "the calls alone: export as messages)")
    try:
        return {"from": FUNCTION_CALL, "value": call_value(turn["tool_calls"])}
    except ValueError as e:
        raise Unfit(f"{e} (ShareGPT's function_call turn holds {{name, arguments}}: export as messages)") from None


def _no_turn_names(messages: list[dict], shape: str, keys: tuple[str, ...] = ("tool_call_id", "name")) -> None:
    """Unfit for a turn with a `tool_call_id` or `name` (a tool turn's, or a participant's name):
    the shape has no field for them, and the row's id (their content hash) counts them."""
    for t in messages:
        fields = [k for k in keys if t.get(k) is not None]
        if fields:
            raise Unfit(f"a {t['role']} turn with {' and '.join(fields)} ({shape} has no field for it: export as messages)")


def is_export_row(row) -> bool:
    """Whether a row (a dict read from a file) is one curate exported: its `id` is the content
    hash of the conversation it holds (a template row: an id and a text, nothing else)."""
    if not isinstance(row, dict) or not isinstance(row.get("id"), str):
        return False
    if set(row) == {"id", "text"}:
        return bool(_ID.fullmatch(row["id"]))
    try:
        messages = _messages_of(row)
        definitions = S.parse_tool_definitions(row)
    except (KeyError, TypeError, AttributeError, IndexError, ValueError):
        return False
    return messages is not None and row["id"] in (S.sample_id(messages, definitions), S.sample_id(messages))


def _messages_of(row: dict) -> list[dict] | None:
    system = [{"role": "system", "content": row["system"]}] if row.get("system") is not None else []
    if "messages" in row:
        return [{"role": m["role"], "content": m["content"], **S.parse_tool_fields(m)} for m in row["messages"]]
    if "conversations" in row:
        return system + number_calls([
            {"role": "assistant", "content": "", "tool_calls": parse_calls(t["value"])} if t["from"] == FUNCTION_CALL
            else {"role": _SHAREGPT_ROLE[t["from"]], "content": t["value"]} for t in row["conversations"]])
    if "instruction" in row:
        turns = [{"role": r, "content": c} for u, a in (row.get("history") or []) for r, c in (("user", u), ("assistant", a))]
        user = row["instruction"] + ("\n\n" + row["input"] if row.get("input") else "")
        return system + turns + [{"role": "user", "content": user}, {"role": "assistant", "content": row["output"]}]
    return None


class _Raised(Exception):
    pass


def _raise_exception(message: str = "the template left this row out"):
    raise _Raised(message)


def _load_template(path: str):
    import jinja2

    try:
        with open(path, encoding="utf-8") as f:
            source = f.read()
    except OSError as e:
        raise CurateError(f"cannot read template {path}: {e.strerror}") from None
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=False, autoescape=False)
    env.globals["raise_exception"] = _raise_exception
    # Jinja's own tojson escapes <, > and & for HTML; training text wants them as they are.
    env.filters["tojson"] = lambda value, indent=None: json.dumps(value, ensure_ascii=False, indent=indent)
    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as e:
        raise CurateError(f"template {path}, line {e.lineno}: {e.message}") from None
