"""`ray job submit` entrypoint: run a curate config on the cluster the job runs in.

    RAY_AUTH_MODE=token ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/run.py jobs/configs/demo.yaml --set db=$PWD/demo.duckdb --set export.out=$PWD/out/demo

Under `ray job submit`, RAY_ADDRESS is set, so the runner joins the cluster instead of starting
an embedded Ray. The checkout root (the job's working dir) is put on sys.path so that `curate`
imports from it; `curate/__init__.py` then maps curate.pipeline, curate.stages, ... to its folders.

With `--working-dir`, the job runs inside Ray's unpacked copy of that folder (under the head's
temp dir, deleted with the session), so a relative `db`, `work_dir` or `export.out` would be
written there and lost: they are refused before anything runs, with the fix.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="YAML config")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="key.path=value")
    parser.add_argument("--db", default=None)
    parser.add_argument("--input", action="append", default=None)
    args = parser.parse_args(argv)

    from curate.errors import CurateError
    from curate.pipeline.config import load_config
    from curate.pipeline.runner import run
    from curate.storage.export import export

    try:
        config = load_config(args.config, args.overrides, db=args.db, input=args.input)
        refuse_outputs_in_the_job_copy(config)
        report = run(config, progress="lines")
        print(report.summary(), flush=True)
        if config.export:
            out = export(config.db, run_id=report.run_id, **config.export.model_dump())
            print(f"exported {out.rows} rows → {out.path}", flush=True)
    except CurateError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def job_working_dir() -> str | None:
    """The `--working-dir` Ray gave this job (as the job's runtime env names it: a `gcs://` URI
    or a path), or None when this process is not a Ray job's entrypoint or has no working dir."""
    raw = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if not raw:
        return None
    try:
        runtime_env = json.loads(raw).get("runtime_env") or {}
    except (ValueError, AttributeError):
        return None
    return runtime_env.get("working_dir") or None


def refuse_outputs_in_the_job_copy(config) -> None:
    """Raise CurateError when this is a Ray job with a working dir and the config writes to a
    relative path: it would land in Ray's temporary copy of the working dir, not the user's."""
    from curate.errors import CurateError

    working_dir = job_working_dir()
    if working_dir is None:
        return
    outputs = [("db", config.db), ("work_dir", config.work_dir)]
    if config.export:
        outputs.append(("export.out", config.export.out))
    relative = [(key, path) for key, path in outputs if path and not os.path.isabs(os.path.expanduser(path))]
    if relative:
        named = ", ".join(f"{key} {path!r}" for key, path in relative)
        fix = " ".join(f"--set {key}=/shared/path/{os.path.basename(path.rstrip('/')) or key}" for key, path in relative)
        raise CurateError(
            f"{named} {'is' if len(relative) == 1 else 'are'} relative: under `ray job submit --working-dir` the job runs in Ray's temporary copy of "
            f"the working dir ({os.getcwd()}), deleted with the job, so it would be written there and lost. "
            f"Name a path that outlives the job, on storage every node reads: {fix} "
            f"(on one machine, `--set db=$PWD/...` expands where you submit)")


if __name__ == "__main__":
    sys.exit(main())
