"""The layering of the product folders: stages/ and selectors/ never import each other, and the
shared numerical code (lib/: clustering, greedy cosine, vector readers, LM loading and losses,
LESS features, RDS+ encoder) imports neither. Every import counts, also one inside a function."""

import ast
from pathlib import Path

import pytest

from conftest import ROOT

FOLDERS = ("stages", "selectors", "lib")


def imported_modules(path: Path) -> set[str]:
    """The absolute module names a file imports (`from curate.x import y` → curate.x and curate.x.y)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.add(node.module)
            out.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"{path}: relative import (the folders have no __init__.py)")
    return out


def imports_of(folder: str) -> dict[str, set[str]]:
    return {str(p.relative_to(ROOT)): imported_modules(p) for p in sorted((Path(ROOT) / folder).rglob("*.py"))}


def offending(folder: str, forbidden: tuple[str, ...]) -> list[str]:
    return [f"{path} imports {name}" for path, names in imports_of(folder).items() for name in sorted(names)
            if any(name == f"curate.{f}" or name.startswith(f"curate.{f}.") for f in forbidden)]


@pytest.mark.parametrize(("folder", "forbidden"), [
    ("stages", ("selectors",)),
    ("selectors", ("stages",)),
    ("lib", ("stages", "selectors", "pipeline")),
])
def test_layering(folder, forbidden):
    assert not offending(folder, forbidden)


def test_the_check_sees_imports_inside_functions(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from curate.selectors.kmeans import KMeansDiversity\n    import curate.stages.base\n")
    assert imported_modules(f) == {"curate.selectors.kmeans", "curate.selectors.kmeans.KMeansDiversity", "curate.stages.base"}


def test_every_folder_has_modules_and_lib_is_packaged():
    for folder in FOLDERS:
        assert imports_of(folder), folder
    toml = (Path(ROOT) / "pyproject.toml").read_text()
    assert '"curate.lib" = "lib"' in toml and '"curate.lib",' in toml
