"""Benchmark hfllm-nb side by side in one process and write docs/benchmarks.md.

Covers load time, dtypes, CPU quantization backends, the compiled fast path, batching, cost as
prompts and chats grow (prefix reuse), the wrapper's own cost (against raw ``model.generate``,
streaming and the panel) and a profile of one decode step. Timings are interleaved repetitions
after a warm-up, so a busy machine slows all rows alike instead of skewing one of them; samples
taken while other processes held the cores are flagged (``benchmarks/_timing.py``).

    python benchmarks/run.py                  # full run, writes docs/benchmarks.md
    python benchmarks/run.py --quick --output /tmp/bench.md   # every code path, < 3 min
    python benchmarks/run.py --only quantization --output /tmp/q.md   # one section

Exits non-zero when a check fails (texts that must be equal differ, a configuration does
not load or generate, a footprint target is missed). Speed targets are reported, never enforced.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import traceback
import warnings
from pathlib import Path

if "--quick" in sys.argv:
    # The smoke run checks code paths, not speed: keep OpenMP from spinning when CI shares
    # the cores with other work (see the wait-policy section). Must precede importing torch.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks import (  # noqa: E402
    batching,
    cache_sizes,
    cost,
    decode_profile,
    generation,
    load_time,
    machine,
    overhead,
    quantization,
    remote_engine,
    threads,
)
from benchmarks._timing import Report, Settings  # noqa: E402
from benchmarks.gpu import figures as gpu_figures  # noqa: E402
from hfllm_nb.engines.local.quant_imports import quiet_backend_imports  # noqa: E402

logger = logging.getLogger("hfllm_nb.benchmarks")

# Each section is ``fn(report, settings)`` and appends its markdown to the report, in this order.
SECTIONS = [
    machine.machine_section,
    load_time.load_section,
    generation.generation_section,
    quantization.quantization_section,
    threads.threads_section,
    threads.wait_policy_section,
    batching.batch_section,
    cache_sizes.cache_section,
    cost.cost_section,  # long prompts, long chats (prefix reuse), the KV cache, dtype="auto"
    overhead.ratio_section,
    overhead.overhead_section,
    decode_profile.profile_section,
    remote_engine.remote_section,
    gpu_figures.gpu_section,  # no GPU here: the committed figures of benchmarks/gpu/check.py, or how to make them
]


def _section_name(section: object) -> str:
    """What ``--only`` calls a section: its module's name (``quantization``, ``threads``, …)."""
    return section.__module__.split(".")[-1]


def run(args: argparse.Namespace) -> Report:
    settings = Settings.quick_settings() if args.quick else Settings()
    if args.tokens:
        settings.tokens = args.tokens
    report = Report()
    report.facts["command"] = args.command_line
    report.facts["output"] = args.output
    chosen = [machine.machine_section] + [s for s in SECTIONS[1:] if _section_name(s) in args.only]
    for section in chosen if args.only else SECTIONS:
        section(report, settings)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny settings: every code path in < 3 min")
    parser.add_argument("--output", type=Path, default=None, help="default: docs/benchmarks.md (full runs only)")
    parser.add_argument("--tokens", type=int, default=None, help="new tokens per timed call")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument(
        "--only",
        nargs="+",
        default=[],
        choices=sorted({_section_name(s) for s in SECTIONS[1:]}),
        help="run these sections (and the machine table) only, e.g. --only quantization",
    )
    args = parser.parse_args(argv)
    if args.output is None:
        if args.only or args.quick:  # a partial or smoke report must not replace the published one
            parser.error("--only and --quick write a partial report: give it an --output path")
        args.output = ROOT / "docs" / "benchmarks.md"
    policy = os.environ.get("OMP_WAIT_POLICY")
    args.command_line = (f"OMP_WAIT_POLICY={policy} " if policy else "") + " ".join(
        ["python benchmarks/run.py", *(argv if argv is not None else sys.argv[1:])]
    )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    # bitsandbytes' 8-bit layers warn on every CPU matmul that bf16 inputs become fp16.
    warnings.filterwarnings("ignore", message="MatMul8bitLt: inputs will be cast")
    with quiet_backend_imports():  # transformers imports torchao with its model code
        import transformers.modeling_utils  # noqa: F401
        from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error()  # progress bars and advice stay out of the benchmark log
    hf_logging.disable_progress_bar()
    if args.threads:
        torch.set_num_threads(args.threads)
    started, load_at_start = time.perf_counter(), os.getloadavg()[0]
    try:
        report = run(args)
    except Exception:
        traceback.print_exc()
        return 1
    elapsed = time.perf_counter() - started
    head = (
        "# Benchmarks\n\nGenerated by `benchmarks/run.py` on "
        f"{time.strftime('%Y-%m-%d %H:%M')} in {elapsed / 60:.1f} min (load average at the start "
        f"{load_at_start:.1f}, at the end {os.getloadavg()[0]:.1f}). Do not edit by hand: re-run the script.\n"
    )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(head + "\n" + "\n".join(report.sections))
    logger.info("wrote %s in %.0f s", args.output, elapsed)
    for failure in report.failures:
        logger.error("failed: %s", failure)
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
