"""What an engine is to the facade: a validated request in, text, token counts and end reasons out.

``HuggingFaceLLM`` validates input, counts token budgets with its tokenizer, serializes calls,
records stats and handles Stop; an engine only generates. What an engine can do beyond that is
said by the capability protocols below, checked with ``isinstance``, never by probing attributes.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any, Protocol, runtime_checkable

from ..core.requests import EngineRequest, EngineResult


@runtime_checkable
class Engine(Protocol):
    """The interface ``HuggingFaceLLM`` drives. ``LocalEngine`` and ``RemoteEngine`` implement it."""

    tokenizer: Any  # a transformers tokenizer: budgets, count_tokens, format_chat
    context_length: int

    @property
    def description(self) -> str:
        """One line for repr, the panel and the memory readout, e.g. "cpu · bfloat16"."""

    @property
    def sampling_defaults(self) -> dict[str, float | int]:
        """temperature, top_p and top_k that do_sample=True uses unless given."""

    def check_options(self, options: dict[str, Any]) -> None:
        """Raise ValueError naming any option this engine cannot honour (before anything runs)."""

    def generate(self, request: EngineRequest) -> EngineResult:
        """Generate for every prompt; return early (finish_reason STOPPED) once ``request.stop`` is set."""

    def stream(self, request: EngineRequest) -> Generator[str, None, EngineResult]:
        """Yield the one prompt's new text in pieces; ``return`` the EngineResult.

        Closing the generator (``break`` in the caller) must stop generation promptly.
        """

    def close(self) -> None:
        """Free what the engine holds (model weights, HTTP connections). Idempotent."""
