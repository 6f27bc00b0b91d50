"""The in-process side of ``HuggingFaceLLM``: its model, ``run`` on the model's thread, and the views.

A mixin so the facade stays one readable file: everything here goes through the engine's model
thread and the facade's turns, Stop and close, like ``generate`` does.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Generator, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from .core.turns import TextStream
from .errors import GenerationError

if TYPE_CHECKING:
    from .core.turns import Turns
    from .engines.base import Engine

T = TypeVar("T")


class InProcessViews:
    """``model``, ``run``, ``run_stream``, ``explain``, ``logit_lens`` for ``HuggingFaceLLM``."""

    _engine: Engine
    _turns: Turns
    _check_open: Callable[[], None]  # the facade's: raises GenerationError once closed

    @property
    def model(self) -> Any:
        """The in-process transformers model (a remote engine has none and says so).

        Running it on your own thread works, but ``llm.run(fn)`` keeps torch on one thread (faster).
        """
        return self._in_process()._model()

    def explain(
        self, prompt: str, max_new_tokens: int = 20, top_k: int = 5, *, sampling_top_k: int | None = None, **kw: Any
    ):
        """Each token of prompt and continuation with its probability and ``top_k`` alternatives (``Explanation``).

        Continues like ``generate`` (greedy unless ``do_sample=True``); ``sampling_top_k`` is
        sampling's top-k (``top_k`` here counts the alternatives shown).
        """
        from .engines.remote import explain as remote_explain

        if remote_explain.is_remote(self):  # from the server's numbers: no torch here (inside.explain imports it)
            return remote_explain.explain(self, prompt, max_new_tokens, top_k, sampling_top_k, **kw)
        from .inside.explain import explain

        decode = getattr(self._engine, "decode_options", None)  # compile=True: explain the compiled graph
        settings = {"max_new_tokens": max_new_tokens, "top_k": top_k, "sampling_top_k": sampling_top_k, **kw}
        return explain(self, prompt, decode=decode, **settings)

    def logit_lens(self, prompt: str):
        """Every layer's next-token guess at every prompt position (``LogitLens``)."""
        from .inside.logit_lens import logit_lens

        return logit_lens(self, prompt)

    def attention(self, prompt: str):
        """Every layer's and head's attention weights over the prompt (``Attention``), eager for this call."""
        from .inside.attention import attention

        return attention(self, prompt)

    def compare(self, prompt: str, lanes: dict[str, dict[str, Any]], max_new_tokens: int = 20):
        """Continue ``prompt`` once per lane of generate options and show them side by side (``Comparison``)."""
        from .inside.compare import compare

        return compare(self, prompt, lanes, max_new_tokens=max_new_tokens)

    def run(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Run ``fn(model, tokenizer, *args, **kwargs)`` on the model's own thread and return its result.

        It takes its turn with generations, like every call here. The look-inside views run their
        forward passes through it; so can you, without slowing later generations (see README,
        Performance). A remote engine has no weights here and raises ``GenerationError``.

        >>> llm.run(lambda model, tokenizer: model.config.num_hidden_layers)   # doctest: +SKIP
        30
        """
        engine = self._in_process()
        signal = self._turns.new_signal()
        with self._turns.request(signal, self._check_open):
            return engine.run(lambda model, tokenizer: fn(model, tokenizer, *args, **kwargs), signal)

    def run_stream(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Iterator[Any]:
        """Run ``fn(model, tokenizer, emit, stop, *args, **kwargs)`` on the model's thread; iterate what it emits.

        ``emit(item)`` hands an item to the reader; ``stop`` (a ``StopSignal``) is set by
        ``llm.stop()``, ``close()``, Ctrl-C, or closing the iterator: check ``stop.is_set()``
        between steps. The iterator follows ``stream()``'s rules; what ``fn`` returns is dropped.
        """
        engine = self._in_process()
        signal = self._turns.new_signal()

        def body(handle: weakref.ref) -> Generator[Any, None, None]:
            with self._turns.request(signal, self._check_open, handle):
                job = lambda model, tokenizer, emit, stop: fn(model, tokenizer, emit, stop, *args, **kwargs)  # noqa: E731
                yield from engine.run_stream(job, signal)

        return TextStream(body)

    def _in_process(self) -> Any:
        self._check_open()
        if getattr(self._engine, "run", None) is None:
            raise GenerationError(
                f"This needs the model's weights in this process, and {self._engine.description} runs it on a "
                "server. Load it here too, e.g. HuggingFaceLLM(model_id) without endpoint=, for the look-inside views."
            )
        return self._engine
