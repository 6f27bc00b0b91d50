"""The facade's doors to the model itself: ``model``, ``run`` on the model's thread, explained tokens, the views.

A mixin so ``llm.py`` stays one readable file. Everything here takes the same ``Pipeline`` as
``generate`` (turn, Stop, close, stats); the look-inside computations live in ``inside/`` and are
imported on first use.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from .core import validation
from .core.requests import EngineRequest, EngineResult
from .core.stats import GenerationStats
from .core.tokens import ExplainedToken
from .engines.base import ExplainsTokens, InProcess
from .errors import GenerationError

if TYPE_CHECKING:
    from .core.pipeline import Pipeline
    from .engines.base import Engine
    from .inside.attention import Attention
    from .inside.compare import Comparison
    from .inside.explain import Explanation
    from .inside.logit_lens import LogitLens

T = TypeVar("T")


class ModelViews:
    """``model``, ``run``, ``run_stream``, ``explain_stream`` and the look-inside views of ``HuggingFaceLLM``."""

    _engine: Engine
    _pipeline: Pipeline
    _request: Callable[..., tuple[EngineRequest, str]]  # the facade's: validation and token budgets
    tokenizer: Any
    context_length: int
    max_length: int
    last_stats: GenerationStats | None

    @property
    def model(self) -> Any:
        """The in-process transformers model (a remote engine has none and says so).

        Running it on your own thread works, but ``llm.run(fn)`` keeps torch on one thread (faster).
        """
        return self._in_process().loaded_model()

    @property
    def in_process(self) -> bool:
        """True when the weights live in this process (the look-inside views need them)."""
        return isinstance(self._engine, InProcess)

    @property
    def compile_seconds(self) -> float | None:
        """How long ``compile=True`` took to compile the decode step at load (None without it, or remote)."""
        engine = self._engine
        fast = engine.fast_decode if isinstance(engine, InProcess) else None
        return fast.compile_seconds if fast is not None else None

    def decode_options(self, batch: int, prompt_width: int, new_tokens: int) -> dict[str, Any]:
        """The generate settings this model adds itself (``compile=True``: static cache, compiled step).

        For your own ``model.generate`` inside ``llm.run``, to run what ``generate`` runs.
        """
        return self._in_process().decode_options(batch, prompt_width, new_tokens)

    def run(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Run ``fn(model, tokenizer, *args, **kwargs)`` on the model's own thread and return its result.

        It takes its turn with generations, like every call here. The look-inside views run their
        forward passes through it; so can you, without slowing later generations (see README,
        Performance). A remote engine has no weights here and raises ``GenerationError``.

        >>> llm.run(lambda model, tokenizer: model.config.num_hidden_layers)   # doctest: +SKIP
        30
        """
        engine = self._in_process()
        signal = self._pipeline.new_signal()
        job = lambda model, tokenizer: fn(model, tokenizer, *args, **kwargs)  # noqa: E731
        return self._pipeline.call(signal, lambda: engine.run(job, signal))

    def run_stream(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Iterator[Any]:
        """Run ``fn(model, tokenizer, emit, stop, *args, **kwargs)`` on the model's thread; iterate what it emits.

        ``emit(item)`` hands an item to the reader; ``stop`` (a ``StopSignal``) is set by
        ``llm.stop()``, ``close()``, Ctrl-C, closing the iterator or its ``.stop()``: check
        ``stop.is_set()`` between steps. The iterator follows ``stream()``'s rules; what ``fn`` returns is dropped.
        """
        engine = self._in_process()
        signal = self._pipeline.new_signal()
        job = lambda model, tokenizer, emit, stop: fn(model, tokenizer, emit, stop, *args, **kwargs)  # noqa: E731
        return self._pipeline.stream(signal, lambda: engine.run_stream(job, signal))

    def explain_stream(
        self,
        prompt: str,
        max_length: int | None = None,
        *,
        max_new_tokens: int | None = None,
        alternatives: int = 5,
        add_special_tokens: bool = True,
        include_prompt: bool = False,
        stop_event: Any = None,
        **generate_kwargs: Any,
    ) -> Iterator[ExplainedToken]:
        """Yield each new token, explained, as it is generated: ``stream`` with probabilities.

        Takes what ``stream`` takes (sampling's ``top_k`` too); ``alternatives`` is how many likely
        tokens each keeps; ``include_prompt`` yields the prompt's tokens first (each scored given
        those before it). Input is checked here, before the first token. Closing the iterator, its
        ``.stop()``, ``llm.stop()`` or setting ``stop_event`` (anything with ``is_set()``) stops it
        within a step. ``add_special_tokens=False`` suits a prompt from ``format_chat``: lengths then
        bound the reply alone, as in ``chat``. Sets ``last_stats``.

        >>> for token in llm.explain_stream("Once upon a time,", max_new_tokens=5):   # doctest: +SKIP
        ...     print(repr(token.text), round(token.probability, 3))
        """
        settings = {"add_special_tokens": add_special_tokens, "include_prompt": include_prompt}
        return self._explained(prompt, max_length, max_new_tokens, alternatives, stop_event, settings, generate_kwargs)

    def _explained(
        self, prompt: Any, max_length: Any, max_new_tokens: Any, alternatives: Any, stop_event: Any,
        settings: dict[str, bool], generate_kwargs: dict[str, Any], name: str = "alternatives",
    ) -> Iterator[ExplainedToken]:  # fmt: skip
        """``explain_stream``, with ``name`` for how the caller calls ``alternatives`` (explain: top_k)."""
        add_special_tokens, include_prompt = settings["add_special_tokens"], settings["include_prompt"]
        for flag_name, flag in (("add_special_tokens", add_special_tokens), ("include_prompt", include_prompt)):
            if not isinstance(flag, bool):
                raise TypeError(f"{flag_name} must be True or False, not {flag!r}.")
        if not isinstance(prompt, str):
            validation.check_prompt(prompt)  # a precise message for wrong types
            raise TypeError("Pass one prompt string; the look-inside views take one prompt at a time.")
        engine = self._engine
        if not isinstance(engine, ExplainsTokens):
            raise GenerationError(f"{engine.description} cannot report token probabilities; use generate().")
        self._pipeline.check_open()
        validation.check_top_k(alternatives, len(self.tokenizer), name)
        beams = generate_kwargs.get("num_beams", 1)
        if isinstance(beams, int) and beams > 1:
            raise ValueError(
                f"num_beams={beams} cannot be explained token by token: beam search keeps several "
                "sequences and picks one at the end. Drop num_beams here, or use generate() for beam search."
            )
        # a prompt from format_chat (add_special_tokens=False): lengths bound the reply, as in chat()
        request, budget = self._request(
            prompt, max_length, max_new_tokens, generate_kwargs, streaming=True, chat=not add_special_tokens
        )
        prompt_tokens = len(request.token_ids[0])

        def record(tokens: list[ExplainedToken], result: EngineResult | None, seconds: float, first: Any) -> None:
            new = [token for token in tokens if not token.is_prompt]
            reason = result.completions[0].finish_reason if result is not None else "stopped"
            if result is not None:
                seconds, first = result.seconds, result.time_to_first_token
            stats = GenerationStats(prompt_tokens, len(new), seconds, first, (reason,), budget)
            self.last_stats = stats

        def pieces() -> Iterator[ExplainedToken]:
            return engine.explain_stream(request, alternatives, stop_event, include_prompt=include_prompt, name=name)

        return self._pipeline.stream(request.stop, pieces, record)

    def explain(
        self, prompt: str, max_new_tokens: int = 20, top_k: int = 5, *, sampling_top_k: int | None = None, **kw: Any
    ) -> Explanation:
        """Each token of prompt and continuation with its probability and ``top_k`` alternatives (``Explanation``).

        Continues like ``generate`` (greedy unless ``do_sample=True``); ``sampling_top_k`` is
        sampling's top-k (``top_k`` here counts the alternatives shown).
        """
        from .inside.explain import gather

        if sampling_top_k is not None:
            kw["top_k"] = sampling_top_k
        settings = {"add_special_tokens": True, "include_prompt": True}
        tokens = list(self._explained(prompt, None, max_new_tokens, top_k, None, settings, dict(kw), name="top_k"))
        return gather(self, tokens, {"do_sample": False, **kw})

    def logit_lens(self, prompt: str) -> LogitLens:
        """Every layer's next-token guess at every prompt position (``LogitLens``)."""
        from .inside.logit_lens import logit_lens

        return logit_lens(self, prompt)

    def attention(self, prompt: str) -> Attention:
        """Every layer's and head's attention weights over the prompt (``Attention``), eager for this call."""
        from .inside.attention import attention

        return attention(self, prompt)

    def compare(self, prompt: str, lanes: dict[str, dict[str, Any]], max_new_tokens: int = 20) -> Comparison:
        """Continue ``prompt`` once per lane of generate options and show them side by side (``Comparison``)."""
        from .inside.compare import compare

        return compare(self, prompt, lanes, max_new_tokens=max_new_tokens)

    def _in_process(self) -> InProcess:
        self._pipeline.check_open()
        engine = self._engine
        if not isinstance(engine, InProcess):
            raise GenerationError(
                f"This needs the model's weights in this process, and {engine.description} runs it on a "
                "server. Load it here too, e.g. HuggingFaceLLM(model_id) without endpoint=, for the look-inside views."
            )
        return engine
