"""End to end through `ray job submit`: a real local Ray head (dashboard + job server), the demo
config submitted with the checkout as the job's working dir, and the DuckDB file it writes.

Nothing is mocked. The head is started by this test with its own free ports, its own temp dir and
its own auth token, and stopped by its own process ids (never `ray stop`, which would stop every
Ray on the machine).

Ray >= 2.5x turns token authentication on by default for `ray start --head` (the dashboard answers
401 without a token) and would read or create ~/.ray/auth_token. The test gives the head, the
`ray job submit` CLI and its own HTTP polling one fresh token through $RAY_AUTH_TOKEN instead, so
it neither depends on nor touches the user's ~/.ray.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

pytestmark = [pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
RAY = str(BIN / "ray")
SEEDS = ROOT / "curate" / "data" / "demo_seeds.jsonl"

START_TIMEOUT_S = 120
JOB_TIMEOUT_S = 300


# --------------------------------------------------------------------------- the Ray head


@dataclass
class RayHead:
    proc: subprocess.Popen
    temp_dir: str
    gcs_port: int
    dashboard_port: int
    token: str
    env: dict
    log_path: str

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def api(self, path: str, timeout: float = 10):
        """GET a dashboard REST path with this head's token; the decoded JSON."""
        req = urllib.request.Request(f"{self.dashboard_url}{path}",
                                     headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read())

    def log_tail(self, n: int = 4000) -> str:
        try:
            return Path(self.log_path).read_text(errors="replace")[-n:]
        except OSError:
            return ""


