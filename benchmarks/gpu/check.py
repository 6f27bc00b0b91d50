"""The GPU check: one command that tests and times hfllm-nb on a CUDA machine in ≤ 8 minutes.

It checks that the device-neutral tests pass there (the CUDA out-of-memory test included), that
greedy text on CUDA equals float32 on the CPU for a tiny random model (generate, stream and
``device_map="auto"``), that the memory readouts the ``MemoryMonitor`` draws agree with
``torch.cuda.memory_allocated`` and ``nvidia-smi``, and it times bf16 decoding of a random
SmolLM2-1.7B-shaped Llama eager and with ``compile=True`` against the HBM bandwidth bound, and
with bitsandbytes 8-bit and 4-bit where its wheel was carried. Speed does not depend on the
weights' values, and ``min_new_tokens`` fixes the length, so random weights time like real ones.

The GPU machine has Python with torch, transformers, accelerate, safetensors, tokenizers,
nvidia-ml-py, psutil and pytest, but no network, no default model and no ipywidgets, gguf,
openai, bitsandbytes or torchao. So the command brings (carries) the folder ``.gpu/``
(git-ignored, ~48 MiB of the 64 MiB a run may carry), filled here, where there is network::

    bash benchmarks/gpu/check.sh --pack   # .gpu/tokenizer: SmolLM2's tokenizer (3.4 MiB);
                                          # .gpu/wheels: bitsandbytes 0.50.2 (41 MiB, CUDA 13 kernels)
                                          #   and ipywidgets 8 with its pure-Python dependencies (4 MiB)

The tokenizer is the real default model's, carried rather than committed (3.4 MiB) or invented,
so the tiny-model tests run on the GPU exactly as here. Then on the GPU machine, from the
repository root (the wrapper unpacks the wheels into a folder on PYTHONPATH)::

    bash benchmarks/gpu/check.sh          # writes $OUT/gpu_check.md, .json and .log

Without ``.gpu/wheels`` the bitsandbytes section and the widget checks are skipped, with that reason.
To update the published figures, copy that gpu_check.md to ``benchmarks/results/gpu_check.md``
and run ``python benchmarks/gpu/figures.py`` (it rewrites the GPU section of docs/benchmarks.md).

``--cpu-dry-run`` runs the same code paths on the CPU with tiny sizes in about a minute;
tests/test_gpu_check.py runs it with the GPU image's missing packages hidden, so it cannot rot.
Exit status: 0 when every check passed (skipped sections are reported with their reason), 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.gpu.common import CARRY, TOKENIZER_ENV, Context, Plan, Section, Skip  # noqa: E402

logger = logging.getLogger("hfllm_nb.benchmarks")


def pack_tokenizer(target: str | Path) -> Path:
    """Save the default model's tokenizer (with its chat template) into ``target``, for carrying."""
    from transformers import AutoTokenizer

    from hfllm_nb.default_model import prepare_default_model

    source = prepare_default_model()
    if source is None:
        raise SystemExit("The default-model cache is not writable; set HFLLM_NB_CACHE and retry.")
    AutoTokenizer.from_pretrained(source).save_pretrained(target)
    return Path(target)


def find_tokenizer(given: Path | None) -> Path:
    """``--tokenizer``, else ``$HFLLM_NB_TOKENIZER_DIR``, else the carried copy, else the default model's."""
    for candidate in (given, os.environ.get(TOKENIZER_ENV), CARRY / "tokenizer"):
        if candidate and Path(candidate, "tokenizer_config.json").is_file():
            return Path(candidate)
    from hfllm_nb.default_model import prepare_default_model
    from hfllm_nb.errors import ModelLoadError

    try:
        folder = prepare_default_model()
    except ModelLoadError:
        folder = None
    if folder is None:
        raise SystemExit(
            "No tokenizer: the default model is not installed and no tokenizer was carried. "
            "Run `bash benchmarks/gpu/check.sh --pack` where it is installed, and carry .gpu/."
        )
    return folder


def write_report(path: Path, ctx: Context, sections: list[Section], header: str) -> None:
    """Markdown and JSON side by side; rewritten after every section, so a cut-off run still tells."""
    from benchmarks._timing import table

    rows = [[s.title, s.status, f"{s.seconds:.0f}", f"{s.need_s:.0f}" if s.need_s else "—"] for s in sections]
    parts = [header, table(["section", "status", "seconds", "may need s"], rows)]
    for s in sections:
        status = f"**{s.status}** in {s.seconds:.1f} s"
        failed = "".join(f"\n- ✗ {f}" for f in s.failures)
        parts.append(f"## {s.title}\n\n{status}{failed}\n\n{s.body.strip()}".rstrip())
    path.write_text("\n\n".join(parts) + "\n")
    payload = {
        "dry_run": ctx.plan.dry_run,
        "device": str(ctx.device),
        "seconds": time.perf_counter() - ctx.started,
        "sections": [s.__dict__ for s in sections],
    }
    path.with_suffix(".json").write_text(json.dumps(payload, indent=1, default=str))


