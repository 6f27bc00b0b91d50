"""The GPU section of docs/benchmarks.md: figures of the last GPU check, or how to make them.

``benchmarks/run.py`` appends it when it regenerates the file; ``python benchmarks/gpu/figures.py``
replaces just that section in place, after a GPU run's report was copied to ``RESULT``.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESULT = ROOT / "benchmarks" / "results" / "gpu_check.md"
TITLE = "GPU"


def gpu_markdown(result: Path = RESULT) -> str:
    """The section body: the committed GPU report (headings one level down), or the command to make one."""
    if result.is_file():
        report = result.read_text().strip()
        report = re.sub(r"^(#+) ", lambda m: "#" * (len(m.group(1)) + 2) + " ", report, flags=re.MULTILINE)
        return f"From `{result.relative_to(ROOT)}`, the last run of `bash benchmarks/gpu/check.sh`:\n\n{report}\n"
    return (
        "No GPU figures exist yet: every figure above comes from the CPU. The GPU check is one command "
        "on a CUDA machine (≤ 8 minutes; it checks greedy text on CUDA against the CPU, the memory "
        'readouts against `nvidia-smi`, `device_map="auto"` and the device-neutral tests, and times bf16 '
        "decoding of a SmolLM2-1.7B-shaped model eager, with `compile=True` and with bitsandbytes "
        "against the HBM bound):\n\n"
        "```\n"
        "bash benchmarks/gpu/check.sh --pack   # here: the tokenizer, bitsandbytes and ipywidgets into .gpu/\n"
        "bash benchmarks/gpu/check.sh          # there, with .gpu/: writes $OUT/gpu_check.md\n"
        "```\n\n"
        f"Copy its report to `{RESULT.relative_to(ROOT)}` and run `python benchmarks/gpu/figures.py` to put "
        "the figures here. `--cpu-dry-run` runs the same code on the CPU (tests/test_gpu_check.py).\n"
    )


def gpu_section(report: object, settings: object) -> None:
    """``benchmarks/run.py`` section: adds the GPU text to ``report``."""
    report.add(TITLE, gpu_markdown())  # type: ignore[attr-defined]


def update(doc: Path) -> None:
    """Replace the ``## GPU`` section of ``doc`` (or append one) with the current text."""
    text = doc.read_text()
    section = f"## {TITLE}\n\n{gpu_markdown().strip()}\n"
    found = re.search(rf"^## {TITLE}\n.*?(?=^## (?!#)|\Z)", text, flags=re.MULTILINE | re.DOTALL)
    if found:
        text = text[: found.start()] + section + ("\n" if found.end() < len(text) else "") + text[found.end() :]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    doc.write_text(text)


if __name__ == "__main__":
    update(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "benchmarks.md")
