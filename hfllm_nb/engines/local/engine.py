"""The in-process engine: a transformers model on this machine's CPU or GPU."""

from __future__ import annotations

import contextlib
import gc
import logging
import threading
import time
from collections.abc import Callable, Generator
from typing import Any, TypeVar

import torch

from ...core.requests import LENGTH, STOPPED, Completion, EngineRequest, EngineResult, StopSignal
from ...errors import GenerationError
from . import device as _device
from . import fast_decode, model_thread
from . import loading as _loading
from .hooks import StepWatch, TextEmitter
from .prefix_cache import PrefixCache

logger = logging.getLogger("hfllm_nb")

T = TypeVar("T")

# Used when neither the config nor the tokenizer gives a believable context length.
FALLBACK_CONTEXT = 2048


class LocalEngine:
    """Loads a causal LM with transformers and generates with ``model.generate``.

    Args:
        source: where the weights come from (``_loading.resolve_source``).
        device: a resolved ``torch.device``; ignored when ``device_map`` is given.
        dtype: the user's dtype argument ("auto", a name or a torch.dtype).
        quantization_config: the user's dict (see ``_quantization.plan_quantization``).
        device_map, trust_remote_code, compile, load_kwargs: as ``HuggingFaceLLM`` documents them.
    """

    def __init__(
        self,
        source: _loading.ModelSource,
        *,
        device: torch.device,
        dtype: Any,
        quantization_config: Any,
        device_map: Any,
        trust_remote_code: bool,
        compile: bool,
        load_kwargs: dict[str, Any],
    ) -> None:
        # Everything torch does for this model happens on one thread, loading included (see model_thread).
        self._close_lock, self._released = threading.Lock(), False
        self._thread = model_thread.acquire()
        settings = (device, dtype, quantization_config, device_map, trust_remote_code, compile, load_kwargs)
        try:
            self._thread.call(lambda: self._load(source, *settings))
        except BaseException:
            model_thread.release(self._thread)
            raise

    def _load(
        self,
        source: _loading.ModelSource,
        device: torch.device,
        dtype: Any,
        quantization_config: Any,
        device_map: Any,
        trust_remote_code: bool,
        compile: bool,
        load_kwargs: dict[str, Any],
    ) -> None:
        """Load, quantize and warm up the model: on the model thread, like every later torch op."""
        self.dtype = _device.resolve_dtype(dtype, device)
        plan = None
        if quantization_config is not None:
            from .quantization import plan_quantization

            plan = plan_quantization(quantization_config, dtype=self.dtype, device=device)
        fast_decode.check_compile(compile, plan)
        self.quantization = plan
        self.model, self.tokenizer = _loading.load_model_and_tokenizer(
            source,
            dtype=plan.load_dtype if plan is not None else self.dtype,
            # Loading straight onto the device avoids a CPU copy; quantized weights must never be .to()'d.
            device_map=device_map if device_map is not None else {"": str(device)},
            quantization=plan.from_pretrained_config if plan is not None else None,
            trust_remote_code=trust_remote_code,
            load_kwargs=load_kwargs,
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
        self._fast = fast_decode.FastDecode(self.device, self.context_length, self.model.config) if compile else None
        # compile=True bypasses prefix reuse: its static caches are sized per call and reset before each one.
        # 16-bit weights too: there the reused keys and values round differently from a fresh prefill's,
        # and a 10-turn bfloat16 chat gave another greedy reply in 4 turns of 10 (benchmarks/cost.py).
        reuse = not compile and self.dtype == torch.float32 and PrefixCache.supported(self.model)
        self._prefix = PrefixCache(self.model) if reuse else None
        if self._fast is not None:
            fast_decode.use_fused_decode_attention(self.model, self.device, load_kwargs.get("attn_implementation"))
            self._fast.warm_up(self._warm_up_generate)

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
        return self._thread.call(lambda: self._generate_here(request), request.stop)

    def stream(self, request: EngineRequest) -> Generator[str, None, EngineResult]:
        """Text pieces as the model thread produces them; closing this stops generation within a step."""
        return (yield from self._thread.stream(lambda emit: self._generate_here(request, emit), request.stop))

    def close(self) -> None:
        """Free the weights on the model thread (after any queued job); the last model ends the thread."""
        if self._thread.is_current():
            raise GenerationError("close() cannot run inside a generation callback; call it after the run ends.")
        with self._close_lock:
            if self._released:
                return
            self._released = True
        self._thread.call(self._free)
        model_thread.release(self._thread)

    # ----------------------------------------------------------------- look-inside views

    def run(self, fn: Callable[[Any, Any], T], stop: StopSignal | None = None) -> T:
        """``fn(model, tokenizer)`` on the model thread, for views that run forward passes of their own."""
        return self._thread.call(lambda: fn(self._view_model(), self.tokenizer), stop)

    def run_stream(self, fn: Callable[..., T], stop: StopSignal) -> Generator[Any, None, T]:
        """``fn(model, tokenizer, emit, stop)`` on the model thread; yields what it emits."""
        return (yield from self._thread.stream(lambda emit: fn(self._view_model(), self.tokenizer, emit, stop), stop))

    @property
    def cached_prefix(self) -> tuple[int, int]:
        """Tokens and bytes of the KV cache kept for the next call's prompt (0, 0 when none is kept)."""
        prefix = self.__dict__.get("_prefix")
        return (prefix.tokens, prefix.nbytes) if prefix is not None else (0, 0)

    def forget_prefix(self) -> None:
        """Drop the kept KV cache (e.g. after changing the model in a way its weights do not show)."""
        self._thread.call(lambda: self._prefix.drop() if self._prefix is not None else None)

    def decode_options(self, batch: int, prompt_width: int, new_tokens: int) -> dict[str, Any]:
        """This engine's own generate settings (compile=True: static cache, compiled step); model thread only."""
        return self._fast.options(batch, prompt_width, new_tokens) if self._fast is not None else {}

    def in_model_thread(self) -> bool:
        """True inside a running job (a streamer or stopping-criterion callback): calls from here must fail."""
        return self._thread.is_current()

    # ----------------------------------------------------------------- internals

    def _model(self) -> Any:
        model = self.__dict__.get("model")
        if model is None:
            raise GenerationError("This model was closed; load it again with HuggingFaceLLM(...).")
        return model

    def _view_model(self) -> Any:
        """The model, for a view's own forward passes: those may hook or alter it, so the kept prefix goes."""
        model = self._model()
        if self._prefix is not None:
            self._prefix.drop()
        return model

    def _free(self) -> None:
        model = self.__dict__.pop("model", None)
        self._fast = self._prefix = None
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
            kept, reason = watch.ended.get(row, (budget, None))
            new_ids = ids[width : width + min(kept, budget)]
            if reason is None or kept > budget:
                reason = LENGTH if len(new_ids) >= budget else STOPPED  # else: Stop, or a caller's criterion
            text = self.tokenizer.decode(new_ids, skip_special_tokens=True)
            completions.append(Completion(text, len(new_ids), reason, new_ids))
        first = watch.first_token_at - watch.started if watch.first_token_at is not None else None
        peak = torch.cuda.max_memory_allocated(self.device) if self.device.type == "cuda" else None
        return EngineResult(completions, seconds, first, peak_gpu_memory=peak, prompt_tokens_reused=reused)

    def _warm_up_generate(self, prompt: str, **lengths: int) -> None:
        """The ``generate`` that ``FastDecode.warm_up`` calls, on this engine directly."""
        options = {"min_new_tokens": lengths.get("min_new_tokens", 1)}
        ids = self.tokenizer(prompt)["input_ids"]
        self._generate_here(EngineRequest([prompt], [ids], [lengths.get("max_new_tokens", 4)], options))
