"""What an engine is to the facade: a validated request in, text, token counts and end reasons out.

``HuggingFaceLLM`` validates input, counts token budgets with its tokenizer, serializes calls,
records stats and handles Stop; an engine only generates. What an engine can do beyond that is
said by the capability protocols below, checked with ``isinstance``, never by probing attributes.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any, Protocol, runtime_checkable

from ..core.requests import EngineRequest, EngineResult, StopSignal
from ..core.tokens import ExplainedToken


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


@runtime_checkable
class ExplainsTokens(Protocol):
    """An engine that can say, for each token it generates, how likely it was and what else was."""

    def explain_stream(
        self,
        request: EngineRequest,
        alternatives: int,
        stop_event: Any = None,
        *,
        include_prompt: bool = False,
        name: str = "alternatives",
    ) -> Generator[ExplainedToken, None, EngineResult]:
        """Yield ``ExplainedToken``s (the prompt's first when ``include_prompt``); ``return`` the EngineResult.

        ``alternatives`` is how many likely tokens each keeps (``name``: what the caller calls it,
        for messages); ``stop_event`` (anything with ``is_set()``) stops it like the request's Stop.
        """


@runtime_checkable
class InProcess(Protocol):
    """An engine whose weights live in this process: the look-inside views and ``llm.run`` need one."""

    device: Any  # torch.device
    dtype: Any  # torch.dtype
    quantization: Any  # the quantization plan, or None
    fast_decode: Any  # compile=True's static-cache decoding, or None

    def run(self, fn: Callable[[Any, Any], Any], stop: StopSignal | None = None) -> Any:
        """``fn(model, tokenizer)`` on the model's own thread; its result."""

    def run_stream(self, fn: Callable[..., Any], stop: StopSignal) -> Generator[Any, None, Any]:
        """``fn(model, tokenizer, emit, stop)`` on the model's thread; yields what it emits."""

    def loaded_model(self) -> Any:
        """The transformers model (raises ``GenerationError`` once closed)."""

    def decode_options(self, batch: int, prompt_width: int, new_tokens: int) -> dict[str, Any]:
        """This engine's own generate settings (``compile=True``: static cache, compiled step)."""

    def in_model_thread(self) -> bool:
        """True inside one of its running jobs (a callback): calls from there must fail at once."""


@runtime_checkable
class Served(Protocol):
    """An engine that talks to a server: which model the server runs."""

    served_model: str
