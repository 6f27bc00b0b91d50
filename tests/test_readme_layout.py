"""README's layout table names every module of the package, and only modules that exist."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _layout_rows() -> list[tuple[str, str]]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Layout", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `hfllm_nb/")]
    return [(row.split("|")[1], row.split("|")[2]) for row in rows]


def _named_modules() -> set[str]:
    named = set()
    for paths, what in _layout_rows():
        folders = [p for p in re.findall(r"`([^`]+)`", paths)]
        base = next(p for p in folders if p.startswith("hfllm_nb/"))
        base = base if base.endswith("/") else base.rsplit("/", 1)[0] + "/"
        for name in folders:
            if name.endswith(".py"):
                named.add(name if name.startswith("hfllm_nb/") else base + name)
        if paths.strip().strip("`").endswith("/"):  # a folder row lists its modules in the description
            named |= {base + name for name in re.findall(r"`([a-z_]+\.py)`", what)}
    return named


def test_every_module_of_the_package_is_in_the_layout_table():
    modules = {str(path.relative_to(ROOT)) for path in (ROOT / "hfllm_nb").rglob("*.py")}
    packages = {m for m in modules if m.endswith("/__init__.py") and m != "hfllm_nb/__init__.py"}
    missing = sorted(modules - packages - _named_modules() - {"hfllm_nb/__init__.py"} | (
        {"hfllm_nb/__init__.py"} - _named_modules()))
    assert not missing, f"README's layout table does not name: {missing}"


def test_the_layout_table_names_no_module_that_is_gone():
    gone = sorted(name for name in _named_modules() if not (ROOT / name).exists())
    assert not gone, f"README's layout table names modules that do not exist: {gone}"
