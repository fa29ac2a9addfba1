import pytest

from curate.errors import CurateError
from curate.pipeline.config import load_config
from conftest import ROOT


def write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return str(p)


def test_demo_config_loads():
    cfg = load_config(str(ROOT / "jobs/configs/demo.yaml"))
    assert cfg.input == ["demo"]
    assert [s.key for s in cfg.stages] == ["filters"]
    assert cfg.stages[0].params["min_response_words"] == 3


def test_unknown_top_level_key_is_named(tmp_path):
    with pytest.raises(CurateError, match=r"inptu: unknown key"):
        load_config(write(tmp_path, "inptu: demo\n"))


def test_unknown_stage_parameter_is_named(tmp_path):
    with pytest.raises(CurateError, match=r"stages\.0\.filters: min_respons_words: unknown key"):
        load_config(write(tmp_path, "stages:\n  - filters: {min_respons_words: 3}\n"))


def test_bad_value_is_named(tmp_path):
    with pytest.raises(CurateError, match=r"filters: min_response_words: .*'many'"):
        load_config(write(tmp_path, "stages:\n  - filters: {min_response_words: many}\n"))
    with pytest.raises(CurateError, match=r"shard_size: .*greater than or equal to 1"):
        load_config(write(tmp_path, "shard_size: 0\n"))


def test_unknown_stage_is_named(tmp_path):
    with pytest.raises(CurateError, match=r"stages\.0: unknown stage 'filterz': did you mean 'filters'\?"):
        load_config(write(tmp_path, "stages:\n  - filterz: {}\n"))
    with pytest.raises(CurateError, match=r"unknown stage 'near_dedupe': did you mean 'near_dedup'\?"):
        load_config(write(tmp_path, "stages:\n  - near_dedupe: {}\n"))
    with pytest.raises(CurateError, match=r"unknown stage 'zzz': \(known: "):  # nothing close: the list alone
        load_config(write(tmp_path, "stages:\n  - zzz: {}\n"))


def test_set_overrides_reach_nested_values(tmp_path):
    cfg = load_config(
        str(ROOT / "jobs/configs/demo.yaml"),
        ["stages.0.filters.min_response_words=7", "db=/tmp/x.duckdb", "ray.num_cpus=2"],
    )
    assert cfg.stages[0].params["min_response_words"] == 7
    assert cfg.db == "/tmp/x.duckdb" and cfg.ray.num_cpus == 2
    with pytest.raises(CurateError, match="key=value"):
        load_config(None, ["novalue"])


def test_fingerprint_follows_what_changes_rows(tmp_path):
    inputs = [{"path": "/x.jsonl", "size": 10, "mtime_ns": 1}]
    a = load_config(None, input=["x"], db="a.duckdb")
    b = load_config(None, input=["x"], db="b.duckdb", ray={"num_cpus": 1})
    c = load_config(None, input=["x"], stages=[{"filters": {"min_response_words": 2}}])
    assert a.fingerprint(inputs) == b.fingerprint(inputs)  # where rows land and how Ray runs: same run
    assert a.fingerprint(inputs) != c.fingerprint(inputs)
    assert a.fingerprint(inputs) != a.fingerprint([dict(inputs[0], size=11)])


def test_stage_resources_can_be_overridden(tmp_path):
    from curate.pipeline.dag import stage_plans

    cfg = load_config(write(tmp_path, "stages:\n  - filters: {resources: {num_cpus: 0.5, concurrency: 2}, batch_size: 64}\n"))
    plan = stage_plans(cfg)[1]
    assert plan.resources.num_cpus == 0.5 and plan.resources.concurrency == 2 and plan.batch_size == 64


def test_selectors_are_validated_like_stages(tmp_path):
    cfg = load_config(write(tmp_path, "selectors:\n  - random: {budget: 0.25, name: quarter}\n"))
    assert (cfg.selectors[0].key, cfg.selectors[0].name, cfg.selectors[0].params) == ("random", "quarter", {"budget": 0.25, "seed": 0})
    with pytest.raises(CurateError, match=r"selectors\.0: unknown selector 'kmeans_diversityy': did you mean 'kmeans_diversity'\?"):
        load_config(write(tmp_path, "selectors:\n  - kmeans_diversityy: {}\n"))
    with pytest.raises(CurateError, match=r"selectors\.0\.random: sed: unknown key"):
        load_config(write(tmp_path, "selectors:\n  - random: {sed: 1}\n"))


def test_yaml_on_is_a_key_not_a_boolean(tmp_path):
    cfg = load_config(write(tmp_path, "stages:\n  - exact_dedup: {on: conversation}\n  - filters: {drop_unfinished: false}\n"))
    assert cfg.stages[0].params["text"] == "conversation"  # `on`, the old name of `text`, read as a key
    assert cfg.stages[1].params["drop_unfinished"] is False


