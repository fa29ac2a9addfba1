"""The package layout: top-level product folders import as curate.<folder> and never shadow
the standard library (a top-level `selectors` package would break subprocess and asyncio)."""

import subprocess
import sys
import zipfile

from conftest import ROOT

PROBE = """
import selectors, subprocess, asyncio, sysconfig, os
assert os.path.dirname(selectors.__file__) == sysconfig.get_paths()["stdlib"], selectors.__file__
assert hasattr(selectors, "DefaultSelector")
subprocess.run(["true"], check=True)
asyncio.run(asyncio.sleep(0))
import curate.selectors, curate.pipeline.config, curate.storage.schema, curate.stages.ingest
assert os.path.realpath(curate.pipeline.config.__file__).startswith(os.path.realpath(ROOT)), curate.pipeline.config.__file__
print("ok")
"""


def test_stdlib_selectors_is_not_shadowed_with_the_repo_root_on_sys_path():
    code = f"import sys; ROOT = {str(ROOT)!r}; sys.path.insert(0, ROOT)\n" + PROBE
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_wheel_carries_the_product_folders_and_the_demo_seeds(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(tmp_path), str(ROOT)],
        capture_output=True, text=True,
    )
    assert out.returncode == 0, out.stderr
    (wheel,) = tmp_path.glob("curate-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for expected in ("curate/cli.py", "curate/pipeline/runner.py", "curate/stages/ingest.py",
                     "curate/storage/store.py", "curate/lib/clustering.py", "curate/data/demo_seeds.jsonl"):
        assert expected in names
    assert not any(n.startswith("selectors/") for n in names)  # nothing lands as a top-level package
