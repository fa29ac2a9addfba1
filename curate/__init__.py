"""curate: build and curate instruction-tuning data sets.

The product's folders (pipeline/, stages/, selectors/, generators/, storage/, lib/) sit at the
repository's top level with no ``__init__.py``, so a bare ``import selectors`` still finds the
standard library. Wheels map them to ``curate.<folder>`` through ``package-dir``; from a
checkout (editable install, ``ray job submit --working-dir .``) the checkout root is appended to
this package's ``__path__`` so that ``curate.selectors`` resolves to ``./selectors``.
"""

import os as _os

__version__ = "0.1.0"

_root = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if _os.path.isfile(_os.path.join(_root, "pyproject.toml")) and _root not in __path__:
    __path__.append(_root)


def __getattr__(name):
    # The public API, imported lazily: `import curate` stays cheap (no Ray, no DuckDB).
    if name == "run":
        from curate.pipeline.runner import run

        return run
    if name == "load_config":
        from curate.pipeline.config import load_config

        return load_config
    if name == "Store":
        from curate.storage.store import Store

        return Store
    if name == "export":
        from curate.storage.export import export

        return export
    raise AttributeError(f"module 'curate' has no attribute {name!r}")


__all__ = ["run", "load_config", "Store", "export", "__version__"]
