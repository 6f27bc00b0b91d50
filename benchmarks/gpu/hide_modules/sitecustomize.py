"""Make the top-level modules named in ``$HFLLM_NB_HIDE_MODULES`` look uninstalled.

Put this folder first on ``PYTHONPATH``: Python imports ``sitecustomize`` at start-up, in this
process and in every child that inherits the variables. ``import x`` then raises
ModuleNotFoundError and ``importlib.util.find_spec("x")`` returns None, which is what
transformers' and our own availability checks look at. ``benchmarks/gpu/check.py --cpu-dry-run``
uses it to mimic the GPU image, which lacks ipywidgets, gguf, openai, …

    HFLLM_NB_HIDE_MODULES=ipywidgets,gguf PYTHONPATH=benchmarks/gpu/hide_modules:. python …
"""

from __future__ import annotations

import importlib.machinery
import os

HIDDEN = frozenset(name.strip() for name in os.environ.get("HFLLM_NB_HIDE_MODULES", "").split(",") if name.strip())

if HIDDEN:
    _path_find_spec = importlib.machinery.PathFinder.find_spec  # the class's own, already bound

    def _find_spec(cls, fullname, path=None, target=None):  # type: ignore[no-untyped-def]
        # Installed packages are found by PathFinder; answering "not here" for them is all it takes.
        if fullname.partition(".")[0] in HIDDEN:
            return None
        return _path_find_spec(fullname, path, target)

    # A classmethod, as the original: pytest copies it onto its own import hook class.
    importlib.machinery.PathFinder.find_spec = classmethod(_find_spec)  # type: ignore[method-assign]
