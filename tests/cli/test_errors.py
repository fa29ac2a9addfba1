"""The CLI's one-line error names the root cause of a stage's failure (the exception the stage
raised, its message and where), not Ray's wrapper (`RayTaskError(UserCodeException)`), and
points to the full traceback (CURATE_DEBUG=1)."""

import http.server
import json
import os
import subprocess
import threading

from conftest import ROOT, curate_cmd
from curate.errors import DEBUG_HINT, CurateError, one_line, parse_traceback_text, root_cause, show_traceback

# What Ray Data's driver sees when a stage raises: the worker's traceback as text (the
# exception object itself does not cross the process), as captured from a real run.
RAY_DATA_TEXT = f"""\x1b[36mray::MapWorker(MapBatches(SlicingStageActor)).submit()\x1b[39m (pid=9569, ip=192.0.2.2, actor_id=1a63, repr=MapWorker(MapBatches(SlicingStageActor)))
  File "{ROOT}/pipeline/dag.py", line 177, in __call__
    return apply_stage(self.stage, self.plan.name, batch)
           ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
  File "{ROOT}/generators/backends/vllm_engine.py", line 91, in prompt_token_ids
    texts = [render(self.tokenizer, m, self.chat_template) for m in conversations]
  File "/venv/lib/python3.11/site-packages/jinja2/environment.py", line 1295, in render
    self.environment.handle_exception()
  File "<template>", line 1, in top-level template code
jinja2.exceptions.TemplateError: System role not supported

The above exception was the direct cause of the following exception:

\x1b[36mray::MapWorker(MapBatches(SlicingStageActor)).submit()\x1b[39m (pid=9569, ip=192.0.2.2, actor_id=1a63, repr=MapWorker(MapBatches(SlicingStageActor)))
ray.exceptions.UserCodeException: UDF failed to process a data block.
Failed to apply UDF transform after 1/1 attempts (total backoff 0.0s).
"""


def test_root_cause_from_a_workers_traceback_text():
    cause = parse_traceback_text(RAY_DATA_TEXT)
    assert (cause.type_name, cause.qualname, cause.message) == ("TemplateError", "jinja2.exceptions.TemplateError", "System role not supported")
    assert cause.where == "generators/backends/vllm_engine.py:91" and not cause.is_curate  # the project's frame, not Jinja's


def test_root_cause_through_a_nested_actor_call_and_a_wrapping_raise():
    """A stage calling the engine actor (RayTaskError(X) inside the stage's traceback), and a
    stage that wraps one error in another: the exception that left the stage's code wins."""
    nested = RAY_DATA_TEXT.replace(
        "jinja2.exceptions.TemplateError: System role not supported\n",
        "jinja2.exceptions.TemplateError: System role not supported\n\nThe above exception was the direct cause of the following exception:\n\n"
        f"  File \"{ROOT}/generators/respond.py\", line 72, in generate\n    return ray.get(self.actor.generate.remote(requests))\n"
        "ray.exceptions.RayTaskError(TemplateError): ray::EngineHost.generate() (pid=1, ip=1)\n")
    assert parse_traceback_text(nested).message == "System role not supported"
    wrapped = RAY_DATA_TEXT.replace(
        "jinja2.exceptions.TemplateError: System role not supported\n",
        "KeyError: 'content'\n\nThe above exception was the direct cause of the following exception:\n\n"
        f"Traceback (most recent call last):\n  File \"{ROOT}/generators/respond.py\", line 60, in generate\n    raise x\n"
        "curate.errors.CurateError: a row has no content\n")
    cause = parse_traceback_text(wrapped)
    assert cause.qualname == "curate.errors.CurateError" and cause.is_curate and cause.where == "generators/respond.py:60"
    assert parse_traceback_text("no traceback here") is None


def test_one_line_for_plain_errors():
    assert one_line(CurateError("the config names no input")) == ("error: the config names no input", 2)
    try:
        {}["missing"]
    except KeyError as e:
        text, code = one_line(e)
    assert code == 1 and text.startswith("error: KeyError: 'missing' (raised at tests/cli/test_errors.py:") and text.endswith(DEBUG_HINT + ")")


def test_root_cause_of_a_live_ray_task_error():
    """RayTaskError(X) from ray.get keeps the cause object: it is used as it is."""
    from ray.exceptions import RayTaskError

    wrapped = RayTaskError("generate", "Traceback...\nValueError: bad sampling", ValueError("bad sampling")).as_instanceof_cause()
    cause = root_cause(wrapped)
    assert (cause.type_name, cause.message, cause.via_ray) == ("ValueError", "bad sampling", True)
    assert one_line(RayTaskError("f", "tb", CurateError("no server")).as_instanceof_cause())[0].startswith("error: no server (")


def test_curate_debug_lets_the_traceback_through(monkeypatch):
    from ray.exceptions import RayTaskError

    monkeypatch.delenv("CURATE_DEBUG", raising=False)
    assert not show_traceback(ValueError("x"))
    monkeypatch.setenv("CURATE_DEBUG", "1")
    assert show_traceback(ValueError("x")) and not show_traceback(CurateError("x"))
    assert show_traceback(RayTaskError("f", "tb", CurateError("x")).as_instanceof_cause())


class _BrokenServer(http.server.BaseHTTPRequestHandler):
    """An OpenAI-compatible server whose replies lack `message`: the backend's parsing fails
    inside the stage's worker."""

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body = json.dumps({"choices": [{"index": 0, "finish_reason": "stop"}], "usage": {}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_a_run_failing_inside_a_stage_names_the_root_cause(tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _BrokenServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        config = tmp_path / "broken.yaml"
        config.write_text(
            "name: broken\ninput: demo\nshard_size: 16\nstages:\n"
            f"  - respond: {{backend: {{kind: openai, model: m, base_url: 'http://127.0.0.1:{server.server_port}/v1', max_retries: 0}}}}\n")
        env = {k: v for k, v in os.environ.items() if k != "CURATE_DEBUG"}
        proc = subprocess.run([*curate_cmd(), "run", str(config), "--db", str(tmp_path / "b.duckdb"), "--progress", "off", "--no-export"],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    finally:
        server.shutdown()
    assert proc.returncode == 1, proc.stderr[-2000:]
    *_, last, log_line = proc.stderr.strip().splitlines()  # the error, then where the libraries' output went
    assert log_line.startswith("log: ") and os.path.isfile(log_line[5:]), proc.stderr[-2000:]
    assert last.startswith("error: KeyError: 'message' (raised at generators/backends/openai_http.py:"), proc.stderr[-2000:]
    assert last.endswith(f"{DEBUG_HINT})") and "RayTaskError" not in last and "UserCodeException" not in last
    import duckdb

    con = duckdb.connect(str(tmp_path / "b.duckdb"), read_only=True)
    (status, error), = con.execute("SELECT status, error FROM runs").fetchall()
    con.close()
    assert status == "failed" and error == "KeyError: 'message'", error  # the root cause, as the CLI said
