"""`ray job submit` entrypoint: run a curate config on the cluster the job runs in.

    ray job submit --working-dir . -- python jobs/run.py jobs/configs/demo.yaml [--set key=value ...]

Under `ray job submit`, RAY_ADDRESS is set, so the runner joins the cluster instead of starting
an embedded Ray. The checkout root (the job's working dir) is put on sys.path so that `curate`
imports from it; `curate/__init__.py` then maps curate.pipeline, curate.stages, ... to its folders.
"""

from __future__ import annotations

import argparse
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
        report = run(config, progress="lines")
        print(report.summary(), flush=True)
        if config.export:
            out = export(config.db, run_id=report.run_id, **config.export.model_dump())
            print(f"exported {out.rows} rows → {out.path}", flush=True)
    except CurateError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
