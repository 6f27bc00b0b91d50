"""What the GPU check's modules share: the plan, a report section, the context, model shapes."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
logger = logging.getLogger("hfllm_nb.benchmarks")
CARRY = ROOT / ".gpu"
TOKENIZER_ENV = "HFLLM_NB_TOKENIZER_DIR"  # also read by tests/conftest.py
# Decode reads every weight once per token, so HBM bandwidth ÷ bytes of weights bounds tok/s.
HBM_REFERENCE = 4.3e12  # bytes/s, measured on the lent H200 kind (issue 17)
# SmolLM2-1.7B's shape (its config.json); the tokenizer gives the vocabulary, 49152, the same.
SMOLLM2_1_7B = {
    "hidden_size": 2048,
    "intermediate_size": 8192,
    "num_hidden_layers": 24,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "max_position_embeddings": 8192,
    "rope_theta": 130000.0,
    "rms_norm_eps": 1e-5,
}
TINY = {  # the dry run's stand-in; bitsandbytes' CPU 4-bit kernel needs rows of ≥ 64 weights
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "max_position_embeddings": 256,
    "rope_theta": 130000.0,  # the same keys as SMOLLM2_1_7B, so the dry run builds its config the same way
    "rms_norm_eps": 1e-5,
}


@dataclass(frozen=True)
class Plan:
    """How much to do. ``needs`` is each section's worst case in seconds: it is skipped, with
    that reason, when less time than that is left of ``budget_s``; the tests get what remains."""

    dry_run: bool
    speed_shape: dict[str, Any]
    speed_name: str
    tokens: int  # new tokens per timed bf16 call (min_new_tokens = max_new_tokens)
    reps: int
    quant_tokens: int
    text_tokens: int  # greedy tokens compared between devices, per prompt
    bandwidth_bytes: int
    budget_s: float
    tests: tuple[str, ...]  # pytest arguments that choose the tests
    test_seconds: float  # most time the tests may take
    needs: dict[str, float] = field(default_factory=dict)

    @classmethod
    def gpu(cls, budget_s: float) -> Plan:
        needs = {"environment": 10, "imports": 40, "correctness": 40, "device_map": 20, "speed": 90}
        needs |= {"memory": 15, "bitsandbytes": 60, "compile": 200, "tests": 45}
        return cls(
            dry_run=False, speed_shape=SMOLLM2_1_7B, speed_name="SmolLM2-1.7B shape", tokens=128, reps=3,
            quant_tokens=32, text_tokens=16, bandwidth_bytes=2 << 30, budget_s=budget_s, tests=("tests",),
            test_seconds=150, needs=needs,
        )  # fmt: skip

    @classmethod
    def cpu_dry_run(cls, budget_s: float) -> Plan:
        """Every code path on tiny sizes; a few tests: the OOM one, two on GPU readings, and a file that
        needs hypothesis, which the GPU image lacks (the tests section must exclude it, not fail)."""
        tests = ("tests/test_llm.py", "tests/test_memory.py", "tests/test_properties.py")
        tests += ("-k", "out_of_memory or gpu_readings")
        return cls(
            dry_run=True, speed_shape=TINY, speed_name="tiny (dry run)", tokens=8, reps=1, quant_tokens=4,
            text_tokens=6, bandwidth_bytes=64 << 20, budget_s=budget_s, tests=tests, test_seconds=120,
        )  # fmt: skip


class Skip(Exception):
    """A section cannot run here; the message says why and how to make it run."""


@dataclass
class Section:
    """One part of the report: what it measured, its checks, and how long it took."""

    title: str
    status: str = "running"  # "passed", "failed", "skipped"; "running" if the run was cut off here
    seconds: float = 0.0
    need_s: float = 0.0
    body: str = ""
    figures: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def check(self, ok: bool, what: str) -> bool:
        if not ok:
            self.failures.append(what)
            logger.error("CHECK FAILED (%s): %s", self.title, what)
        return bool(ok)


@dataclass
class Context:
    """What the sections share: the plan, the device, a work folder, models made on the way."""

    plan: Plan
    device: Any  # torch.device
    work: Path
    tokenizer_dir: Path
    started: float
    state: dict[str, Any] = field(default_factory=dict)

    def left(self) -> float:
        return self.plan.budget_s - (time.perf_counter() - self.started)
