"""``HuggingFaceLLM``: one object to generate, stream and chat, in-process or against a server.

The facade validates input, turns lengths into token budgets with its tokenizer, takes turns,
handles Stop and records stats; an engine (``engines/``) does the generating.
"""

from __future__ import annotations

import logging
import os
import time
import weakref
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeVar, overload

from .core import budgets as _budgets
from .core import options as _options
from .core import validation
from .core.pipeline import Pipeline
from .core.requests import STOPPED, Completion, EngineRequest, EngineResult
from .core.stats import GenerationStats
from .core.turns import TextStream, Turns
from .engines import open_engine
from .engines.base import Engine, InProcess
from .errors import GenerationError, ModelLoadError
from .llm_views import ModelViews

if TYPE_CHECKING:
    import torch

logger = logging.getLogger("hfllm_nb")
T = TypeVar("T")


class HuggingFaceLLM(ModelViews):
    """A Hugging Face causal language model, ready to generate text.

    Args:
        model_id: a hub id ("gpt2-medium"), a local folder, a ``.gguf`` file, or ``None``
            for the embedded default model (SmolLM2-135M-Instruct, works offline). With
            ``endpoint=``, the model whose tokenizer counts tokens here.
        device: "cpu", "cuda", "cuda:1", "mps", an int, or ``None`` for CUDA, then MPS, then CPU.
        max_length: default token budget, prompt included, as in transformers (for ``chat``:
            the reply's budget, since the chat template is not the user's text).
        quantization_config: a dict such as ``{"load_in_8bit": True}`` or ``{"load_in_4bit": True}``.
        endpoint: URL of an OpenAI-compatible server (vLLM, SGLang, llama.cpp, TGI,
            ``transformers serve``), e.g. "http://127.0.0.1:8000/v1"; generation then runs there.
        api_key, served_model, timeout: for ``endpoint`` (see ``engines.remote``).
        dtype: "auto" (bf16 where it is fast, see ``_device.resolve_dtype``), "float32",
            "bfloat16" or "float16".
        device_map: e.g. "auto" to let accelerate place layers over GPUs and CPU.
        trust_remote_code: run Python code that ships with a hub model. Off unless you trust it.
        compile: decode with a static KV cache and a ``torch.compile``'d step (see ``_fast_decode``).
        **load_kwargs: passed to ``from_pretrained`` (revision, token, use_safetensors, …).

    >>> with HuggingFaceLLM() as llm:                   # doctest: +SKIP
    ...     llm("Once upon a time,", max_length=30)
    """

    def __init__(
        self,
        model_id: str | os.PathLike | None = None,
        device: str | int | torch.device | None = None,
        max_length: int = 20,
        quantization_config: dict[str, Any] | None = None,
        *,
        endpoint: str | None = None,
        api_key: str | None = None,
        served_model: str | None = None,
        timeout: float | None = None,
        dtype: str | torch.dtype = "auto",
        device_map: str | dict | None = None,
        trust_remote_code: bool = False,
        compile: bool = False,
        **load_kwargs: Any,
    ) -> None:
        if not isinstance(trust_remote_code, bool):
            raise TypeError(f"trust_remote_code must be True or False, not {trust_remote_code!r}.")
        if not isinstance(compile, bool):
            raise TypeError(f"compile must be True or False, not {compile!r}.")
        validation.check_length("max_length", max_length, limit=10**9, allow_none=False)
        self._turns = Turns()
        self._pipeline = Pipeline(self._turns, self._check_open)
        self._views: weakref.WeakSet = weakref.WeakSet()  # panels and explorers that close() closes
        self._closed = False
        self.last_stats: GenerationStats | None = None
        started = time.perf_counter()
        try:
            engine, self.model_id = open_engine(
                model_id,
                endpoint=endpoint,
                device=device,
                quantization_config=quantization_config,
                dtype=dtype,
                device_map=device_map,
                trust_remote_code=trust_remote_code,
                compile=compile,
                api_key=api_key,
                served_model=served_model,
                timeout=timeout,
                load_kwargs=load_kwargs,
            )
        except ModelLoadError as exc:
            logger.error("%s", exc)  # the one place load failures are logged, whatever raised them
            raise
        self._engine: Engine = engine
        # A model the notebook drops (``llm = HuggingFaceLLM()`` run again) is freed with its views;
        # close() runs the same, once.
        self._let_go = weakref.finalize(self, _let_go, engine, self._views, self._turns)
        if isinstance(engine, InProcess):
            self._turns.inside_generation = engine.in_model_thread
        self.load_seconds = time.perf_counter() - started
        self.tokenizer = engine.tokenizer
        self.context_length = engine.context_length
        self.max_length = validation.check_length(
            "max_length", max_length, limit=self.context_length, allow_none=False
        )
        in_process = isinstance(engine, InProcess)
        self.device: torch.device | None = engine.device if in_process else None
        self.dtype: torch.dtype | None = engine.dtype if in_process else None
        self.quantized = in_process and engine.quantization is not None
        # What the weights are stored as: a quantization's label ("8-bit LLM.int8 ..."), else None.
        self.quantization_label: str | None = engine.quantization.label if self.quantized else None
        logger.info("Ready: %s (%s) in %.1f s.", self.model_id, engine.description, self.load_seconds)

    def __repr__(self) -> str:
        return f"HuggingFaceLLM(model_id={self.model_id!r}, {self._engine.description}, max_length={self.max_length})"

    # ----------------------------------------------------------------- generation

    @overload
    def generate(self, prompt: str, max_length: int | None = ..., **kwargs: Any) -> str: ...
    @overload
    def generate(self, prompt: Sequence[str], max_length: int | None = ..., **kwargs: Any) -> list[str]: ...

    def generate(
        self,
        prompt: str | Sequence[str],
        max_length: int | None = None,
        *,
        max_new_tokens: int | None = None,
        return_full_text: bool = True,
        **generate_kwargs: Any,
    ) -> str | list[str]:
        """Continue ``prompt`` (greedy unless ``do_sample=True``) and return the text.

        Args:
            prompt: a string, or a list of strings to generate as one batch.
            max_length: tokens in prompt + continuation; defaults to ``self.max_length``.
            max_new_tokens: count only generated tokens instead (exclusive with max_length).
            return_full_text: include the prompt in the result (default) or not.
            **generate_kwargs: do_sample, temperature, top_p, top_k, min_p, repetition_penalty,
                seed, stop_strings, min_new_tokens; in-process also num_beams and friends
                (``_options.ALLOWED_OPTIONS``).

        >>> llm.generate("The future of AI is", max_new_tokens=5)   # doctest: +SKIP
        'The future of AI is bright, and it'
        """
        if not isinstance(return_full_text, bool):
            raise TypeError(f"return_full_text must be True or False, not {return_full_text!r}.")
        request, budget = self._request(prompt, max_length, max_new_tokens, generate_kwargs)
        result = self._generate(request, budget)
        texts = [
            self._full_text(ids, prompt_text, completion) if return_full_text else completion.text
            for ids, prompt_text, completion in zip(request.token_ids, request.prompts, result.completions, strict=True)
        ]
        return texts[0] if isinstance(prompt, str) else texts

    __call__ = generate

    def stream(
        self, prompt: str, max_length: int | None = None, *, max_new_tokens: int | None = None, **generate_kwargs: Any
    ) -> Iterator[str]:
        """Yield the continuation of ``prompt`` in pieces as they are generated.

        Joined, the pieces equal ``generate(prompt, return_full_text=False)``. Closing the
        iterator (``.close()``) stops generation within one step; see ``_turns`` for what a
        new call does while a stream is left open.

        >>> for piece in llm.stream("Once upon a time,", max_new_tokens=20):   # doctest: +SKIP
        ...     print(piece, end="")
        """
        if not isinstance(prompt, str):
            validation.check_prompt(prompt)  # raises a precise error for bad types
            raise TypeError("stream() takes one prompt string; call it once per prompt, or use generate() for a batch.")
        request, budget = self._request(prompt, max_length, max_new_tokens, generate_kwargs, streaming=True)
        return self._stream(request, budget)

    @overload
    def chat(self, messages: Any, max_length: int | None = ..., *, stream: Literal[False] = ..., **kw: Any) -> str: ...
    @overload
    def chat(
        self, messages: Any, max_length: int | None = ..., *, stream: Literal[True], **kw: Any
    ) -> Iterator[str]: ...

    def chat(
        self,
        messages: str | Sequence[dict[str, str]],
        max_length: int | None = None,
        *,
        max_new_tokens: int | None = None,
        stream: bool = False,
        **generate_kwargs: Any,
    ) -> str | Iterator[str]:
        """Reply to a conversation using the tokenizer's chat template.

        ``messages`` is a user message as text, or a list of ``{"role", "content"}`` dicts. In
        chat, ``max_length`` (default ``self.max_length``) and ``max_new_tokens`` both bound the
        reply alone: the template adds tokens the user never typed. The same rule holds in the
        panel and the CLI. ``stream=True`` returns an iterator whose pieces join to the reply.

        >>> llm.chat("What is the capital of France?", max_new_tokens=20)   # doctest: +SKIP
        'The capital of France is Paris.'
        """
        if not isinstance(stream, bool):
            raise TypeError(f"stream must be True or False, not {stream!r}.")
        conversation = validation.check_messages(messages)
        prompt = self.format_chat(conversation)
        request, budget = self._request(
            prompt, max_length, max_new_tokens, generate_kwargs, streaming=stream, messages=conversation
        )
        if stream:
            return self._stream(request, budget)
        return self._generate(request, budget).completions[0].text

    def format_chat(self, messages: str | Sequence[dict[str, str]]) -> str:
        """The prompt text the chat template builds for ``messages`` (what the model reads)."""
        conversation = validation.check_messages(messages)
        if not getattr(self.tokenizer, "chat_template", None):
            raise ValueError(
                f"The tokenizer of {self.model_id!r} has no chat template. Use generate() with "
                "plain text, or load an instruct/chat model such as the default one."
            )
        return self.tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)

    def stop(self) -> None:
        """Stop the running generation, and any asked for but not yet started, from any thread."""
        self._turns.stop_all()

    @overload
    def count_tokens(self, text: str, *, add_special_tokens: bool = ...) -> int: ...
    @overload
    def count_tokens(self, text: Sequence[str], *, add_special_tokens: bool = ...) -> list[int]: ...

    def count_tokens(self, text: str | Sequence[str], *, add_special_tokens: bool = True) -> int | list[int]:
        """How many tokens ``text`` takes as a prompt (what counts against max_length).

        A list of strings gives a list of counts. Pass ``add_special_tokens=False`` for text
        from ``format_chat``, as ``chat`` does.
        """
        texts = validation.check_prompt(text)
        counts = [len(ids) for ids in self.tokenizer(texts, add_special_tokens=add_special_tokens)["input_ids"]]
        return counts[0] if isinstance(text, str) else counts

    @property
    def sampling_defaults(self) -> dict[str, float | int]:
        """temperature, top_p and top_k that ``do_sample=True`` uses unless you pass them."""
        return self._engine.sampling_defaults

    @property
    def engine_description(self) -> str:
        """Where generation runs, in one line (the panel's memory readout shows it)."""
        return self._engine.description

    @property
    def is_busy(self) -> bool:
        """True while a generation holds the model."""
        return self._turns.busy

    # ----------------------------------------------------------------- views and lifetime

    def _check_open(self) -> None:
        if self._closed:
            raise GenerationError(f"{self.model_id!r} was closed; load it again with HuggingFaceLLM(...).")

    def panel(self, **settings: Any):
        """An ipywidgets panel for this model (see ``hfllm_nb.LLMPanel``); ``close()`` closes it too."""
        from .widgets.panel import LLMPanel  # the core stays importable without ipywidgets

        return LLMPanel(self, **settings)

    def register_view(self, view: Any) -> None:
        """Have ``close()`` close ``view`` too (panels and explorers register themselves; held weakly)."""
        self._views.add(view)

    def chat_panel(self, system_prompt: str | None = None, **settings: Any):
        """A multi-turn chat widget for this model (see ``hfllm_nb.ChatPanel``); ``close()`` closes it too."""
        from .widgets.chat_panel import ChatPanel  # the core stays importable without ipywidgets

        return ChatPanel(self, system_prompt, **settings)  # it registers itself with this model

    def close(self) -> None:
        """Stop any generation, close this model's views, free the weights (and the CUDA cache).

        Never waits on a caller: Stop ends the running generation within a step, and the engine
        frees the weights after it (a stream left half-read elsewhere then ends with an error).
        """
        if self._closed:
            return
        if self._turns.inside_generation():
            raise GenerationError("close() cannot run inside a generation callback; call it after the run ends.")
        self._closed = True  # from here on every call, and every stream not yet started, says so
        self._let_go()

    def __enter__(self) -> HuggingFaceLLM:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    # ----------------------------------------------------------------- internals

    def _request(
        self,
        prompt: Any,
        max_length: Any,
        max_new_tokens: Any,
        options: dict[str, Any],
        *,
        streaming: bool = False,
        messages: list[dict[str, str]] | None = None,
        chat: bool = False,
    ) -> tuple[EngineRequest, str]:
        """Validate everything before touching the model, so a bad call changes no state.

        ``chat``: the prompt comes from the chat template, so lengths bound the reply alone (as with ``messages``).
        """
        self._check_open()
        options = _options.check_options(options, streaming=streaming)
        self._engine.check_options(options)
        prompts, encoded, budgets, budget = _budgets.plan(
            self.tokenizer,
            prompt,
            max_length,
            max_new_tokens,
            context_length=self.context_length,
            default_max_length=self.max_length,
            chat=chat or messages is not None,
        )
        request = EngineRequest(prompts, encoded, budgets, options, self._turns.new_signal(), messages)
        return request, budget

    def _generate(self, request: EngineRequest, budget: str) -> EngineResult:
        def run() -> EngineResult:
            result = self._engine.generate(request)
            self._record(request, result, budget)  # while the turn is held: no later call's stats come first
            return result

        return self._pipeline.call(request.stop, run)

    def _stream(self, request: EngineRequest, budget: str) -> TextStream:
        def record(pieces: list[str], result: EngineResult | None, seconds: float, first: float | None) -> None:
            if result is None:  # closed early: count what was read
                text = "".join(pieces)
                tokens = len(self.tokenizer(text, add_special_tokens=False)["input_ids"])
                result = EngineResult([Completion(text, tokens, STOPPED)], seconds, first)
            self._record(request, result, budget)

        return self._pipeline.stream(request.stop, lambda: self._engine.stream(request), record)

    def _record(self, request: EngineRequest, result: EngineResult, budget: str) -> None:
        self.last_stats = GenerationStats(
            prompt_tokens=sum(len(ids) for ids in request.token_ids),
            new_tokens=sum(c.new_tokens for c in result.completions),
            seconds=result.seconds,
            time_to_first_token=result.time_to_first_token,
            finish_reasons=tuple(c.finish_reason for c in result.completions),
            budget=budget,
            peak_gpu_memory=result.peak_gpu_memory,
            prompt_tokens_reused=result.prompt_tokens_reused,
        )

    def _full_text(self, prompt_ids: list[int], prompt: str, completion: Any) -> str:
        """Prompt + continuation; decoded together where the token ids are known, as transformers does."""
        if completion.token_ids is None:
            return prompt + completion.text
        return self.tokenizer.decode(prompt_ids + completion.token_ids, skip_special_tokens=True)


def _let_go(engine: Engine, views: weakref.WeakSet, turns: Turns) -> None:
    """Stop every request, close the views, free the engine: ``close()``, or the model being collected.

    The engine is freed even if closing a view is interrupted.
    """
    try:
        turns.stop_all()
        for view in list(views):
            view.close()
    finally:
        engine.close()
