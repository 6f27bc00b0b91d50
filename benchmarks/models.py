"""The loaded configurations that several sections measure, loaded once per run."""

from __future__ import annotations

import atexit
import logging
import shutil
import tempfile
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch._dynamo.utils import counters

from benchmarks._timing import Report, Settings, timed
from hfllm_nb import HuggingFaceLLM, default_model
from hfllm_nb.engines.local.quantization import footprint_bytes
from hfllm_nb.testing import save_tiny_llama

logger = logging.getLogger("hfllm_nb.benchmarks")


@dataclass
class Config:
    """One way of loading the default model, and what was measured for it."""

    name: str
    kwargs: dict[str, Any]
    llm: HuggingFaceLLM | None = None
    load_seconds: float = 0.0
    compile_seconds: float | None = None
    compile_cache_hit: bool = False  # inductor reused code compiled by an earlier process
    footprint: int = 0
    seconds: list[float] = field(default_factory=list)
    first_token: list[float] = field(default_factory=list)
    text: str = ""
    bandwidth_share: float = float("nan")  # decode tok/s ÷ the memory-bandwidth bound

    @property
    def label(self) -> str:
        """What the weights are: a dtype, or the quantization plan's label."""
        if self.llm is None:
            return "not loaded"
        return self.llm.quantization_label or str(self.llm.dtype).replace("torch.", "")


_LOADED: dict[str, Config] = {}


def load(report: Report, config: Config) -> Config | None:
    """Load ``config`` (or return the one already loaded under that name); None if it failed."""
    if config.name in _LOADED:
        return _LOADED[config.name]
    logger.info("loading %s", config.name)
    try:
        hits = counters["inductor"]["fxgraph_cache_hit"]
        seconds, config.llm = timed(lambda: HuggingFaceLLM(**config.kwargs))
        config.compile_cache_hit = counters["inductor"]["fxgraph_cache_hit"] > hits
    except Exception as exc:
        report.check(False, f"{config.name} failed to load: {type(exc).__name__}: {exc}")
        traceback.print_exc()
        return None
    config.compile_seconds = config.llm.compile_seconds
    config.load_seconds = seconds - (config.compile_seconds or 0.0)
    config.footprint = footprint_bytes(config.llm.model)
    _LOADED[config.name] = config
    return config


def tiny_model() -> Path:
    """A 2-layer random Llama with the default model's tokenizer, saved in a temp folder."""
    folder = Path(tempfile.mkdtemp(prefix="hfllm-bench-tiny-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)  # the loaded model outlives this call
    return save_tiny_llama(folder, default_model.prepare_default_model(), max_position_embeddings=512)


def main_configs(report: Report, settings: Settings) -> list[Config]:
    """fp32, bf16, auto, the default 8- and 4-bit, and the compiled fast path: loaded once."""
    configs = [
        Config("fp32", {"dtype": "float32"}),
        Config("bf16", {"dtype": "bfloat16"}),
        Config("auto", {}),
        Config("8-bit", {"quantization_config": {"load_in_8bit": True}}),
        Config("4-bit", {"quantization_config": {"load_in_4bit": True}}),
        Config("fast (auto + compile=True)", {"compile": True}),
    ]
    if settings.tiny_fast_model:
        configs[-1] = Config(
            "fast (compile=True, tiny random model: --quick)",
            {"model_id": str(tiny_model()), "dtype": "float32", "compile": True},
        )
    loaded = [load(report, c) for c in configs]
    return [c for c in loaded if c is not None]


def by_name(report: Report, settings: Settings) -> dict[str, Config]:
    return {c.name: c for c in main_configs(report, settings)}
