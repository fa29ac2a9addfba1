"""Chat templates that have no system role.

Gemma's template raises "System role not supported"; Mistral-style templates raise when the
roles do not alternate user/assistant, which a leading system turn breaks; others drop the
system text silently. A Respond stage with `system_prompt`, or seed rows that carry a system
turn (ShareGPT's `system` field, Alpaca's `system`), then failed deep inside a Ray worker.

At engine start `probe` renders a probe conversation with a system turn through the model's
template: when the template refuses it, or renders it without the system text, every
conversation has its system text folded into its first user turn (`fold_system`), as these
models' own docs advise. A template that cannot render even one user turn is an error that
names the template and the fix. `preflight` does the cheap part before any Ray work: a local
model folder with no chat template at all.
"""

from __future__ import annotations

import json
import os
import re

from curate.errors import CurateError

NATIVE, FOLD = "native", "fold"
_PROBE_SYSTEM = "curate-probe-system-text"
_PROBE_USER = "curate-probe-user-text"
FIX = ("set the backend's `chat_template` to a Jinja template file (or template text) for this model, "
       "or use its chat/instruct variant")


def fold_system(messages: list[dict]) -> list[dict]:
    """The conversation with each system turn's text put at the top of the next user turn
    (a blank line between); system text with no user turn after it becomes a user turn."""
    out, pending = [], []
    for m in messages:
        if m.get("role") == "system":
            if m.get("content"):
                pending.append(m["content"])
            continue
        if m.get("role") == "user" and pending:
            m = {**m, "content": "\n\n".join([*pending, m.get("content") or ""])}
            pending = []
        out.append(m)
    if pending:
        out.append({"role": "user", "content": "\n\n".join(pending)})
    return out


# What servers say when their template refuses a system turn (vLLM serve passes the template's
# own exception text on: Gemma's, Mistral's).
_REFUSALS = re.compile(r"system role not supported|roles must alternate|system (?:role|message|prompt)s? (?:is |are )?not (?:supported|allowed)|"
                       r"unsupported role:? ?'?system", re.IGNORECASE)


def refuses_system_role(text: str) -> bool:
    """Whether a server's error text says its chat template has no system role."""
    return bool(_REFUSALS.search(text or ""))


def template_name(tokenizer, model: str, chat_template: str | None = None) -> str:
    """How the error names the template: the backend's own, or the model's."""
    if chat_template:
        return f"the chat template given in the backend spec ({_short(chat_template)})"
    return f"the chat template of {getattr(tokenizer, 'name_or_path', None) or model}"


def load_template(chat_template: str | None) -> str | None:
    """The backend's `chat_template`: a file's text, or the template text itself."""
    if chat_template and os.path.isfile(chat_template):
        with open(chat_template, encoding="utf-8") as f:
            return f.read()
    return chat_template


def probe(tokenizer, model: str, chat_template: str | None = None) -> str:
    """NATIVE when the template renders a system turn, FOLD when it refuses one or drops its
    text. Raises CurateError (one line: the template, what it said, the fix) when it cannot
    render a single user turn either."""
    name = template_name(tokenizer, model, chat_template)
    text = load_template(chat_template)
    try:
        render(tokenizer, [{"role": "user", "content": _PROBE_USER}], text)
    except Exception as e:  # jinja2's TemplateError, transformers' "no chat template" ValueError, ...
        raise CurateError(f"{name} cannot render a user turn ({type(e).__name__}: {_first_line(e)}); {FIX}") from None
    try:
        rendered = render(tokenizer, [{"role": "system", "content": _PROBE_SYSTEM}, {"role": "user", "content": _PROBE_USER}], text)
    except Exception:
        return FOLD
    return NATIVE if _PROBE_SYSTEM in rendered else FOLD


def render(tokenizer, messages: list[dict], chat_template: str | None = None) -> str:
    kwargs = {"chat_template": chat_template} if chat_template else {}
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False, **kwargs)


def preflight(spec: dict) -> None:
    """Before any Ray work: a vLLM backend on a local model folder that has no chat template
    (a base model) and none given in the spec fails here, in one line. Reads files only."""
    if not isinstance(spec, dict) or spec.get("kind", "vllm") != "vllm" or spec.get("chat_template"):
        return
    model = spec.get("model")
    if not isinstance(model, str) or not os.path.isdir(model):
        return  # a hub name: its files are not here to read
    if has_chat_template(model) is False:
        raise CurateError(f"{model} has no chat template (no `chat_template` in tokenizer_config.json, no "
                          f"chat_template.jinja or chat_template.json); {FIX}")


def has_chat_template(folder: str) -> bool | None:
    """Whether a model folder holds a chat template; None when it cannot tell (no tokenizer
    config at all: vLLM may still find one elsewhere)."""
    if any(os.path.isfile(os.path.join(folder, f)) for f in ("chat_template.jinja", "chat_template.json")):
        return True
    if os.path.isdir(os.path.join(folder, "additional_chat_templates")):
        return True
    config = os.path.join(folder, "tokenizer_config.json")
    if not os.path.isfile(config):
        return None
    try:
        with open(config, encoding="utf-8") as f:
            return bool(json.load(f).get("chat_template"))
    except (OSError, ValueError):
        return None


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [""])[0][:200]


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= 60 else text[:57] + "..."
