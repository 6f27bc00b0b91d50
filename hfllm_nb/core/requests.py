"""What a request is once the facade has validated it, and what an engine gives back.

Plain data (no torch): the facade, every engine and the stats share these types.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# Why a completion ended: the values of ``Completion.finish_reason`` and ``GenerationStats.finish_reasons``.
END_OF_TEXT = "end of text"  # the model emitted its end-of-sequence token
LENGTH = "length"  # the token budget (max_length / max_new_tokens) ran out
STOP_STRING = "stop string"  # one of the caller's stop_strings appeared
STOPPED = "stopped"  # llm.stop(), a panel's Stop, or a closed stream
CRITERION = "stopping criterion"  # one of the caller's own stopping_criteria


# Why a call made on the model's own thread (from a callback) fails instead of waiting for itself.
INSIDE_MESSAGE = (
    "This call was made from inside a running generation on the same model (a callback, "
    "or a stopping criterion?). Wait until it ends, or call llm.stop() first."
)


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


class EitherStop:
    """Set when any of its signals is (a request's Stop, a caller's own event): what engines poll."""

    def __init__(self, *signals: Any) -> None:
        self.signals = [signal for signal in signals if signal is not None]

    def is_set(self) -> bool:
        return any(signal.is_set() for signal in self.signals)


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
    prompt_tokens_reused: int = 0  # prompt tokens whose KV came from the previous call (prefix reuse)
