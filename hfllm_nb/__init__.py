"""Run Hugging Face causal language models in Jupyter notebooks."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .default_model import DEFAULT_MODEL_NAME
from .errors import GenerationError, ModelLoadError
from .llm import HuggingFaceLLM
from .stats import GenerationStats

if TYPE_CHECKING:
    from ._quantization import footprint_bytes
    from .attention import Attention
    from .chat_panel import ChatPanel
    from .compare import Comparison
    from .explain_view import Explanation, LogitLens
    from .explorer import NextTokenExplorer
    from .monitor import MemoryMonitor
    from .panel import LLMPanel

__version__ = "0.1.0"
__all__ = [
    "DEFAULT_MODEL_NAME",
    "Attention",
    "ChatPanel",
    "Comparison",
    "Explanation",
    "GenerationError",
    "GenerationStats",
    "HuggingFaceLLM",
    "LLMPanel",
    "LogitLens",
    "MemoryMonitor",
    "ModelLoadError",
    "NextTokenExplorer",
    "__version__",
    "footprint_bytes",
]


def __getattr__(name: str) -> Any:
    # Widgets load on first use, so `import hfllm_nb` works in scripts without ipywidgets.
    if name == "LLMPanel":
        from .panel import LLMPanel

        return LLMPanel
    if name == "ChatPanel":
        from .chat_panel import ChatPanel

        return ChatPanel
    if name == "MemoryMonitor":
        from .monitor import MemoryMonitor

        return MemoryMonitor
    if name == "NextTokenExplorer":
        from .explorer import NextTokenExplorer

        return NextTokenExplorer
    if name == "footprint_bytes":  # the bytes a model's tensors take as stored (quantized ones too)
        from ._quantization import footprint_bytes

        return footprint_bytes
    if name == "Attention":
        from .attention import Attention

        return Attention
    if name == "Comparison":
        from .compare import Comparison

        return Comparison
    if name in ("Explanation", "LogitLens"):
        from . import explain_view

        return getattr(explain_view, name)
    raise AttributeError(f"module 'hfllm_nb' has no attribute {name!r}")
