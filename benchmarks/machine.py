"""The machine, the software, and what the run measured with."""

from __future__ import annotations

import contextlib
import os
import platform
from pathlib import Path

import psutil
import torch

from benchmarks._timing import CONTENDED_CORES, Report, Settings, table


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def _cpu_name() -> str:
    name = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return name


def _cpu_flags() -> str:
    """The SIMD extensions the quantized kernels choose between (Linux only)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16")
                return ", ".join(f for f in wanted if f in flags) or "none of AVX2/AVX-512"
    return "unknown"


def machine_section(report: Report, settings: Settings) -> None:
    from hfllm_nb.engines.local.quant_imports import bnb_has_fused_cpu_4bit

    bnb = _version("bitsandbytes")
    if bnb != "not installed":
        fused = "fused AVX512-BF16 kernel" if bnb_has_fused_cpu_4bit() else "no fused kernel: dequantizes per call"
        bnb += f" (CPU 4-bit: {fused})"
    rows = [
        ["CPU", _cpu_name()],
        ["SIMD flags", _cpu_flags()],
        ["cores (physical / logical)", f"{psutil.cpu_count(logical=False)} / {psutil.cpu_count()}"],
        ["torch CPU capability", torch.backends.cpu.get_cpu_capability()],
        ["torch threads", torch.get_num_threads()],
        ["memory", f"{psutil.virtual_memory().total / 2**30:.1f} GiB"],
        ["load average at start (1 min)", f"{os.getloadavg()[0]:.1f}"],
        ["Python", platform.python_version()],
        ["torch", torch.__version__],
        ["transformers", _version("transformers")],
        ["accelerate", _version("accelerate")],
        ["bitsandbytes", bnb],
        ["torchao", _version("torchao")],
        ["llama-cpp-python", _version("llama-cpp-python")],
        ["command", f"`{report.facts['command']}`"],
        [
            "settings",
            f"{settings.tokens} new tokens per timed call, best of {settings.reps} "
            f"interleaved repetitions after a warm-up; ratios over {settings.ratio_reps} rounds; "
            f"a sample is *contended* when other processes kept more than {CONTENDED_CORES} "
            "cores busy during it",
        ],
    ]
    report.add("Machine and software", table(["", ""], rows))
