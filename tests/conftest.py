import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _shared_data() -> Path:
    """The folder of real data the data-reading tests use (`../shared/data`, or $CURATE_SHARED_DATA
    alone when set). Returned even when absent: the tests that read it skip through the
    `shared_data` fixture, and every other test still collects and runs."""
    env = os.environ.get("CURATE_SHARED_DATA")
    candidates = [Path(env)] if env else [ROOT.parent / "shared" / "data", Path("/work/shared/data")]
    return next((c for c in candidates if (c / "alpaca_ifd_5pct.json").exists()), candidates[0])


SHARED_DATA = _shared_data()
ALPACA = SHARED_DATA / "alpaca_ifd_5pct.json"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """`SHARED_DATA`, or a skip that says where the data was looked for."""
    if not ALPACA.exists():
        pytest.skip(f"needs the shared test data (alpaca_ifd_5pct.json, benchmarks/) in {SHARED_DATA}: "
                    "set CURATE_SHARED_DATA to the folder holding it")
    return SHARED_DATA


@pytest.fixture(scope="session")
def ray_local():
    """One embedded Ray for the in-process tests (the runner reuses an initialised Ray)."""
    import ray

    from curate.pipeline.runner import LOCAL_RAY_SYSTEM_CONFIG
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, _system_config=LOCAL_RAY_SYSTEM_CONFIG)
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    """The folder of tests/tiny_llm.py's tiny random Llama, built once per session (read-only)."""
    from tiny_llm import build_tiny_llama

    return str(build_tiny_llama(tmp_path_factory.mktemp("tiny_llama")))


@pytest.fixture(scope="session")
def alpaca_rows(shared_data) -> list[dict]:
    return json.loads((shared_data / ALPACA.name).read_text())


def write_jsonl(path: Path, rows: list, extra_lines: list[bytes] = ()) -> Path:
    with open(path, "wb") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False).encode() + b"\n")
        for line in extra_lines:
            f.write(line + b"\n")
    return path


def curate_cmd() -> list[str]:
    return [sys.executable, "-m", "curate.cli"]


def curate_sh(cwd, *args, check: bool = True) -> subprocess.CompletedProcess:
    """`curate ARGS` run in `cwd` (text output captured); with `check`, a non-zero exit fails the
    test with the end of its stderr."""
    proc = subprocess.run([*curate_cmd(), *args], cwd=cwd, capture_output=True, text=True, timeout=600)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def run_killing_at_first_commit(cmd: list[str], kill, timeout: float = 300) -> tuple[int, list[int]]:
    """Run a `curate run ... --progress lines` command; at its first committed shard call
    kill(driver_pid), which kills something and returns the pids it killed. Returns the run's
    exit code and those pids; nothing of the run is left behind."""
    return run_killing_at(cmd, lambda line: line.startswith("committed shard"), kill, timeout)[:2]


def run_killing_at(cmd: list[str], when, kill, timeout: float = 300) -> tuple[int, list[int], str]:
    """Run a `curate run ... --progress lines` command; at the first line of its stderr for
    which when(line) holds, call kill(driver_pid), which kills something and returns the pids it
    killed. Returns the run's exit code, those pids and its stderr."""
    import signal
    import time

    proc = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, start_new_session=True)
    killed: list[int] = []
    err: list[str] = []
    try:
        deadline = time.monotonic() + timeout
        for line in proc.stderr:
            err.append(line)
            if not killed and when(line):
                killed = kill(proc.pid) or [-1]
            assert time.monotonic() < deadline, "the run neither finished nor failed in time"
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode, [k for k in killed if k > 0], "".join(err)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models run faster on one thread, and far faster on a machine other jobs share."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def headless_chromium(user_data_dir) -> list[str]:
    """The command line that starts Debian's Chromium headless here (no network of its own, a
    fresh profile in `user_data_dir`); skips the test when neither chromium nor
    chromium-browser is on PATH (install.sh installs chromium with apt as root)."""
    import shutil

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("neither chromium nor chromium-browser is on PATH (install.sh installs chromium with apt as root)")
    return [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
            f"--user-data-dir={user_data_dir}"]


# For each row of selection $name in run $run: whether its lineage (parent_ids, walked up) reaches
# an input seed with no parents, and the number of hops it took.
SELECTION_LINEAGE = """
WITH RECURSIVE walk(start, id, hops) AS (
    SELECT id, id, 0 FROM samples WHERE run_id = $run AND id IN (SELECT id FROM selections WHERE run_id = $run AND name = $name)
    UNION ALL
    SELECT w.start, p.parent, w.hops + 1
    FROM walk w JOIN (SELECT id, unnest(parent_ids) AS parent FROM samples WHERE run_id = $run) p ON p.id = w.id
)
SELECT w.start, bool_or(s.origin = 'seed' AND len(s.parent_ids) = 0), max(w.hops)
FROM walk w JOIN samples s ON s.run_id = $run AND s.id = w.id GROUP BY w.start
"""
