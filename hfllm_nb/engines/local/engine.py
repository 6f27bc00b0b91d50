"""The in-process engine: a transformers model on this machine's CPU or GPU."""

from __future__ import annotations

import contextlib
import gc
import logging
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch

from ...core.requests import (
    CRITERION,
    END_OF_TEXT,
    LENGTH,
    STOPPED,
    Completion,
    EitherStop,
    EngineRequest,
    EngineResult,
    StopSignal,
)
from ...core.tokens import ExplainedToken
from ...errors import GenerationError
from . import device as device_rules
from . import fast_decode, loading, model_thread
from .hooks import StepWatch, TextEmitter
from .prefix_cache import PrefixCache

logger = logging.getLogger("hfllm_nb")

T = TypeVar("T")

# Used when neither the config nor the tokenizer gives a believable context length.
FALLBACK_CONTEXT = 2048


@dataclass(frozen=True)
class LocalSettings:
    """How to load an in-process model: the ``HuggingFaceLLM`` arguments that apply to one.

    ``device`` is resolved; ``dtype`` is the user's ("auto", a name or a torch.dtype);
    ``quantization_config`` the user's dict (see ``quantization.plan_quantization``).
    """

    device: torch.device
    dtype: Any = "auto"
    quantization_config: Any = None
    device_map: Any = None
    trust_remote_code: bool = False
    compile: bool = False
    load_kwargs: dict[str, Any] = field(default_factory=dict)


