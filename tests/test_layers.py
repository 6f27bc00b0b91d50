"""The package's layers: imports point one way, widgets stay in widgets/, no one imports another's privates.

Layers, lowest first: core < engines < the facade (llm, llm_views) < inside < widgets < cli.
A module may import its own layer and those below; the facade's doors to the views (imported
inside a method, on first use) are the named exceptions.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "hfllm_nb"
LAYERS = {"core": 0, "errors": 0, "default_model": 0, "engines": 1, "testing": 1, "llm": 2,
          "llm_views": 2, "conversation": 2, "memory": 2, "inside": 3, "exercises": 4, "widgets": 4,
          "cli": 5, "__main__": 5, "__init__": 6}  # fmt: skip
# (importer's layer name, imported layer name): imports inside a function that open a view of a lower layer's object
DOORS = {("llm", "widgets"), ("llm_views", "inside"), ("inside", "widgets")}
TORCH_FREE = {"core", "errors", "default_model", "llm", "llm_views", "conversation", "memory", "cli", "__init__"}


def _modules() -> list[tuple[str, Path]]:
    return [(".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts), path) for path in PACKAGE.rglob("*.py")]


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imports(module: str, path: Path):
    """(imported module, names, at module level?) for each import statement of ``module``."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    tree = ast.parse(path.read_text())
    type_only = {id(child) for node in tree.body if _is_type_checking(node) for child in node.body}
    top_level = {id(node) for node in tree.body} | {
        id(child) for node in tree.body if isinstance(node, ast.If | ast.Try) for child in node.body
    }
    top_level -= type_only
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            yield target, [alias.name for alias in node.names], id(node) in top_level
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, [], id(node) in top_level


MODULES = _modules()


@pytest.mark.parametrize(("module", "path"), MODULES, ids=[m for m, _ in MODULES])
def test_imports_point_down_the_layers(module, path):
    mine = _layer(module)
    for target, names, _ in _imports(module, path):
        if not target.startswith("hfllm_nb"):
            continue
        targets = [target] if target != "hfllm_nb" else [f"hfllm_nb.{name}" for name in names]
        for one in targets:
            theirs = _layer(one)
            if theirs in LAYERS and LAYERS[theirs] > LAYERS[mine] and (mine, theirs) not in DOORS:
                pytest.fail(f"{module} ({mine}) imports {one} ({theirs}), a higher layer")


@pytest.mark.parametrize(("module", "path"), MODULES, ids=[m for m, _ in MODULES])
def test_nobody_imports_another_modules_private_names(module, path):
    for target, names, _ in _imports(module, path):
        if target.startswith("hfllm_nb") and target != module:
            private = [name for name in names if name.startswith("_") and not name.startswith("__")]
            assert not private, f"{module} imports {private} from {target}"


@pytest.mark.parametrize(("module", "path"), MODULES, ids=[m for m, _ in MODULES])
def test_only_widgets_import_ipywidgets_and_the_core_loads_no_torch_at_import(module, path):
    layer = _layer(module)
    for target, _, top_level in _imports(module, path):
        root = target.split(".")[0]
        if root in ("ipywidgets", "IPython", "anywidget"):
            assert layer == "widgets", f"{module} imports {target}; only hfllm_nb.widgets may"
        if root in ("torch", "transformers") and layer in TORCH_FREE:
            assert not top_level, f"{module} imports {target} at module level; import it where it is used"


def test_the_facade_privates_stay_in_the_facade():
    for module, path in MODULES:
        if _layer(module) in ("llm", "llm_views"):
            continue
        text = path.read_text()
        for name in ("._engine", "._turns", "._pipeline", "._check_open"):
            assert f"llm{name}" not in text, f"{module} uses the facade's {name[1:]}"


def test_import_hfllm_nb_loads_no_torch_transformers_or_ipywidgets():
    code = "import sys, hfllm_nb; print(sorted({'torch', 'transformers', 'ipywidgets'} & set(sys.modules)))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"


def test_at_most_fifteen_modules_at_the_top_level():
    top = [path for path in PACKAGE.glob("*.py")]
    assert len(top) <= 15, sorted(path.name for path in top)
