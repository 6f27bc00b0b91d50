"""``HuggingFaceLLM``: load a causal LM once, then generate, stream and chat from a notebook."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from . import _device, _fast_decode, _loading, _validation
from ._quantization import build_quantization_config
from ._streaming import StepWatch, ThreadedTextStream
from .errors import GenerationError, ModelLoadError

logger = logging.getLogger("hfllm_nb")

# Used when neither the config nor the tokenizer gives a believable context length.
_FALLBACK_CONTEXT = 2048


@dataclass(frozen=True)
class GenerationStats:
    """What the last generation cost; the panel's status line reads it."""

    prompt_tokens: int
    new_tokens: int
    seconds: float
    time_to_first_token: float | None
    stopped: bool
    peak_gpu_memory: int | None = None

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0


@dataclass
class _Request:
    """A validated generation request, tokenized and ready for ``model.generate``."""

    inputs: dict[str, torch.Tensor]
    budgets: list[int]  # new tokens each prompt may get
    options: dict[str, Any]
    seed: int | None

    @property
    def prompt_width(self) -> int:
        return self.inputs["input_ids"].shape[1]


class HuggingFaceLLM:
    """A Hugging Face causal language model, ready to generate text.

    Args:
        model_id: a hub id ("gpt2-medium"), a local folder, a ``.gguf`` file, or ``None``
            for the embedded default model (SmolLM2-135M-Instruct, works offline).
        device: "cpu", "cuda", "cuda:1", "mps", an int, or ``None`` for CUDA, then MPS, then CPU.
        max_length: default token budget, prompt included, as in transformers.
        quantization_config: a dict such as ``{"load_in_4bit": True}`` (needs bitsandbytes).
        dtype: "auto" (bf16 where it is fast, see ``_device.resolve_dtype``), "float32",
            "bfloat16" or "float16".
        device_map: e.g. "auto" to let accelerate place layers over GPUs and CPU.
        trust_remote_code: run Python code that ships with a hub model. Off unless you trust it.
        compile: decode with a static KV cache and a ``torch.compile``'d step, compiled once
            here at load (see ``_fast_decode``). Same greedy text as without it in float32 (bf16
            rounds differently in fused kernels). Pays off mostly on CUDA; not with quantization.
        **load_kwargs: passed to ``from_pretrained`` (revision, token, use_safetensors, …).

    Example:
        >>> llm = HuggingFaceLLM()                      # doctest: +SKIP
        >>> llm("Once upon a time,", max_length=30)     # doctest: +SKIP
        'Once upon a time, ...'
    """

    def __init__(
        self,
        model_id: str | os.PathLike | None = None,
        device: str | int | torch.device | None = None,
        max_length: int = 20,
        quantization_config: dict[str, Any] | None = None,
        *,
        dtype: str | torch.dtype = "auto",
        device_map: str | dict | None = None,
        trust_remote_code: bool = False,
        compile: bool = False,
        **load_kwargs: Any,
    ) -> None:
        _fast_decode.check_compile(compile, quantization_config)
        if not isinstance(trust_remote_code, bool):
            raise TypeError(f"trust_remote_code must be True or False, not {trust_remote_code!r}.")
        if device is not None and device_map is not None:
            raise ValueError("Pass either device or device_map, not both (device_map='auto' places the model itself).")
        if device_map is not None and not isinstance(device_map, (str, dict)):
            raise TypeError(f"device_map must be a string such as 'auto' or a dict, not {type(device_map).__name__}.")
        _validation.check_length("max_length", max_length, limit=10**9, allow_none=False)
        target = _device.resolve_device(device)
        self.dtype = _device.resolve_dtype(dtype, target)
        quantization = build_quantization_config(quantization_config, self.dtype)
        started = time.perf_counter()
        try:
            source = _loading.resolve_source(model_id)
            self.model_id = source.label if model_id is None else str(model_id)
            self.model, self.tokenizer = _loading.load_model_and_tokenizer(
                source,
                dtype=self.dtype,
                # Loading straight onto the device avoids a CPU copy; quantized weights must never be .to()'d.
                device_map=device_map if device_map is not None else {"": str(target)},
                quantization=quantization,
                trust_remote_code=trust_remote_code,
                load_kwargs=load_kwargs,
            )
        except ModelLoadError as exc:
            logger.error("%s", exc)  # the one place load failures are logged, whatever raised them
            raise
        self.load_seconds = time.perf_counter() - started
        self.model.eval()
        self.device = self.model.device
        self.quantized = quantization is not None
        self.tokenizer.padding_side = "left"  # decoder-only models continue from the right edge
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.context_length = self._context_length()
        self.max_length = _validation.check_length(
            "max_length", max_length, limit=self.context_length, allow_none=False
        )
        self.last_stats: GenerationStats | None = None
        self._lock = threading.Lock()
        self._stop_event = threading.Event()
        self._fast = _fast_decode.FastDecode(self.device, self.context_length) if compile else None
        if self._fast is not None:
            self._fast.warm_up(self.generate)
            self.last_stats = None
        logger.info("Loaded %s on %s as %s in %.1f s.", self.model_id, self.device, self.dtype, self.load_seconds)

    def __repr__(self) -> str:
        kind = "quantized" if self.quantized else str(self.dtype).replace("torch.", "")
        return (
            f"HuggingFaceLLM(model_id={self.model_id!r}, device='{self.device}', {kind}, max_length={self.max_length})"
        )

    # ----------------------------------------------------------------- public API

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
            prompt: a string, or a list of strings to generate as one left-padded batch.
            max_length: tokens in prompt + continuation; defaults to ``self.max_length``.
            max_new_tokens: count only generated tokens instead (exclusive with max_length).
            return_full_text: include the prompt in the result (default) or not.
            **generate_kwargs: do_sample, temperature, top_p, top_k, repetition_penalty,
                seed, or any other ``GenerationConfig`` field.

        >>> llm.generate("The future of AI is", max_new_tokens=5)   # doctest: +SKIP
        'The future of AI is bright, and it'
        """
        if not isinstance(return_full_text, bool):
            raise TypeError(f"return_full_text must be True or False, not {return_full_text!r}.")
        request = self._prepare(prompt, max_length, max_new_tokens, generate_kwargs)
        with self._lock:
            output = self._run(request)
        texts = self._decode(request, output, return_full_text)
        return texts[0] if isinstance(prompt, str) else texts

    __call__ = generate

    def stream(
        self,
        prompt: str,
        max_length: int | None = None,
        *,
        max_new_tokens: int | None = None,
        **generate_kwargs: Any,
    ) -> Iterator[str]:
        """Yield the continuation of ``prompt`` in pieces as they are generated.

        Joined, the pieces equal ``generate(prompt, return_full_text=False)``. Closing the
        iterator (``break``) stops generation within one step.

        >>> for piece in llm.stream("Once upon a time,", max_new_tokens=20):   # doctest: +SKIP
        ...     print(piece, end="")
        """
        if not isinstance(prompt, str):
            _validation.check_prompt(prompt)  # raises a precise error for bad types
            raise TypeError("stream() takes one prompt string; call it once per prompt, or use generate() for a batch.")
        request = self._prepare(prompt, max_length, max_new_tokens, generate_kwargs)
        return self._stream(request)

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

        ``messages`` is a user message as text, or a list of ``{"role", "content"}`` dicts.
        With neither length given, the reply may use ``self.max_length`` new tokens, since
        the template adds tokens the user never typed. ``stream=True`` returns an iterator.

        >>> llm.chat("What is the capital of France?", max_new_tokens=20)   # doctest: +SKIP
        'The capital of France is Paris.'
        """
        prompt = self.format_chat(messages)
        if max_length is None and max_new_tokens is None:
            max_new_tokens = self.max_length
        request = self._prepare(prompt, max_length, max_new_tokens, generate_kwargs, add_special_tokens=False)
        if stream:
            return self._stream(request)
        with self._lock:
            output = self._run(request)
        return self._decode(request, output, return_full_text=False)[0].strip()

    def format_chat(self, messages: str | Sequence[dict[str, str]]) -> str:
        """The prompt text the chat template builds for ``messages`` (what the model reads)."""
        conversation = _validation.check_messages(messages)
        if not getattr(self.tokenizer, "chat_template", None):
            raise ValueError(
                f"The tokenizer of {self.model_id!r} has no chat template. Use generate() with "
                "plain text, or load an instruct/chat model such as the default one."
            )
        return self.tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)

    def stop(self) -> None:
        """Stop the generation running on this object (from another thread or a widget)."""
        self._stop_event.set()

    def count_tokens(self, text: str, *, add_special_tokens: bool = True) -> int:
        """How many tokens ``text`` takes as a prompt (what counts against max_length).

        Pass ``add_special_tokens=False`` for text from ``format_chat``, as ``chat`` does.
        """
        _validation.check_prompt(text)
        return len(self.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])

    @property
    def sampling_defaults(self) -> dict[str, float | int]:
        """temperature, top_p and top_k that ``do_sample=True`` uses unless you pass them."""
        config = self.model.generation_config
        fallback = {"temperature": 1.0, "top_p": 1.0, "top_k": 50}  # transformers' own defaults
        return {
            name: value if (value := getattr(config, name, None)) is not None else default
            for name, default in fallback.items()
        }

    @property
    def is_busy(self) -> bool:
        """True while a generation holds the model."""
        return self._lock.locked()

    def panel(self, **settings: Any):
        """An ipywidgets panel for this model (see ``hfllm_nb.LLMPanel``)."""
        from .panel import LLMPanel  # the core stays importable without ipywidgets

        return LLMPanel(self, **settings)

    # ----------------------------------------------------------------- internals

    def _context_length(self) -> int:
        config = self.model.config
        for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
            value = getattr(config, name, None)
            if isinstance(value, int) and value > 0:
                return value
        value = getattr(self.tokenizer, "model_max_length", None)
        if isinstance(value, int) and 0 < value < 10**7:
            return value
        return _FALLBACK_CONTEXT

    def _prepare(
        self,
        prompt: Any,
        max_length: Any,
        max_new_tokens: Any,
        options: dict[str, Any],
        *,
        add_special_tokens: bool = True,
    ) -> _Request:
        """Validate everything before touching the model, so a bad call changes no state."""
        prompts = _validation.check_prompt(prompt)
        max_length = _validation.check_length("max_length", max_length, limit=self.context_length)
        max_new_tokens = _validation.check_length("max_new_tokens", max_new_tokens, limit=self.context_length)
        if max_length is not None and max_new_tokens is not None:
            raise ValueError(
                f"Pass max_length ({max_length}, prompt included) or max_new_tokens "
                f"({max_new_tokens}, generated only), not both."
            )
        options = dict(options)
        _validation.check_generate_keywords(options)
        _validation.check_sampling(options)
        seed = options.pop("seed", None)
        encoded = self.tokenizer(prompts, add_special_tokens=add_special_tokens)["input_ids"]
        lengths = [len(ids) for ids in encoded]
        budgets = []
        for i, length in enumerate(lengths):
            where = "The prompt" if len(prompts) == 1 else f"prompt[{i}]"
            if length == 0:
                raise ValueError(
                    f"{where} ({prompts[i]!r}) has no tokens: the tokenizer drops every character of it "
                    "(control characters, say). Pass some visible text."
                )
            if max_new_tokens is not None:
                if length + max_new_tokens > self.context_length:
                    raise ValueError(
                        f"{where} has {length} tokens; with max_new_tokens={max_new_tokens} that exceeds "
                        f"the model's context of {self.context_length}. Shorten the prompt or lower max_new_tokens."
                    )
                budgets.append(max_new_tokens)
                continue
            limit = max_length if max_length is not None else self.max_length
            if length >= limit:
                raise ValueError(
                    f"{where} has {length} tokens, which already fills max_length={limit} "
                    "(max_length counts the prompt too). Raise max_length above "
                    f"{length}, or pass max_new_tokens=N to count only new tokens."
                )
            budgets.append(limit - length)
        inputs = self._left_pad(encoded)
        return _Request(inputs=inputs, budgets=budgets, options=options, seed=seed)

    def _left_pad(self, encoded: list[list[int]]) -> dict[str, torch.Tensor]:
        """Batch token lists, padded on the left so every prompt ends where generation starts.

        Padding here rather than with ``tokenizer(..., padding=True)`` keeps the fast tokenizer's
        shared state untouched, so a streamer decoding in another thread never collides with it.
        """
        width = max(len(ids) for ids in encoded)
        input_ids = torch.full((len(encoded), width), self.tokenizer.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(encoded), width), dtype=torch.long)
        for row, ids in enumerate(encoded):
            input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, width - len(ids) :] = 1
        return {"input_ids": input_ids.to(self.device), "attention_mask": attention_mask.to(self.device)}

    def _run(self, request: _Request, streamer: Any = None) -> torch.Tensor:
        """Call ``model.generate``; the caller holds ``self._lock``."""
        from transformers import StoppingCriteriaList

        self._stop_event.clear()
        watch = StepWatch(self._stop_event)
        options = dict(request.options)
        criteria = StoppingCriteriaList([watch, *(options.pop("stopping_criteria", None) or [])])
        options.setdefault("do_sample", False)
        options.setdefault("pad_token_id", self.tokenizer.pad_token_id)
        if self._fast is not None:
            options = {**self._fast.options(request.prompt_width, max(request.budgets)), **options}
        on_cuda = self.device.type == "cuda"
        if on_cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        # Sampling with a seed must not disturb the user's global RNG state.
        rng = (
            torch.random.fork_rng(devices=[self.device] if on_cuda else [])
            if request.seed is not None
            else contextlib.nullcontext()
        )
        output = None
        try:
            with rng, torch.inference_mode():
                if request.seed is not None:
                    torch.manual_seed(request.seed)
                output = self.model.generate(
                    **request.inputs,
                    max_new_tokens=max(request.budgets),
                    stopping_criteria=criteria,
                    streamer=streamer,
                    **options,
                )
        except torch.OutOfMemoryError:
            out_of_memory = True
        else:
            out_of_memory = False
        finally:
            self._record_stats(request, output, watch, on_cuda)
        if out_of_memory:
            # Raised outside the except block, so the OOM error and the frames holding the
            # KV cache and activations are released before the cached memory is returned.
            if on_cuda:
                torch.cuda.empty_cache()
            raise GenerationError(
                f"Out of memory while generating with {self.model_id!r} on {self.device}. "
                "Lower max_length or the batch size, or load the model with "
                "quantization_config={'load_in_4bit': True}."
            )
        return output

    def _record_stats(self, request: _Request, output: torch.Tensor | None, watch: StepWatch, on_cuda: bool) -> None:
        elapsed = time.perf_counter() - watch.started
        new_tokens = 0
        if output is not None:
            new_part = output[:, request.prompt_width :]
            real = new_part != self.tokenizer.pad_token_id
            new_tokens = int(
                sum(min(int(row.sum()), budget) for row, budget in zip(real, request.budgets, strict=True))
            )
        else:
            new_tokens = watch.steps * len(request.budgets)
        first = watch.first_token_at - watch.started if watch.first_token_at is not None else None
        peak = torch.cuda.max_memory_allocated(self.device) if on_cuda else None
        self.last_stats = GenerationStats(
            prompt_tokens=int(request.inputs["attention_mask"].sum()),
            new_tokens=new_tokens,
            seconds=elapsed,
            time_to_first_token=first,
            stopped=watch.stopped,
            peak_gpu_memory=peak,
        )

    def _decode(self, request: _Request, output: torch.Tensor, return_full_text: bool) -> list[str]:
        width = request.prompt_width
        mask = request.inputs["attention_mask"]
        texts = []
        for row, row_mask, budget in zip(output, mask, request.budgets, strict=True):
            # Cut each row to its own budget, so a batch item equals its single-prompt result.
            new_ids = row[width : width + budget]
            ids = torch.cat([row[:width][row_mask.bool()], new_ids]) if return_full_text else new_ids
            texts.append(self.tokenizer.decode(ids, skip_special_tokens=True))
        return texts

    def _stream(self, request: _Request) -> Iterator[str]:
        if len(request.budgets) != 1:
            raise TypeError("stream() takes one prompt string; use generate() for a batch.")
        stream = ThreadedTextStream(self.tokenizer)
        with self._lock:
            try:
                stream.start(lambda streamer: self._run(request, streamer=streamer))
                yield from stream
            finally:
                # Reached on normal end, on close() (break) and on KeyboardInterrupt alike.
                self._stop_event.set()
                stream.join()
        if stream.error is not None:
            raise stream.error
