"""Throughput for batch sizes 1, 4, 8 (left-padded prompts of different lengths)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from benchmarks import models
from benchmarks._timing import Report, Settings, best, interleaved, table

BATCH_PROMPTS = [
    "The history of the printing press began in",
    "Photosynthesis is the process by which",
    "A good way to learn a new programming language is to",
    "The three largest cities in Japan are",
    "In 1969, astronauts",
    "The main ingredients of bread are",
    "To keep a houseplant healthy, you should",
    "The difference between weather and climate is that",
]


def batch_section(report: Report, settings: Settings) -> None:
    configs = models.main_configs(report, settings)
    chosen = [c for c in configs if c.name in ("fp32", "auto")]
    chosen += [c for c in configs if c.name.startswith("fast") and settings.fast_batches]
    tokens = settings.batch_tokens
    calls: dict[str, Callable[[], Any]] = {}
    for config in chosen:
        for size in settings.batch_sizes:
            prompts = BATCH_PROMPTS[:size]
            calls[f"{config.name}|{size}"] = lambda c=config, p=prompts: c.llm.generate(
                p, max_new_tokens=tokens, min_new_tokens=tokens
            )
    times, outputs = interleaved(calls, settings.reps)
    rows = []
    for config in chosen:
        single = outputs[f"{config.name}|1"]
        row = [config.name]
        for size in settings.batch_sizes:
            key = f"{config.name}|{size}"
            row.append(f"{size * tokens / best(times[key]):.1f}")
            # Left padding must not change a prompt's greedy text (fp32 is exact enough to insist).
            if config.name == "fp32":
                report.check(outputs[key][0] == single[0], f"fp32 batch of {size}: first row differs from batch of 1")
        rows.append(row)
    report.add(
        "Batched throughput",
        table(["config", *(f"batch {s}: tok/s" for s in settings.batch_sizes)], rows)
        + f"\n\nTokens/s counts all rows: batch × {tokens} new tokens ÷ wall time of one "
        "`llm.generate(list_of_prompts)` call, best of "
        f"{settings.reps}. Prompts differ in length, so rows are left-padded.",
    )