def _free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1 (all held open at once, so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _head_env(token: str) -> dict:
    env = dict(os.environ)
    # Not an ambient cluster, token file or upload setting: this head, and Ray's default upload
    # rules (default excludes + the checkout's .gitignore), which the test checks.
    for k in ("RAY_ADDRESS", "RAY_JOB_CONFIG_JSON_ENV_VAR", "RAY_AUTH_TOKEN_PATH",
              "RAY_RUNTIME_ENV_IGNORE_GITIGNORE", "RAY_OVERRIDE_RUNTIME_ENV_DEFAULT_EXCLUDES"):
        env.pop(k, None)
    # Token auth with a token of our own (see the module docstring); every process of the head,
    # the job's driver included, inherits it from this environment.
    env["RAY_AUTH_MODE"] = "token"
    env["RAY_AUTH_TOKEN"] = token
    # On SIGTERM `ray start` first asks the GCS to drain the node, for up to 30 s by default; the
    # GCS gets the same SIGTERM from the group kill, so that wait would be spent in full.
    env["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"] = "0"
    # The job's entrypoint is `python ...`, run by a shell the head's processes start: put this
    # venv's interpreter first on PATH so that `python` has ray, duckdb and datasets.
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    env["HF_HUB_OFFLINE"] = "1"
    env["HF_DATASETS_OFFLINE"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _wait_for_job_api(head: RayHead, timeout: float) -> None:
    """Poll the dashboard until the job API answers (the job server comes with the dashboard)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if head.proc.poll() is not None:
            raise RuntimeError(f"`ray start` exited with {head.proc.returncode}:\n{head.log_tail()}")
        try:
            head.api("/api/version", timeout=5)
            head.api("/api/jobs/", timeout=5)
            return
        except (urllib.error.URLError, ConnectionError, OSError, ValueError) as e:
            last = e
        time.sleep(1)
    raise TimeoutError(f"the job API at {head.dashboard_url} did not answer in {timeout:.0f}s "
                       f"(last error: {last!r}):\n{head.log_tail()}")


def start_ray_head(log_dir: Path) -> RayHead:
    # A short temp dir of our own: Ray's Unix socket paths live under it (~107 char limit).
    temp_dir = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    (gcs, dashboard, client, agent_http, agent_grpc, env_agent, metrics,
     node_manager, object_manager) = _free_ports(9)
    cmd = [
        RAY, "start", "--head", "--block",
        "--node-ip-address=127.0.0.1",
        f"--port={gcs}",
        "--include-dashboard=true",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard}",
        f"--ray-client-server-port={client}",
        f"--dashboard-agent-listen-port={agent_http}",
        f"--dashboard-agent-grpc-port={agent_grpc}",
        f"--runtime-env-agent-port={env_agent}",
        f"--metrics-export-port={metrics}",
        f"--node-manager-port={node_manager}",
        f"--object-manager-port={object_manager}",
        "--num-cpus=2",
        "--num-gpus=0",
        f"--object-store-memory={256 * 1024 * 1024}",
        f"--temp-dir={temp_dir}",
        "--disable-usage-stats",
    ]
    token = secrets.token_hex(32)
    env = _head_env(token)
    log_path = str(log_dir / "ray_start.log")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, cwd=temp_dir, start_new_session=True)
    head = RayHead(proc, temp_dir, gcs, dashboard, token, env, log_path)
    try:
        _wait_for_job_api(head, START_TIMEOUT_S)
    except BaseException:
        stop_ray_head(head)
        raise
    return head


def _ours(p: psutil.Process, temp_dir: str) -> bool:
    """A process of this head: its command line names our temp dir, or it runs inside it
    (the job's driver runs in the unpacked working dir under the temp dir)."""
    names_dir = re.compile(re.escape(temp_dir) + r"(?![\w.-])").search
    try:
        if any(names_dir(arg) for arg in p.cmdline()):
            return True
        return p.cwd().startswith(temp_dir + os.sep) or p.cwd() == temp_dir
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False


def _leftovers(temp_dir: str) -> list[psutil.Process]:
    me = os.getpid()
    return [p for p in psutil.process_iter() if p.pid != me and _ours(p, temp_dir)]


def stop_ray_head(head: RayHead) -> None:
    """Stop the head by its own process ids: its process group (SIGTERM, then SIGKILL), then any
    process left that belongs to its temp dir. Never `ray stop`, never by name."""
    proc = head.proc
    pgid = proc.pid  # start_new_session=True: the group id is the leader's pid
    # SIGTERM first; whatever is left of the group (the leader, or children it did not take
    # down) is then killed hard.
    for sig, wait_s in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            pass

    # Processes in other groups/sessions (Ray starts some with their own session), found by pid.
    deadline = time.monotonic() + 20
    left = _leftovers(head.temp_dir)
    while left and time.monotonic() < deadline:
        for p in left:
            try:
                p.kill()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        psutil.wait_procs(left, timeout=5)
        left = _leftovers(head.temp_dir)
    try:
        assert not left, "processes of the test's Ray head still running: " + "; ".join(
            f"{p.pid} {' '.join(p.cmdline())[:200]}" for p in left)
    finally:
        shutil.rmtree(head.temp_dir, ignore_errors=True)


@pytest.fixture
def ray_head(tmp_path, request):
    head = start_ray_head(tmp_path)
    request.addfinalizer(lambda: stop_ray_head(head))
    return head


# --------------------------------------------------------------------------- the test


TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


def _job_logs(head: RayHead, job_id: str) -> str:
    try:
        return head.api(f"/api/jobs/{job_id}/logs")["logs"]
    except Exception as e:  # noqa: BLE001 - diagnostics only
        return f"<could not read the job's logs: {e!r}>"


def _job_info(head: RayHead, job_id: str) -> dict:
    """The job's record; a transient HTTP failure (a busy 2-core machine) is retried."""
    for attempt in range(5):
        try:
            return head.api(f"/api/jobs/{job_id}")
        except (urllib.error.URLError, ConnectionError, OSError, ValueError):
            if attempt == 4:
                raise
            time.sleep(2)
    raise AssertionError("unreachable")


def test_ray_job_submit_demo(ray_head, tmp_path):
    db = tmp_path / "job.duckdb"
    out = tmp_path / "out"
    job_id = f"curate-demo-{os.getpid()}-{int(time.time())}"
    cmd = [
        RAY, "job", "submit",
        "--address", ray_head.dashboard_url,
        "--submission-id", job_id,
        "--working-dir", str(ROOT),
        "--no-wait",
        "--",
        "python", "jobs/run.py", "jobs/configs/demo.yaml",
        "--set", f"db={db}",
        "--set", f"export.out={out}",
    ]
    t0 = time.monotonic()
    submit = subprocess.run(cmd, env=ray_head.env, cwd=str(ROOT), capture_output=True, text=True, timeout=120)
    assert submit.returncode == 0, f"`ray job submit` failed:\n{submit.stdout}\n{submit.stderr}"

    deadline = time.monotonic() + JOB_TIMEOUT_S
    info = _job_info(ray_head, job_id)
    while info["status"] not in TERMINAL and time.monotonic() < deadline:
        time.sleep(1)
        info = _job_info(ray_head, job_id)
    logs = _job_logs(ray_head, job_id)
    print(f"\njob {job_id}: {info['status']} in {time.monotonic() - t0:.1f}s\n{logs}")
    assert info["status"] == "SUCCEEDED", (
        f"job {job_id} ended {info['status']} ({info.get('message')}); logs:\n{logs}\n"
        f"--- ray start:\n{ray_head.log_tail()}")
    # The entrypoint's driver joined this head (RAY_ADDRESS from the job server) rather than
    # starting an embedded Ray of its own: only then does the job record a driver.
    assert info.get("driver_info"), f"the job's driver never connected to the head: {info}"

    # What the working dir upload held: the checkout, without .venv, out/ or DuckDB files
    # (Ray's default excludes and the checkout's .gitignore).
    unpacked = [p.parents[1] for p in Path(ray_head.temp_dir).glob("**/working_dir_files/*/jobs/run.py")]
    assert unpacked, "the job's unpacked working dir was not found under the head's temp dir"
    for wd in unpacked:
        assert (wd / "pipeline" / "runner.py").is_file()
        assert not (wd / ".venv").exists(), "the .venv was uploaded with the working dir"
        assert not (wd / "out").exists(), "out/ (ignored by .gitignore) was uploaded"
        assert not list(wd.glob("*.duckdb")), "a DuckDB file (ignored by .gitignore) was uploaded"

    # The DuckDB file the job wrote.
    import duckdb

    assert db.is_file(), f"the job wrote no database at {db}; logs:\n{logs}"
    seeds = sum(1 for line in SEEDS.read_text(encoding="utf-8").splitlines() if line.strip())
    con = duckdb.connect(str(db), read_only=True)
    try:
        runs = con.execute("SELECT run_id, name, status FROM runs").fetchall()
        assert len(runs) == 1, runs
        run_id, name, run_status = runs[0]
        assert (name, run_status) == ("demo", "finished"), runs[0]

        curated = con.execute("SELECT count(*) FROM curated").fetchone()[0]
        dropped = con.execute("SELECT count(*) FROM drops WHERE run_id = ?", [run_id]).fetchone()[0]
        quarantined = con.execute("SELECT count(*) FROM quarantine WHERE run_id = ?", [run_id]).fetchone()[0]
        assert curated > 0
        assert curated == seeds - dropped - quarantined, (curated, seeds, dropped, quarantined)

        rows_in, kept, t_dropped, t_quarantined = con.execute(
            "SELECT rows_in, kept, dropped, quarantined FROM run_totals WHERE run_id = ?", [run_id]).fetchone()
        assert rows_in == kept + t_dropped + t_quarantined, (rows_in, kept, t_dropped, t_quarantined)
        assert rows_in == seeds
        assert (kept, t_dropped, t_quarantined) == (curated, dropped, quarantined)
        selected = con.execute("SELECT count(*) FROM selections WHERE run_id = ? AND name = 'random_half'", [run_id]).fetchone()[0]
        assert 0 < selected < curated
    finally:
        con.close()

    # The Hugging Face export: the demo exports its selection.
    import datasets

    ds = datasets.load_from_disk(str(out))
    assert len(ds) == selected
    assert f"exported {selected} rows" in logs


def _entrypoint(tmp_path, *overrides: str, working_dir: str | None = "gcs://_ray_pkg_0123456789abcdef.zip"):
    """jobs/run.py as the job supervisor starts it: with the RAY_JOB_CONFIG_JSON_ENV_VAR it sets
    (the job's runtime env), run from a copy of the checkout, without Ray."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    if working_dir is not None:
        env["RAY_JOB_CONFIG_JSON_ENV_VAR"] = json.dumps({"runtime_env": {"working_dir": working_dir}, "metadata": {}})
    return subprocess.run([sys.executable, str(ROOT / "jobs" / "run.py"), str(ROOT / "jobs" / "configs" / "demo.yaml"),
                           *[a for o in overrides for a in ("--set", o)]],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)


def test_a_relative_output_under_working_dir_is_refused_before_anything_runs(tmp_path):
    t0 = time.monotonic()
    job = _entrypoint(tmp_path)  # demo.yaml: db curated.duckdb, export ./out/demo, both relative
    assert job.returncode == 2, job.stderr
    assert "db 'curated.duckdb'" in job.stderr and "export.out './out/demo'" in job.stderr
    assert "temporary copy of the working dir" in job.stderr and "--set db=/" in job.stderr
    assert time.monotonic() - t0 < 30 and not list(tmp_path.iterdir()), "it ran (or wrote) before refusing"

    job = _entrypoint(tmp_path, f"db={tmp_path}/demo.duckdb")  # one fixed, the export still relative
    assert job.returncode == 2 and "export.out './out/demo'" in job.stderr and "db '" not in job.stderr

    job = _entrypoint(tmp_path, "work_dir=phases", f"db={tmp_path}/demo.duckdb", f"export.out={tmp_path}/out")
    assert job.returncode == 2 and "work_dir 'phases'" in job.stderr


def test_relative_outputs_are_fine_outside_a_job_working_dir():
    import importlib.util

    spec = importlib.util.spec_from_file_location("job_run", ROOT / "jobs" / "run.py")
    job_run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job_run)
    from curate.pipeline.config import load_config

    config = load_config(str(ROOT / "jobs" / "configs" / "demo.yaml"))
    env = os.environ.pop("RAY_JOB_CONFIG_JSON_ENV_VAR", None)
    try:
        assert job_run.job_working_dir() is None
        job_run.refuse_outputs_in_the_job_copy(config)  # a plain `python jobs/run.py`: relative paths are the cwd's
        os.environ["RAY_JOB_CONFIG_JSON_ENV_VAR"] = json.dumps({"runtime_env": {}, "metadata": {}})
        job_run.refuse_outputs_in_the_job_copy(config)  # a job without --working-dir runs in the submitter's cwd
    finally:
        os.environ.pop("RAY_JOB_CONFIG_JSON_ENV_VAR", None)
        if env is not None:
            os.environ["RAY_JOB_CONFIG_JSON_ENV_VAR"] = env