def test_a_selector_before_the_scores_it_needs_is_rejected_before_anything_runs():
    from curate.errors import CurateError
    from curate.pipeline.config import load_config

    with pytest.raises(CurateError, match=r"selectors\.0\.kmeans_diversity needs vectors 'embed'.*add an `embed`"):
        load_config(None, stages=[{"filters": {}}], selectors=[{"kmeans_diversity": {"budget": 10}}])
    with pytest.raises(CurateError, match=r"selectors\.0\.ifd needs scores 'ifd'"):
        load_config(None, stages=[{"embed": {}}], selectors=[{"ifd": {"budget": 0.1}}])
    with pytest.raises(CurateError, match=r"selectors\.0\.deita needs scores 'deita'.*add a `deita_scores` stage"):
        load_config(None, stages=[{"embed": {}}], selectors=[{"deita": {"budget": 0.1}}])  # the default score
    load_config(None, stages=[{"embed": {}}, {"deita_scores": {}}], selectors=[{"deita": {"budget": 0.1}}])
    with pytest.raises(CurateError, match=r"stages\.0\.semdedup needs vectors 'embed'.*earlier stage"):
        load_config(None, stages=[{"semdedup": {}}, {"embed": {}}])  # reordered: reads vectors not made yet
    with pytest.raises(CurateError, match=r"needs vectors 'other'.*makes vectors embed"):
        load_config(None, stages=[{"embed": {}}, {"ifd": {"model": "m"}}], selectors=[{"deita": {"score": "ifd", "vectors": "other"}}])
    for coverage_selector in ("facility_location", "k_center"):
        with pytest.raises(CurateError, match=rf"selectors\.0\.{coverage_selector} needs vectors 'embed'"):
            load_config(None, stages=[{"filters": {}}], selectors=[{coverage_selector: {"budget": 10}}])
    with pytest.raises(CurateError, match=r"selectors\.0\.facility_location needs scores 'quality'"):
        load_config(None, stages=[{"embed": {}}], selectors=[{"facility_location": {"weight_by": "quality"}}])
    ok = load_config(None, stages=[{"embed": {}}, {"semdedup": {}}],
                     selectors=[{"kmeans_diversity": {"budget": 10, "k": 4}}])
    assert [s.key for s in ok.stages] == ["embed", "semdedup"]


@pytest.mark.parametrize("config, message", [
    # values each constructor rejects, now caught by the config check (curate plan), not mid-run
    ({"stages": [{"near_dedup": {"threshold": 1.5}}]}, r"stages\.0\.near_dedup: threshold: .*less than or equal to 1"),
    ({"stages": [{"near_dedup": {"threshold": 0}}]}, r"stages\.0\.near_dedup: threshold: .*greater than 0"),
    ({"stages": [{"embed": {}}, {"semdedup": {"threshold": 5}}]}, r"stages\.1\.semdedup: threshold"),
    ({"stages": [{"embed": {}}], "selectors": [{"kmeans_diversity": {"k": 0}}]}, r"selectors\.0\.kmeans_diversity: k"),
    ({"stages": [{"embed": {}}], "selectors": [{"kmeans_diversity": {"temperature": 0}}]}, r"temperature"),
    ({"selectors": [{"random": {"budget": 0}}]}, r"budget: a row budget is at least 1, got 0"),
    ({"selectors": [{"random": {"budget": -3}}]}, r"budget: a row budget is at least 1"),
    ({"selectors": [{"random": {"budget": 1.5}}]}, r"budget: a fractional budget lies in \(0, 1\]"),
    # values that ran and silently wrecked the result
    ({"stages": [{"filters": {"languages": ["english"]}}]}, r"languages\.0: 'english' is not a language code"),
    ({"stages": [{"filters": {"languages": "english"}}]}, r"languages\.0: 'english' is not a language code"),  # one string
    ({"stages": [{"filters": {"max_non_alnum_ratio": -1}}]}, r"max_non_alnum_ratio"),
    ({"stages": [{"filters": {"repeated_ngram": 0, "max_repeated_ngram_ratio": 0.5}}]}, r"repeated_ngram"),
    ({"stages": [{"filters": {"min_response_words": -5}}]}, r"min_response_words"),
    ({"stages": [{"filters": {"min_language_confidence": 5}}]}, r"min_language_confidence"),
    # a selection overwritten by another of the same name; an export of one no selector writes
    ({"selectors": [{"random": {"budget": 2}}, {"random": {"budget": 3}}]},
     r"selectors\.1 \(random\) writes the selection 'random', as selectors\.0 does"),
    ({"selectors": [{"random": {"budget": 2}}], "export": {"out": "o", "selection": "nosuch"}},
     r"export\.selection: no selector writes 'nosuch' \(selections: 'random'\)"),
])
def test_out_of_range_values_fail_the_config_check(config, message):
    with pytest.raises(CurateError, match=message):
        load_config(None, input=["x.jsonl"], **config)


def test_in_range_values_and_distinct_selection_names_pass():
    config = load_config(None, input=["x.jsonl"], stages=[{"filters": {"languages": ["en", "de"], "max_non_alnum_ratio": 0.5}},
                                                          {"near_dedup": {"threshold": 1}}],
                         selectors=[{"random": {"budget": 5}}, {"random": {"budget": 0.5, "name": "half"}},
                                    {"random": {"budget": 1.0, "name": "all"}}],
                         export={"out": "o", "selection": "half"})
    assert [s.params["budget"] for s in config.selectors] == [5, 0.5, 1.0]
    assert isinstance(config.selectors[0].params["budget"], int) and isinstance(config.selectors[2].params["budget"], float)


def test_a_variable_with_no_vars_block_is_named(tmp_path):
    """`input: ${data}` with no vars block read as a file called "${data}"; with a vars block the
    same slip is named. Now it is named either way."""
    path = tmp_path / "c.yaml"
    path.write_text("input: ${data}\nstages: [exact_dedup]\n")
    with pytest.raises(CurateError, match=r"\$\{data\} is not among vars \(the config has no vars: block\)"):
        load_config(str(path))


def test_bad_yaml_in_a_set_names_the_set(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("input: x.jsonl\nstages: [filters]\n")
    with pytest.raises(CurateError, match=r"--set filters\.min_response_words=\[1: the value is not valid YAML"):
        load_config(str(path), ["filters.min_response_words=[1"])
    assert load_config(str(path), ["filters.min_response_words=3"]).stages[0].params["min_response_words"] == 3
