"""Opt-in fast decoding: a static KV cache and a ``torch.compile``'d decode step.

transformers' ``generate`` compiles the one-token forward itself when the cache is
static and ``compile_config`` allows the device. This module chooses those settings, keeps
static caches sized in power-of-two buckets (a short prompt after a long one decodes over a
short cache again: transformers alone never shrinks it), and warms the graph up once, at load
time instead of on the first call.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from typing import Any

import torch

logger = logging.getLogger("hfllm_nb")

# Smallest static cache, in tokens: short chats share one size, and attention over
# this many slots costs little next to reading the weights.
MIN_CACHE_LENGTH = 256
# Caches kept for reuse (most recently used first out last): the sizes a session goes back and forth between.
_KEPT_CACHES = 3
# A prompt and budget that make generate run the compiled decode step at least twice.
_WARM_UP_PROMPT = "Hello"
_WARM_UP_TOKENS = 4


def check_compile(compile: Any, plan: Any) -> bool:
    """Validate the ``compile`` argument against the quantization plan, before anything loads.

    ``plan`` is a ``_quantization.QuantizationPlan`` or None. torch's int8 layers and torchao's
    int4 tensors compile; bitsandbytes layers do not.
    """
    if not isinstance(compile, bool):
        raise TypeError(f"compile must be True or False, not {compile!r}.")
    if compile and plan is not None and not getattr(plan, "compilable", False):
        backend = getattr(plan, "backend", "bitsandbytes")
        raise ValueError(
            f"compile=True does not work with quantization_config backend {backend!r} ({plan.label}): "
            "its layers cannot be compiled. Drop one of the two, or on CPU use backend='torch' (8-bit) "
            "or backend='torchao' (4-bit), which compile."
        )
    return compile


def keep_layer_type_guards(guards: list[Any]) -> list[bool]:
    """Dynamo guard filter: which guards to keep for the compiled decode step.

    Without CUDA graphs every step re-checks one guard per parameter of every layer: ~3 ms of a
    ~20 ms step for the compiled 4-bit default model. Those on torch's own modules (``nn.Linear``, norms)
    are dropped: a loaded model's weights keep their shapes and dtypes. Type and identity guards
    stay, so another model of the same class (a float model after an 8-bit one, each with its own
    layer types) compiles its own graph instead of reusing this one.
    """
    kept = ("TYPE_MATCH", "ID_MATCH")
    return [g.guard_type in kept or not g.orig_guard.source.is_unspecialized_builtin_nn_module() for g in guards]


def compile_config(device: torch.device) -> Any:
    """The ``CompileConfig`` for ``device``: CUDA graphs on CUDA, plain inductor elsewhere.

    Shapes stay static (``dynamic=False``): one graph per batch size and cache size, each compiled
    on first use. With torch's automatic dynamic shapes the second cache size recompiled the step
    into one dynamic graph that then served every size, 2.9× slower for short prompts (tiny model,
    ad-hoc script): the very slowdown the per-size caches exist to avoid.
    """
    from transformers import CompileConfig

    if device.type == "cuda":
        return CompileConfig(dynamic=False)  # transformers' default otherwise: inductor, mode="reduce-overhead"
    # "reduce-overhead" means CUDA graphs, which do not exist here; the guard filter is why
    # options (torch.compile takes a mode or options, not both; its default mode is "default").
    if hasattr(torch.compiler, "skip_guard_on_inbuilt_nn_modules_unsafe"):  # a torch with guard filters
        config = CompileConfig(mode=None, dynamic=False, options={"guard_filter_fn": keep_layer_type_guards})
    else:
        config = CompileConfig(mode="default", dynamic=False)
    # generate only auto-compiles on accelerators unless told otherwise.
    config._compile_all_devices = True
    return config


# The attention that ``use_fused_decode_attention`` registers with transformers.
DECODE_ATTENTION = "hfllm_nb_sdpa_fused_decode"


def _sdpa_with_math_decode_steps(module: Any, query: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
    """transformers' SDPA attention, except that one-token steps use SDPA's math form.

    Compiled on a CPU, the math form becomes a few small matmuls that Inductor fuses with the
    masking and softmax; the flash kernel costs ~0.15 ms per layer per step over a static cache,
    a quarter of a 4-bit decode step of the default model (the benchmark's quantization section
    has both rows). Prompts (many query tokens) keep the flash kernel, which is faster on long ones.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if query.shape[2] != 1:
        return sdpa_attention_forward(module, query, *args, **kwargs)
    with sdpa_kernel(SDPBackend.MATH):
        return sdpa_attention_forward(module, query, *args, **kwargs)


