"""One vocabulary across stages and selectors (issue 22): walks the registry and checks that a
config key is its class's `name`, that no constructor uses a retired parameter name, that every
alias (`ALIASES`, read by pipeline/config.py) names a parameter that exists, that a config using
an old name still validates (with a warning), and that no constructor has a mutable default."""

from __future__ import annotations

import inspect

import pytest

from curate.errors import CurateError
from curate.pipeline.config import aliases, load_config
from curate.pipeline.registry import SELECTORS, STAGES, selector_class, stage_class

RETIRED = {"vector", "field", "fields", "on"}  # now `vectors`, and `text` for the text a stage reads

COMPONENTS = [("stage", key) for key in STAGES] + [("selector", key) for key in SELECTORS]


def _cls(kind: str, key: str):
    return stage_class(key) if kind == "stage" else selector_class(key)


def _params(cls) -> dict[str, inspect.Parameter]:
    return dict(list(inspect.signature(cls.__init__).parameters.items())[1:])


@pytest.mark.parametrize("kind,key", COMPONENTS)
def test_config_key_is_the_class_name(kind, key):
    assert _cls(kind, key).name == key


@pytest.mark.parametrize("kind,key", COMPONENTS)
def test_no_retired_parameter_name(kind, key):
    assert not RETIRED & set(_params(_cls(kind, key)))


@pytest.mark.parametrize("kind,key", COMPONENTS)
def test_aliases_name_existing_parameters(kind, key):
    cls = _cls(kind, key)
    params = _params(cls)
    for old, new in aliases(cls).items():
        assert new in params, f"{key}: alias {old} → {new}, which is no parameter"
        assert old not in params, f"{key}: {old} is both an alias and a parameter"


@pytest.mark.parametrize("kind,key", COMPONENTS)
def test_no_mutable_default(kind, key):
    for name, p in _params(_cls(kind, key)).items():
        assert not isinstance(p.default, (list, dict, set, bytearray)), f"{key}.{name}: mutable default {p.default!r}"


@pytest.mark.parametrize("kind,key", COMPONENTS)
def test_seed_defaults_to_zero(kind, key):
    seed = _params(_cls(kind, key)).get("seed")
    assert seed is None or seed.default == 0


def test_some_aliases_exist():
    assert any(aliases(_cls(kind, key)) for kind, key in COMPONENTS)


def _write(tmp_path, text):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return str(path)


def test_old_vector_name_validates_and_warns(tmp_path, capsys):
    config = load_config(_write(tmp_path, """
stages:
  - rds_embed: {model: default, vector: mine}
selectors:
  - rds: {model: default, targets: t.jsonl, vector: mine}
"""))
    assert config.stages[0].params["vectors"] == "mine" and "vector" not in config.stages[0].params
    assert config.selectors[0].params["vectors"] == "mine"
    err = capsys.readouterr().err
    assert "stages.0.rds_embed.vector is deprecated: use vectors" in err
    assert "selectors.0.rds.vector is deprecated: use vectors" in err


def test_old_and_new_name_together_is_an_error(tmp_path):
    with pytest.raises(CurateError, match="vector and vectors name the same parameter"):
        load_config(_write(tmp_path, "stages:\n  - rds_embed: {model: default, vector: a, vectors: b}\n"))


def test_old_name_keeps_the_run_id(tmp_path):
    old = load_config(_write(tmp_path, "stages:\n  - rds_embed: {model: default, vector: mine}\n"))
    new = load_config(_write(tmp_path, "stages:\n  - rds_embed: {model: default, vectors: mine}\n"))
    assert old.fingerprint([]) == new.fingerprint([])


def test_old_text_names_and_values_validate_and_warn(tmp_path, capsys):
    bench = tmp_path / "b.jsonl"
    bench.write_text('{"prompt": "a benchmark prompt"}\n')
    config = load_config(_write(tmp_path, f"""
stages:
  - exact_dedup: {{on: conversation}}
  - near_dedup: {{on: instruction}}
  - decontaminate: {{benchmarks: [{bench}], fields: both}}
  - embed: {{field: instruction_response}}
"""))
    assert [s.params["text"] for s in config.stages] == ["conversation", "instruction", ["instruction", "response"],
                                                          ["instruction", "response"]]
    err = capsys.readouterr().err
    assert "stages.0.exact_dedup.on is deprecated: use text" in err
    assert "stages.2.decontaminate.fields is deprecated: use text (fields: both is text: ['instruction', 'response'])" in err
    assert "stages.3.embed.field is deprecated: use text" in err
    new = load_config(_write(tmp_path, f"""
stages:
  - exact_dedup: {{text: conversation}}
  - near_dedup: {{text: instruction}}
  - decontaminate: {{benchmarks: [{bench}], text: [instruction, response]}}
  - embed: {{text: [instruction, response]}}
"""))
    assert config.fingerprint([]) == new.fingerprint([])  # the run id it had under the old names


def test_decontaminate_default_keeps_its_run_id():
    """`text: turns` is the old `fields: all`: the run id a default decontaminate had before."""
    from curate.pipeline.config import _old_names

    assert _old_names(stage_class("decontaminate"), {"text": "turns"}) == {"fields": "all"}
    assert _old_names(stage_class("embed"), {"text": ["instruction", "response"]}) == {"field": "instruction_response"}


def test_retired_text_values_are_not_new_values(tmp_path):
    with pytest.raises(CurateError, match="text"):
        load_config(_write(tmp_path, "stages:\n  - embed: {text: instruction_response}\n"))


def test_instruction_has_one_meaning_the_first_user_turn():
    """Generators, filters, dedup and embed read the same turn as "the instruction"."""
    import pyarrow as pa

    from curate.generators.base import instruction as generators_instruction
    from curate.stages.text import first_user_turn, instruction

    assert generators_instruction is instruction
    conversations = [
        [{"role": "system", "content": "s"}, {"role": "user", "content": "first"}, {"role": "assistant", "content": "a"},
         {"role": "user", "content": "second"}],
        [{"role": "assistant", "content": "no user turn"}],
    ]
    column = pa.array(conversations, pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())])))
    assert first_user_turn(column).to_pylist() == [instruction(c) for c in conversations] == ["first", ""]
