"""What an engine is to the facade: a validated request in, text, token counts and end reasons out.

``HuggingFaceLLM`` validates input, counts token budgets with its tokenizer, serializes calls,
records stats and handles Stop; an engine only generates. Nothing above this layer asks
which engine runs.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any, Protocol

# Why a completion ended: the values of ``Completion.finish_reason`` and ``GenerationStats.finish_reasons``.
END_OF_TEXT = "end of text"  # the model emitted its end-of-sequence token
LENGTH = "length"  # the token budget (max_length / max_new_tokens) ran out
STOP_STRING = "stop string"  # one of the caller's stop_strings appeared
STOPPED = "stopped"  # llm.stop(), a panel's Stop, or a closed stream


class StopSignal:
    """One request's Stop: set from any thread; engines poll ``is_set`` or register a callback.

    Each request gets its own, so a Stop sent just before a request starts is never cleared
    by that request, and a Stop meant for one request never leaks into the next.
    """

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[], None]] = []

    def set(self) -> None:
        with self._lock:
            if self._event.is_set():
                return
            self._event.set()
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()

    def is_set(self) -> bool:
        return self._event.is_set()

    def on_set(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once when the signal is set (at once if it already is)."""
        with self._lock:
            if not self._event.is_set():
                self._callbacks.append(callback)
                return
        callback()


@dataclass
class EngineRequest:
    """A generation request the facade has validated and measured in tokens."""

    prompts: list[str]  # the text the model continues (for chat: the chat template's output)
    token_ids: list[list[int]]  # the same, tokenized by the facade's tokenizer, no padding
    budgets: list[int]  # new tokens each prompt may get (always sent: servers default to 16)
    options: dict[str, Any]  # validated by hfllm_nb._options; greedy unless do_sample=True; may hold "seed"
    stop: StopSignal = field(default_factory=StopSignal)
    messages: list[dict[str, str]] | None = None  # set by chat(): the conversation, for chat endpoints


@dataclass
class Completion:
    """One prompt's result."""

    text: str  # the new text only, special tokens skipped
    new_tokens: int
    finish_reason: str  # END_OF_TEXT, LENGTH, STOP_STRING or STOPPED
    token_ids: list[int] | None = None  # the new token ids, where the engine knows them


@dataclass
class EngineResult:
    completions: list[Completion]  # one per prompt, in order
    seconds: float
    time_to_first_token: float | None
    peak_gpu_memory: int | None = None


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