def run_sections(ctx: Context, steps: list[tuple[str, Callable[[Context, Section], None]]], output: Path) -> bool:
    """Run each section in turn, within the time budget; True when no check failed."""
    import torch

    header = (
        f"# GPU check{' (CPU dry run: code paths only, not GPU figures)' if ctx.plan.dry_run else ''}\n\n"
        f"`{' '.join(['python benchmarks/gpu/check.py', *sys.argv[1:]])}` on {time.strftime('%Y-%m-%d %H:%M')}, "
        f"device {ctx.device}, budget {ctx.plan.budget_s:.0f} s."
    )
    sections: list[Section] = []
    for title, step in steps:
        section = Section(title, need_s=ctx.plan.needs.get(step.__name__.removesuffix("_section"), 0.0))
        sections.append(section)
        write_report(output, ctx, sections, header)
        started = time.perf_counter()
        try:
            if section.need_s and ctx.left() < section.need_s:
                raise Skip(f"not started: {ctx.left():.0f} s of the budget left, it may need {section.need_s:.0f} s")
            logger.info("section: %s (%.0f s left)", title, ctx.left())
            step(ctx, section)
            section.status = "failed" if section.failures else "passed"
        except KeyboardInterrupt:  # the wrapper's time limit: keep what was measured
            section.check(False, f"interrupted after {time.perf_counter() - started:.0f} s (time limit)")
            section.status, section.seconds = "failed", time.perf_counter() - started
            write_report(output, ctx, sections, header)
            raise
        except Skip as reason:
            section.status, section.body = "skipped", f"{reason}\n\n{section.body}"
        except Exception as exc:
            section.check(False, f"{type(exc).__name__}: {exc}")
            section.status = "failed"
            section.body += f"\n\n```\n{traceback.format_exc()[-3000:]}```"
        section.seconds = time.perf_counter() - started
        if ctx.device.type == "cuda":
            torch.cuda.empty_cache()
        write_report(output, ctx, sections, header)
    return not any(s.failures for s in sections)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-dry-run", action="store_true", help="tiny sizes on the CPU: code paths only")
    parser.add_argument("--output", type=Path, required=True, help="the markdown report; JSON goes beside it")
    parser.add_argument("--budget", type=float, default=None, help="seconds for everything (default 450; dry 600)")
    parser.add_argument("--tokenizer", type=Path, default=None, help="tokenizer folder (default: see find_tokenizer)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    started = time.perf_counter()
    import torch

    from benchmarks.gpu import sections as gpu_sections
    from benchmarks.gpu import speed as gpu_speed
    from benchmarks.gpu import suite as gpu_tests

    if not args.cpu_dry_run and not torch.cuda.is_available():
        parser.error("no CUDA device here: run on a GPU machine, or pass --cpu-dry-run")
    plan = (Plan.cpu_dry_run if args.cpu_dry_run else Plan.gpu)(args.budget or (600 if args.cpu_dry_run else 450))
    device = torch.device("cpu") if plan.dry_run else torch.device("cuda", torch.cuda.current_device())
    args.output.parent.mkdir(parents=True, exist_ok=True)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # a cast notice on every 8-bit matmul
    with tempfile.TemporaryDirectory(prefix="hfllm-nb-gpu-check-") as work:
        ctx = Context(plan, device, Path(work), find_tokenizer(args.tokenizer), started)
        steps = [
            ("Environment", gpu_sections.environment_section),
            ("Core imports without the missing packages", gpu_sections.imports_section),
            ("Greedy text on the device against float32 on the CPU", gpu_sections.correctness_section),
            ('device_map="auto"', gpu_sections.device_map_section),
            (f"Decode speed, bf16 eager ({plan.speed_name})", gpu_speed.speed_section),
            ("Memory readouts against torch and nvidia-smi", gpu_sections.memory_section),
            ("bitsandbytes 8-bit and 4-bit", gpu_speed.bitsandbytes_section),
            (f"Decode speed, compile=True ({plan.speed_name})", gpu_speed.compile_section),
            ("Tests that need no missing package", gpu_tests.tests_section),
        ]
        try:
            ok = run_sections(ctx, steps, args.output)
        except KeyboardInterrupt:
            ok = False
        finally:
            gpu_speed.close_models(ctx)
    logger.info("wrote %s in %.0f s", args.output, time.perf_counter() - started)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