class LocalEngine:
    """Loads a causal LM with transformers and generates with ``model.generate``.

    Every torch operation of the model, loading included, runs on the shared model thread
    (``model_thread``); this object only enqueues jobs and reads their results.
    """

    def __init__(self, source: loading.ModelSource, settings: LocalSettings) -> None:
        try:
            self.model_thread = model_thread.acquire(self)
            self.model_thread.call(lambda: self._load(source, settings), owner=self)
        except BaseException:
            model_thread.release(self)
            raise

    def _load(self, source: loading.ModelSource, settings: LocalSettings) -> None:
        """Load, quantize and warm up the model: on the model thread, like every later torch op."""
        device = settings.device
        self.dtype = device_rules.resolve_dtype(settings.dtype, device)
        plan = None
        if settings.quantization_config is not None:
            from .quantization import plan_quantization

            plan = plan_quantization(settings.quantization_config, dtype=self.dtype, device=device)
        fast_decode.check_compile(settings.compile, plan)
        self.quantization = plan
        self.model, self.tokenizer = loading.load_model_and_tokenizer(
            source,
            dtype=plan.load_dtype if plan is not None else self.dtype,
            # Loading straight onto the device avoids a CPU copy; quantized weights must never be .to()'d.
            device_map=settings.device_map if settings.device_map is not None else {"": str(device)},
            quantization=plan.from_pretrained_config if plan is not None else None,
            trust_remote_code=settings.trust_remote_code,
            load_kwargs=settings.load_kwargs,
        )
        if plan is not None:
            plan.after_load(self.model)
        self.model.eval()
        self.device = self.model.device
        self.tokenizer.padding_side = "left"  # decoder-only models continue from the right edge
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.context_length = self._context_length()
        self._eos_ids = self._end_token_ids()
        self.fast_decode = (
            fast_decode.FastDecode(self.device, self.context_length, self.model.config) if settings.compile else None
        )
        # compile=True bypasses prefix reuse: its static caches are sized per call and reset before each one.
        # 16-bit weights too: there the reused keys and values round differently from a fresh prefill's,
        # and a 10-turn bfloat16 chat gave another greedy reply in 4 turns of 10 (benchmarks/cost.py).
        usable = not settings.compile and self.dtype == torch.float32 and PrefixCache.supported(self.model)
        self._prefix = PrefixCache(self.model) if usable else None
        if self.fast_decode is not None:
            attention = settings.load_kwargs.get("attn_implementation")
            fast_decode.use_fused_decode_attention(self.model, self.device, attention)
            self.fast_decode.warm_up(self._warm_up_generate)

    # ----------------------------------------------------------------- Engine protocol

    @property
    def description(self) -> str:
        kind = self.quantization.label if self.quantization is not None else str(self.dtype).replace("torch.", "")
        return f"{self.device} · {kind}"

    @property
    def sampling_defaults(self) -> dict[str, float | int]:
        config = self.model.generation_config
        fallback = {"temperature": 1.0, "top_p": 1.0, "top_k": 50}  # transformers' own defaults
        return {
            name: value if (value := getattr(config, name, None)) is not None else default
            for name, default in fallback.items()
        }

    def check_options(self, options: dict[str, Any]) -> None:
        """Every option of ``_options.ALLOWED_OPTIONS`` works in-process."""

    def generate(self, request: EngineRequest) -> EngineResult:
        return self.model_thread.call(lambda: self._generate_here(request), request.stop, owner=self)

    def stream(self, request: EngineRequest) -> Generator[str, None, EngineResult]:
        """Text pieces as the model thread produces them; closing this stops generation within a step."""
        job = lambda emit: self._generate_here(request, emit)  # noqa: E731
        return (yield from self.model_thread.stream(job, request.stop, owner=self))

    def close(self) -> None:
        """Withdraw this model's queued jobs and drop its weights; the last model ends the thread.

        Never waits for another model's run: the weights are dropped here, on the caller's thread
        (a job of this model still ending holds them only until its step is done). Idempotent,
        and a close interrupted by Ctrl-C still lets go of the thread. It may run on the model
        thread itself (a dropped model collected there), so it waits for nothing.
        """
        try:
            self.model_thread.withdraw(self)
            self._free()
        finally:
            model_thread.release(self)

    # ----------------------------------------------------------------- look-inside views

    def run(self, fn: Callable[[Any, Any], T], stop: StopSignal | None = None) -> T:
        """``fn(model, tokenizer)`` on the model thread, for views that run forward passes of their own."""
        job = lambda: self._out_of_memory_named(fn, self._view_model(), self.tokenizer)  # noqa: E731
        return self.model_thread.call(job, stop, owner=self)

    def run_stream(self, fn: Callable[..., T], stop: StopSignal) -> Generator[Any, None, T]:
        """``fn(model, tokenizer, emit, stop)`` on the model thread; yields what it emits."""
        job = lambda emit: self._out_of_memory_named(fn, self._view_model(), self.tokenizer, emit, stop)  # noqa: E731
        return (yield from self.model_thread.stream(job, stop, owner=self))

    def explain_stream(
        self,
        request: EngineRequest,
        alternatives: int,
        stop_event: Any = None,
        *,
        include_prompt: bool = False,
        name: str = "alternatives",  # no limit here beyond the vocabulary, which the facade checks
    ) -> Generator[ExplainedToken, None, EngineResult]:
        """Each new token explained as it is generated (the prompt's first, if asked); see ``explain``."""
        from .explain import explain_job

        stop = EitherStop(request.stop, stop_event)
        decode = self.decode_options
        settings = {"include_prompt": include_prompt, "defaults": self.sampling_defaults, "decode": decode}

        def job(emit: Callable[[Any], None]) -> EngineResult:
            return explain_job(self.loaded_model(), self.tokenizer, request, alternatives, emit, stop, **settings)

        return (yield from self.model_thread.stream(job, request.stop, owner=self))

    @property
    def cached_prefix(self) -> tuple[int, int]:
        """Tokens and bytes of the KV cache kept for the next call's prompt (0, 0 when none is kept)."""
        prefix = self.__dict__.get("_prefix")
        return (prefix.tokens, prefix.nbytes) if prefix is not None else (0, 0)

    def forget_prefix(self) -> None:
        """Drop the kept KV cache (e.g. after changing the model in a way its weights do not show)."""
        self.model_thread.call(lambda: self._prefix.drop() if self._prefix is not None else None, owner=self)

    def decode_options(self, batch: int, prompt_width: int, new_tokens: int) -> dict[str, Any]:
        """This engine's own generate settings (compile=True: static cache, compiled step); model thread only."""
        return self.fast_decode.options(batch, prompt_width, new_tokens) if self.fast_decode is not None else {}

    def in_model_thread(self) -> bool:
        """True inside a running job (a streamer or stopping-criterion callback): calls from here must fail."""
        return self.model_thread.is_current()

    # ----------------------------------------------------------------- internals

    def loaded_model(self) -> Any:
        model = self.__dict__.get("model")
        if model is None:
            raise GenerationError("This model was closed; load it again with HuggingFaceLLM(...).")
        return model

    def _out_of_memory_named(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)``, its out-of-memory error turned into a GenerationError that says what to do."""
        try:
            return fn(*args)
        except torch.OutOfMemoryError:
            pass
        # Raised outside the except block, so the frames holding the failed tensors are gone first.
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        raise GenerationError(
            f"Out of memory on {self.device} in a look-inside view or llm.run(). Use a shorter prompt, "
            "or load the model with quantization_config={'load_in_4bit': True}."
        )

    def _view_model(self) -> Any:
        """The model, for a view's own forward passes: those may hook or alter it, so the kept prefix goes."""
        model = self.loaded_model()
        if self._prefix is not None:
            self._prefix.drop()
        return model

    def _free(self) -> None:
        model = self.__dict__.pop("model", None)
        self.fast_decode = self._prefix = None
        if model is None:
            return
        del model
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _generate_here(self, request: EngineRequest, emit: Callable[[str], None] | None = None) -> EngineResult:
        """One generation, on the model thread; ``emit`` receives streamed text."""
        watch = StepWatch(
            request.stop,
            self._eos_ids,
            request.options.get("stop_strings"),
            self.tokenizer,
        )
        watch.per_row = request.options.get("num_beams", 1) == 1
        # One prompt, no beams: the KV of the prompt part it shares with the last call is reused.
        prefix = self._prefix if watch.per_row and len(request.token_ids) == 1 else None
        reused = prefix.prepare(request.token_ids[0]) if prefix is not None else 0
        try:
            output = self._run(request, watch, TextEmitter(self.tokenizer, emit) if emit is not None else None)
        except BaseException:
            if prefix is not None:
                prefix.drop()
            raise
        if prefix is not None:
            # Stopped before its first token: the prompt may not be what the next call extends.
            prefix.finish(output[0].tolist(), keep=not (watch.stopped and watch.steps <= 1))
        return self._result(request, output, watch, reused)

    def _context_length(self) -> int:
        config = self.model.config
        for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
            value = getattr(config, name, None)
            if isinstance(value, int) and value > 0:
                return value
        value = getattr(self.tokenizer, "model_max_length", None)
        if isinstance(value, int) and 0 < value < 10**7:
            return value
        return FALLBACK_CONTEXT

    def _end_token_ids(self) -> set[int]:
        ids = self.model.generation_config.eos_token_id
        if ids is None:
            ids = self.tokenizer.eos_token_id
        return set(ids) if isinstance(ids, (list, tuple)) else ({ids} if ids is not None else set())

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

    def _generate_kwargs(self, request: EngineRequest, watch: StepWatch, width: int) -> dict[str, Any]:
        from transformers import LogitsProcessorList, StoppingCriteriaList

        options = dict(request.options)
        options.pop("seed", None)
        criteria = StoppingCriteriaList([watch, *options.pop("stopping_criteria", [])])
        if "logits_processor" in options:
            options["logits_processor"] = LogitsProcessorList(options["logits_processor"])
        options.pop("stop_strings", None)  # matched by the StepWatch, which records where each row stopped
        options.setdefault("do_sample", False)
        options.setdefault("pad_token_id", self.tokenizer.pad_token_id)
        options = {**self.decode_options(len(request.token_ids), width, max(request.budgets)), **options}
        if self._prefix is not None and self._prefix.live is not None:
            options["cache"] = self._prefix.live
        return {"max_new_tokens": max(request.budgets), "stopping_criteria": criteria, **options}

    def _run(self, request: EngineRequest, watch: StepWatch, streamer: Any = None) -> torch.Tensor:
        inputs = self._left_pad(request.token_ids)
        kwargs = self._generate_kwargs(request, watch, inputs["input_ids"].shape[1])
        seed = request.options.get("seed")
        on_cuda = self.device.type == "cuda"
        if on_cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        # Sampling with a seed must not disturb the user's global RNG state.
        rng = torch.random.fork_rng(devices=[self.device] if on_cuda else []) if seed is not None else None
        try:
            with rng or contextlib.nullcontext(), torch.inference_mode():
                if seed is not None:
                    torch.manual_seed(seed)
                return self.model.generate(**inputs, streamer=streamer, **kwargs)
        except torch.OutOfMemoryError:
            pass
        # Raised outside the except block, so the OOM error and the frames holding the
        # KV cache and activations are released before the cached memory is returned.
        kwargs.clear()
        if self._prefix is not None:
            self._prefix.drop()
        if on_cuda:
            torch.cuda.empty_cache()
        raise GenerationError(
            f"Out of memory while generating on {self.device}. Lower max_length or the batch size, "
            "or load the model with quantization_config={'load_in_4bit': True}."
        )

    def _result(self, request: EngineRequest, output: torch.Tensor, watch: StepWatch, reused: int = 0) -> EngineResult:
        seconds = time.perf_counter() - watch.started
        width = max(len(ids) for ids in request.token_ids)
        completions = []
        for row, (ids, budget) in enumerate(zip(output.tolist(), request.budgets, strict=True)):
            # Cut each row where it ended (a finished row of a batch is padded after that), and to
            # its own budget, so a batch item equals its single-prompt result.
            new_ids = ids[width:]
            kept, reason = watch.ended.get(row, (None, None)) if watch.per_row else self._beam_end(new_ids)
            new_ids = new_ids[: min(kept if kept is not None else budget, budget)]
            if reason is None or (kept is not None and kept > budget):
                early = STOPPED if watch.stopped else CRITERION  # Stop, or one of the caller's own criteria
                reason = LENGTH if len(new_ids) >= budget else early
            text = self.tokenizer.decode(new_ids, skip_special_tokens=True)
            completions.append(Completion(text, len(new_ids), reason, new_ids))
        first = watch.first_token_at - watch.started if watch.first_token_at is not None else None
        peak = torch.cuda.max_memory_allocated(self.device) if self.device.type == "cuda" else None
        return EngineResult(completions, seconds, first, peak_gpu_memory=peak, prompt_tokens_reused=reused)

    def _beam_end(self, new_ids: list[int]) -> tuple[int | None, str | None]:
        """Where a beam-search result ended: its rows are beams while it runs, so the output tells."""
        for position, token_id in enumerate(new_ids):
            if token_id in self._eos_ids:
                return position + 1, END_OF_TEXT  # what follows is padding
        return None, None

    def _warm_up_generate(self, prompt: str, **lengths: int) -> None:
        """The ``generate`` that ``FastDecode.warm_up`` calls, on this engine directly."""
        options = {"min_new_tokens": lengths.get("min_new_tokens", 1)}
        ids = self.tokenizer(prompt)["input_ids"]
        self._generate_here(EngineRequest([prompt], [ids], [lengths.get("max_new_tokens", 4)], options))
