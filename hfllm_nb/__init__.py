"""Run Hugging Face causal language models in Jupyter notebooks.

Only the facade, its errors and its stats load eagerly; everything else (look-inside views, widgets,
device helpers) loads on first use, so `import hfllm_nb` needs neither torch nor ipywidgets.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .core.stats import GenerationStats
from .default_model import DEFAULT_MODEL_NAME
from .engines.remote.errors import RequestRejected
from .errors import GenerationError, ModelLoadError
from .llm import HuggingFaceLLM

if TYPE_CHECKING:
    from .conversation import Conversation
    from .core.memory import format_bytes, read_memory
    from .core.tokens import ExplainedToken
    from .engines.local.device import available_devices, resolve_device, resolve_dtype
    from .engines.local.quantization import footprint_bytes
    from .inside.attention import Attention
    from .inside.compare import Comparison
    from .inside.explain import Explanation
    from .inside.head_sweep import HeadSweep, head_sweep
    from .inside.interventions import HeadsOff, Patch, RopeOff, SkipAttention, SkipMLP, intervene
    from .inside.logit_lens import LogitLens
    from .inside.training import FineTuneRun, fine_tune
    from .widgets.chat_panel import ChatPanel
    from .widgets.explorer import NextTokenExplorer
    from .widgets.monitor import MemoryMonitor
    from .widgets.panel import LLMPanel

__version__ = "0.1.0"

# public name -> the module that defines it, imported on first use
_LAZY = {
    "Conversation": ".conversation",
    "format_bytes": ".core.memory",
    "read_memory": ".core.memory",
    "available_devices": ".engines.local.device",
    "resolve_device": ".engines.local.device",
    "resolve_dtype": ".engines.local.device",
    "footprint_bytes": ".engines.local.quantization",
    "Attention": ".inside.attention",
    "Comparison": ".inside.compare",
    "ExplainedToken": ".core.tokens",
    "Explanation": ".inside.explain",
    "LogitLens": ".inside.logit_lens",
    "HeadsOff": ".inside.interventions",
    "SkipAttention": ".inside.interventions",
    "SkipMLP": ".inside.interventions",
    "RopeOff": ".inside.interventions",
    "Patch": ".inside.interventions",
    "intervene": ".inside.interventions",
    "HeadSweep": ".inside.head_sweep",
    "head_sweep": ".inside.head_sweep",
    "FineTuneRun": ".inside.training",
    "fine_tune": ".inside.training",
    "ChatPanel": ".widgets.chat_panel",
    "NextTokenExplorer": ".widgets.explorer",
    "MemoryMonitor": ".widgets.monitor",
    "LLMPanel": ".widgets.panel",
}

__all__ = [
    "DEFAULT_MODEL_NAME",
    "Attention",
    "ChatPanel",
    "Comparison",
    "Conversation",
    "ExplainedToken",
    "Explanation",
    "FineTuneRun",
    "GenerationError",
    "GenerationStats",
    "HeadSweep",
    "HeadsOff",
    "HuggingFaceLLM",
    "LLMPanel",
    "LogitLens",
    "MemoryMonitor",
    "ModelLoadError",
    "NextTokenExplorer",
    "Patch",
    "RequestRejected",
    "RopeOff",
    "SkipAttention",
    "SkipMLP",
    "__version__",
    "available_devices",
    "fine_tune",
    "footprint_bytes",
    "format_bytes",
    "head_sweep",
    "intervene",
    "read_memory",
    "resolve_device",
    "resolve_dtype",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'hfllm_nb' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
