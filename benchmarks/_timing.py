"""What every benchmark section shares: settings, the report, and timing that notices a busy machine.

A timed call records its wall time and how many cores *other* processes kept busy meanwhile
(system CPU time minus this process's, from psutil). On a shared machine that figure, not the
1-minute load average, says whether a sample is trustworthy: samples taken while others held
more than ``CONTENDED_CORES`` cores are flagged, and interleaved timings repeat such rounds.
"""

from __future__ import annotations

import logging
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psutil

logger = logging.getLogger("hfllm_nb.benchmarks")

# Other processes using more than this many cores during a sample make it "contended".
CONTENDED_CORES = 0.5

# A plain-text prompt that SmolLM2 continues coherently for well over 64 tokens.
PROMPT = "The history of the printing press began in"


@dataclass
class Settings:
    """How much to measure; ``--quick`` shrinks everything but keeps every code path."""

    tokens: int = 32
    reps: int = 3
    ratio_reps: int = 12  # best-of ratios over 6 rounds moved by up to 0.08 between runs
    batch_sizes: tuple[int, ...] = (1, 4, 8)
    batch_tokens: int = 16
    cached_loads: int = 3
    bandwidth_bytes: int = 1 << 30
    profile_steps: int = 8
    overhead_calls: int = 50
    fast_batches: bool = True
    # Compiling the real model takes minutes on 2 cores; --quick compiles a tiny random one.
    tiny_fast_model: bool = False
    # Fresh processes run per OpenMP wait policy (None: unset, torch's spinning default).
    wait_policies: tuple[str | None, ...] = (None, "PASSIVE")
    # Quantization: interleaved rounds, extra rounds allowed when some were contended.
    quant_rounds: int = 5
    quant_extra_rounds: int = 5
    quant_compile: bool = True  # compile=True rows on the real model (cold compile: minutes)
    text_tokens: int = 32  # greedy tokens compared against fp32 / bf16 per prompt
    # Cost as the work grows (benchmarks/cost.py): prompt sizes, rounds, the chat's shape.
    cost_sizes: tuple[int, ...] = (128, 512, 1024, 2048, 4096)
    cost_dtype_prompt: int = 1000
    cost_rounds: int = 2
    cost_chat_turns: int = 10
    cost_chat_history: int = 1200
    cost_reply_tokens: int = 16
    quick: bool = False

    @classmethod
    def quick_settings(cls) -> Settings:
        return cls(
            tokens=8,
            reps=1,
            ratio_reps=1,
            batch_sizes=(1, 4),
            batch_tokens=4,
            cached_loads=1,
            bandwidth_bytes=1 << 28,
            profile_steps=2,
            overhead_calls=5,
            fast_batches=False,
            tiny_fast_model=True,
            wait_policies=("PASSIVE",),  # the spinning default can crawl on a shared CI core
            quant_rounds=1,
            quant_extra_rounds=0,
            quant_compile=False,
            text_tokens=8,
            cost_sizes=(64, 256),
            cost_dtype_prompt=256,
            cost_rounds=1,
            cost_chat_turns=3,
            cost_chat_history=200,
            cost_reply_tokens=8,
            quick=True,
        )


@dataclass
class Report:
    """Markdown sections in the order they are written, the checks that failed, shared facts."""

    sections: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)

    def add(self, title: str, body: str) -> None:
        self.sections.append(f"## {title}\n\n{body.strip()}\n")
        logger.info("done: %s", title)

    def check(self, ok: bool, what: str) -> bool:
        if not ok:
            self.failures.append(what)
            logger.error("CHECK FAILED: %s", what)
        return ok


@dataclass(frozen=True)
class Sample:
    """One timed call: wall seconds, cores other processes used meanwhile, load average after."""

    seconds: float
    others: float
    load: float

    @property
    def contended(self) -> bool:
        return self.others > CONTENDED_CORES


def table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _busy_seconds() -> float:
    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


def sample(fn: Callable[[], Any]) -> tuple[Sample, Any]:
    """Call ``fn`` once; its wall time and the CPU that other processes took meanwhile."""
    me = psutil.Process()
    own, busy = sum(me.cpu_times()[:2]), _busy_seconds()
    started = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - started
    others = max(0.0, (_busy_seconds() - busy) - (sum(me.cpu_times()[:2]) - own)) / max(seconds, 1e-9)
    return Sample(seconds, others, os.getloadavg()[0]), result


def on_model_thread(fn: Callable[[], Any]) -> Any:
    """Run ``fn()`` on hfllm-nb's model thread: torch (or llama.cpp's ggml, which shares torch's
    libgomp) run here, on the main thread, would start a second OpenMP team and slow every later
    2-thread row (4-bit + compile=True: 37 instead of 75 tok/s), as in hfllm-nb itself before the
    model thread.
    """
    from hfllm_nb.engines.local import model_thread

    user = object.__new__(type("BenchmarkUser", (), {}))  # holds the shared thread while fn runs
    try:
        return model_thread.acquire(user).call(fn)
    finally:
        model_thread.release(user)


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def best(values: list[float]) -> float:
    return min(values) if values else float("nan")


def interleaved(pairs: dict[str, Callable[[], Any]], reps: int) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """Time each callable ``reps`` times, rotating the order every round; warm each up first."""
    samples, results = interleaved_samples(pairs, reps)
    return {name: [s.seconds for s in values] for name, values in samples.items()}, results


def interleaved_samples(
    calls: dict[str, Callable[[], Any]], rounds: int, extra_rounds: int = 0
) -> tuple[dict[str, list[Sample]], dict[str, Any]]:
    """Rounds of every call, order rotated each round, after a warm-up that gives each call's output.

    A round in which any call was contended is repeated, up to ``extra_rounds`` more rounds.
    """
    results = {name: fn() for name, fn in calls.items()}
    samples: dict[str, list[Sample]] = {name: [] for name in calls}
    names = list(calls)
    clean, done = 0, 0
    while clean < rounds and done < rounds + extra_rounds:
        order = names[done % len(names) :] + names[: done % len(names)]
        round_samples = {name: sample(calls[name])[0] for name in order}
        for name, value in round_samples.items():
            samples[name].append(value)
        done += 1
        clean += not any(s.contended for s in round_samples.values())
    if clean < rounds:
        logger.warning("only %d of %d rounds ran on a quiet machine", clean, done)
    return samples, results


def contention_note(samples: list[Sample]) -> str:
    """ "3/5 quiet" and the worst others-load, for a table cell."""
    quiet = sum(not s.contended for s in samples)
    return f"{quiet}/{len(samples)} quiet (others ≤ {max(s.others for s in samples):.1f} cores)"


def ratio_row(label: str, times: dict[str, list[float]], a: str, b: str, target: float) -> list[Any]:
    """Ratio of the best times, and the median of per-round ratios (robust to a noisy core)."""
    by_best = best(times[a]) / best(times[b])
    by_round = statistics.median(x / y for x, y in zip(times[a], times[b], strict=True))
    verdict = "✓" if by_best <= target else "✗"
    return [
        label,
        f"{best(times[a]) * 1e3:.0f}",
        f"{best(times[b]) * 1e3:.0f}",
        f"{by_best:.3f}",
        f"{by_round:.3f}",
        f"≤ {target:.2f} {verdict}",
    ]
