"""Threads and OpenMP: fp32 against bf16 by thread count, and spin-waiting against a busy core."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import psutil
import torch

from benchmarks import models
from benchmarks._timing import PROMPT, Report, Settings, table

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def threads_section(report: Report, settings: Settings) -> None:
    """fp32 against bf16 with one thread and with all of them."""
    loaded = models.by_name(report, settings)
    chosen = [loaded[name] for name in ("fp32", "bf16") if name in loaded]
    if len(chosen) < 2:
        return
    tokens, default = settings.tokens, torch.get_num_threads()
    counts = sorted({1, default})
    decode: dict[tuple[str, int], list[float]] = {}
    try:
        for rep in range(settings.reps):
            for threads in counts:
                torch.set_num_threads(threads)
                for config in chosen[rep % 2 :] + chosen[: rep % 2]:
                    config.llm.generate(PROMPT, max_new_tokens=tokens, min_new_tokens=tokens)
                    stats = config.llm.last_stats
                    rate = (tokens - 1) / (stats.seconds - (stats.time_to_first_token or 0.0))
                    decode.setdefault((config.name, threads), []).append(rate)
    finally:
        torch.set_num_threads(default)
    rows = [[c.name, *(f"{max(decode[c.name, n]):.1f}" for n in counts)] for c in chosen]
    report.add(
        "fp32 against bf16 by thread count",
        table(["dtype", *(f"decode tok/s, {n} thread(s)" for n in counts)], rows)
        + f"\n\nBest of {settings.reps}, interleaved. Load average now: {os.getloadavg()[0]:.1f}. "
        "bf16 halves the bytes read per token; CPUs without native bf16 instructions (AVX512-BF16, "
        "AMX) widen every bf16 weight to float32 in registers, so there a second thread mostly shares "
        "that arithmetic. With a busy core see the wait-policy section below.",
    )


_WAIT_POLICY_RUN = """
import json, sys, torch
from hfllm_nb import HuggingFaceLLM
llm = HuggingFaceLLM()
tokens, rates = int(sys.argv[1]), []
llm.generate("Hello", max_new_tokens=2)
for _ in range(3):
    llm.generate(sys.argv[2], max_new_tokens=tokens, min_new_tokens=tokens)
    s = llm.last_stats
    rates.append((tokens - 1) / (s.seconds - s.time_to_first_token))
print(json.dumps({"rate": max(rates), "threads": torch.get_num_threads()}))
"""


def wait_policy_section(report: Report, settings: Settings) -> None:
    """OpenMP's spin-waiting against a busy core, in fresh processes (it is fixed at start-up)."""
    policies = {(f"OMP_WAIT_POLICY={p}" if p else "default (unset)"): p for p in settings.wait_policies}
    rates: dict[str, list[float]] = {name: [] for name in policies}
    loads = []
    for _ in range(max(1, settings.ratio_reps // 8)):
        for name, value in policies.items():
            env = {**os.environ, "PYTHONPATH": ROOT}
            env.pop("OMP_WAIT_POLICY", None)
            if value:
                env["OMP_WAIT_POLICY"] = value
            loads.append(os.getloadavg()[0])
            done = subprocess.run(
                [sys.executable, "-c", _WAIT_POLICY_RUN, str(settings.tokens), PROMPT],
                capture_output=True,
                text=True,
                env=env,
                cwd=ROOT,
                check=False,
            )
            if report.check(done.returncode == 0, f"{name} run failed: {done.stderr[-500:]}"):
                rates[name].append(json.loads(done.stdout.strip().splitlines()[-1])["rate"])
    rows = [[name, f"{max(values):.1f}" if values else "failed"] for name, values in rates.items()]
    report.add(
        "OpenMP wait policy under load",
        table(["fresh process, dtype auto", "decode tok/s (best)"], rows)
        + f"\n\nLoad average during these runs: {min(loads):.1f}–{max(loads):.1f} on "
        f"{psutil.cpu_count()} cores. With the default (spinning) policy, torch's OpenMP threads "
        "burn their time slices waiting for each other whenever another process holds a core, "
        "and a main-thread `generate` can slow down 5-20×. With `PASSIVE` they sleep instead, "
        "and pay a wake-up on every parallel op: slower on an idle machine. `PASSIVE` must be set "
        "before torch is imported. This benchmark process ran with "
        f"`OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}`.",
    )
