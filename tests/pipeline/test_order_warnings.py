"""The config check's advice: an expensive stage placed before a dedup it does not feed works on
rows the dedup drops (pipeline/dependencies.py `order_warnings`), printed before anything runs."""

from curate.pipeline.config import load_config
from curate.pipeline.dependencies import order_warnings

VLLM = {"kind": "vllm", "model": "m"}


def warnings_for(*stages) -> list[str]:
    return order_warnings(load_config(None, stages=list(stages)).stages)


def test_embed_before_near_dedup_warns(capsys):
    assert warnings_for({"embed": {}}, {"near_dedup": {}}) == [
        "embed runs before near_dedup on every row near_dedup will drop; move it after near_dedup to embed only the survivors"]
    capsys.readouterr()
    load_config(None, stages=[{"embed": {}}, {"near_dedup": {}}])  # the config check prints it, one line
    err = capsys.readouterr().err
    assert err.splitlines() == ["warning: embed runs before near_dedup on every row near_dedup will drop; "
                                "move it after near_dedup to embed only the survivors"]


def test_embed_before_the_semdedup_it_feeds_does_not_warn():
    assert warnings_for({"embed": {}}, {"semdedup": {}}) == []
    # ...but before a dedup in between, it can still move past that one.
    assert warnings_for({"embed": {}}, {"exact_dedup": {}}, {"semdedup": {}}) == [
        "embed runs before exact_dedup on every row exact_dedup will drop; move it after exact_dedup to embed only the survivors"]
    # An embedding semdedup does not read feeds nothing.
    assert len(warnings_for({"embed": {"vectors": "other"}}, {"embed": {}}, {"semdedup": {}})) == 1


def test_generators_before_a_dedup_do_not_warn():
    assert warnings_for({"respond": {"backend": VLLM}}, {"exact_dedup": {}}) == []
    assert warnings_for({"self_instruct": {"backend": VLLM}}, {"evol_instruct": {"backend": VLLM}},
                        {"skillmix": {"backend": VLLM}}, {"near_dedup": {}}) == []


def test_no_global_stage_no_warning(capsys):
    assert warnings_for({"embed": {}}, {"verify_code": {"allow_unsandboxed": True}}, {"respond": {"backend": VLLM}},
                        {"filters": {}}) == []
    assert warnings_for() == []
    assert capsys.readouterr().err == ""


def test_cheap_stages_and_stages_after_the_dedup_do_not_warn():
    assert warnings_for({"filters": {}}, {"verify_math": {}}, {"exact_dedup": {}}, {"embed": {}}, {"ifd": {"model": "m"}}) == []


def test_several_dedups_one_line_per_stage():
    got = warnings_for({"verify_code": {"allow_unsandboxed": True}}, {"ifd": {"model": "m"}},
                       {"exact_dedup": {}}, {"near_dedup": {}})
    assert got == [
        "verify_code runs before exact_dedup and near_dedup on every row they will drop; move it after near_dedup to verify only the survivors",
        "ifd runs before exact_dedup and near_dedup on every row they will drop; move it after near_dedup to score only the survivors"]


def test_resources_in_the_config_decide_what_is_expensive():
    assert warnings_for({"embed": {"resources": {"actor": False}}}, {"near_dedup": {}}) == []
    assert len(warnings_for({"decontaminate": {"benchmarks": [], "resources": {"num_gpus": 1}}}, {"near_dedup": {}})) == 1


def test_a_judge_of_responses_with_none_written_before_it_warns_when_rows_may_lack_them(capsys):
    from curate.pipeline.dependencies import response_warnings

    judge = {"tick": {"backend": VLLM}}
    stages = load_config(None, stages=[judge]).stages
    assert response_warnings(stages, require_response=True) == []  # every row has a response
    (warning,) = response_warnings(stages, require_response=False)
    assert warning.startswith("tick judges responses") and "add a respond stage before it" in warning
    assert response_warnings(load_config(None, stages=[{"respond": {"backend": VLLM}}, judge]).stages, False) == []
    capsys.readouterr()
    load_config(None, stages=[judge], ingest={"require_response": False})
    assert capsys.readouterr().err.startswith("warning: tick judges responses")