def use_fused_decode_attention(model: Any, device: torch.device, requested: Any) -> bool:
    """Switch a compiled CPU model from "sdpa" to ``DECODE_ATTENTION``; True if it did.

    Left alone: accelerators (CUDA graphs already remove the per-step cost), models that do
    not use SDPA, and any ``attn_implementation`` the user asked for.
    """
    if device.type != "cpu" or requested is not None:
        return False
    if getattr(model.config, "_attn_implementation", None) != "sdpa":
        return False
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    # transformers' documented extension point; SDPA's masks fit both branches.
    AttentionInterface.register(DECODE_ATTENTION, _sdpa_with_math_decode_steps)
    AttentionMaskInterface.register(DECODE_ATTENTION, sdpa_mask)
    try:
        model.set_attn_implementation(DECODE_ATTENTION)
    except (ValueError, TypeError, AttributeError) as exc:  # a model that fixes its attention
        logger.debug("Kept SDPA attention for the compiled model: %s", exc)
        return False
    return model.config._attn_implementation == DECODE_ATTENTION


class FastDecode:
    """The ``generate`` settings for the fast path of one model, its static caches, and its warm-up.

    Args:
        device: where the model runs.
        context_length: the model's context; no cache is made longer than this.
        config: the model's config, which shapes the caches.
    """

    def __init__(self, device: torch.device, context_length: int, config: Any = None) -> None:
        self.config = config
        self.context_length = context_length
        self.compile_config = compile_config(device)
        self.compile_seconds: float | None = None
        self.caches: OrderedDict[tuple[int, int], Any] = OrderedDict()  # (batch, length) -> StaticCache
        self._shapes_seen: set[tuple[int, int]] = set()

    def cache_length(self, needed: int) -> int:
        """The static cache size for ``needed`` tokens: the next power of two ≥ 256.

        Few distinct sizes mean few compiled graphs (one per size and batch size, each compiled
        on its first use; torch's recompile limit, 8, bounds them, past which it runs uncompiled
        and says so); each call gets the smallest size that fits it.
        """
        size = MIN_CACHE_LENGTH
        while size < needed:
            size *= 2
        return max(min(size, self.context_length), needed)

    def options(self, batch: int, prompt_width: int, new_tokens: int) -> dict[str, Any]:
        """``generate`` keywords for a call of ``batch`` prompts ``prompt_width`` tokens wide."""
        return {
            "cache": self._cache(batch, self.cache_length(prompt_width + new_tokens)),
            "compile_config": self.compile_config,
        }

    def _cache(self, batch: int, length: int) -> Any:
        """A cleared static cache of this size: reused when this size was used lately, else a new one."""
        from transformers import StaticCache

        key = (batch, length)
        cache = self.caches.pop(key, None)
        if cache is None:
            if key not in self._shapes_seen and self._shapes_seen:
                logger.info(
                    "First call with %d prompt(s) and a %d-token cache: the decode step compiles for this "
                    "shape once (tens of seconds on a CPU); later calls of this shape reuse it.",
                    batch,
                    length,
                )
            cache = StaticCache(config=self.config, max_cache_len=length)
            while len(self.caches) >= _KEPT_CACHES:
                self.caches.popitem(last=False)  # the least recently used size
        else:
            with torch.inference_mode():  # its tensors were made inside generate's inference mode
                cache.reset()
        self._shapes_seen.add(key)
        self.caches[key] = cache
        return cache

    def warm_up(self, generate: Any) -> float:
        """Compile the decode step now by calling ``generate(prompt, **kwargs)`` once.

        Other batch sizes and cache sizes compile their own graph on their first call.
        """
        started = time.perf_counter()
        generate(_WARM_UP_PROMPT, max_new_tokens=_WARM_UP_TOKENS, min_new_tokens=_WARM_UP_TOKENS)
        self.compile_seconds = time.perf_counter() - started
        logger.info("Compiled the decode step in %.1f s.", self.compile_seconds)
        return self.compile_seconds
