"""Turn a plain ``quantization_config`` dict into a checked plan: which backend, how to load, what to swap.

Backends: ``"torch"`` (int8 weight-only, torch's own CPU kernel, see ``cpu_quant``),
``"torchao"`` (int4 or int8 weight-only on CPU) and ``"bitsandbytes"`` (8-bit LLM.int8 and
4-bit NF4/FP4, any device). ``"auto"`` picks the fastest one measured for the device and bit
width (``benchmarks/quantization.py``); a ``"backend"`` key forces one.
"""

from __future__ import annotations

import importlib.util
import inspect
import logging
from dataclasses import dataclass, field
from typing import Any

import torch

from . import cpu_quant
from .quant_imports import import_quietly

logger = logging.getLogger("hfllm_nb")

EXTRA_INSTALL = "pip install 'hfllm-nb[quantization]'"
BACKENDS = ("auto", "torch", "torchao", "bitsandbytes")
GROUP_SIZES = (32, 64, 128, 256)
# Keys of ours; every other valid key is a BitsAndBytesConfig field.
_OWN_KEYS = {"load_in_8bit", "load_in_4bit", "backend", "group_size", "quantize_lm_head"}
# Which backend honours which option besides the bit width.
_HONOURS = {
    "torch": {"quantize_lm_head"},
    "torchao": {"quantize_lm_head", "group_size"},
    "bitsandbytes": {"quantize_lm_head"},
}
# Backends that only run on the CPU here (their kernels are CPU kernels).
_CPU_ONLY = ("torch", "torchao")
# 4-bit group size when the config sets none. The default model comes from a Q4_1 GGUF (4-bit,
# a scale and a minimum per block of 32): groups of 32 find that grid again (KL from bf16 ≤ 0.03),
# groups of 64 straddle two blocks (KL up to 1.5). Finer groups cost 1/16 byte per weight more.
DEFAULT_GROUP_SIZE = 32


@dataclass
class QuantizationPlan:
    """What a validated ``quantization_config`` means for one load.

    Attributes:
        label: short description for repr and benchmarks, e.g. "8-bit weight-only (torch)".
        backend, bits: the chosen backend and bit width.
        from_pretrained_config: ``quantization_config=`` for ``from_pretrained`` (None when post-load).
        load_dtype: dtype to load the weights in before ``after_load``.
        compilable: whether ``compile=True`` may combine with it.
        group_size: torchao 4-bit group size (None: ``DEFAULT_GROUP_SIZE``).
        quantize_lm_head: also make the output layer (and a tied embedding) int8.
    """

    label: str
    backend: str
    bits: int
    from_pretrained_config: Any = field(repr=False)
    load_dtype: torch.dtype
    compilable: bool
    group_size: int | None = None
    quantize_lm_head: bool = False

    def after_load(self, model: torch.nn.Module) -> None:
        """Swap layers for this backend in place; log once which layers stayed unquantized and why."""
        with torch.no_grad():  # no autograd records while rewriting weights
            skipped = self._swap(model)
        _report_unquantized(model, skipped, head_kept=not self.quantize_lm_head)

    def _swap(self, model: torch.nn.Module) -> dict[str, str]:
        skipped: dict[str, str] = {}
        if self.backend == "torch":
            skipped = cpu_quant.quantize_int8(model, torch.bfloat16)
        elif self.backend == "torchao" and self.bits == 8:
            _quantize_torchao_int8(model)
        elif self.backend == "torchao":
            model.to(torch.bfloat16)  # a no-op after a load in load_dtype; the int4 kernel takes bf16 only
            skipped = cpu_quant.quantize_int4_torchao(model, self.group_size or DEFAULT_GROUP_SIZE)
        if self.quantize_lm_head:
            skipped.update(cpu_quant.quantize_head_int8(model, torch.bfloat16))
        return skipped


def plan_quantization(
    config: dict[str, Any] | Any | None, *, dtype: torch.dtype, device: torch.device
) -> QuantizationPlan | None:
    """Check ``config`` before anything loads and choose the backend.

    Args:
        config: ``None``, a dict such as ``{"load_in_8bit": True}`` (keys: ``load_in_8bit`` /
            ``load_in_4bit``, ``backend``, ``group_size``, ``quantize_lm_head``, and any
            ``BitsAndBytesConfig`` field), or a ``BitsAndBytesConfig``.
        dtype: the model's resolved dtype; device: where it will run.

    >>> plan_quantization({"load_in_8bit": True}, dtype=torch.bfloat16, device=torch.device("cpu")).label
    '8-bit weight-only (torch)'
    """
    if config is None:
        return None
    options = _as_options(config)
    bits = _bits(options)
    backend = options.pop("backend", "auto")
    if backend not in BACKENDS:
        raise ValueError(
            f"quantization_config['backend'] must be one of {', '.join(map(repr, BACKENDS))}, not {backend!r}."
        )
    bnb_keys = sorted(k for k in options if k not in _OWN_KEYS)
    if backend == "auto":
        backend = _auto_backend(bits, device, wants_bnb=bool(bnb_keys))
    _check_honoured(backend, bits, device, options, bnb_keys)
    if backend == "bitsandbytes":
        return _bitsandbytes_plan(options, bits, dtype, device)
    group_size = _check_group_size(options.get("group_size"))
    head = options.get("quantize_lm_head", True)
    if not isinstance(head, bool):
        raise TypeError(f"quantization_config['quantize_lm_head'] must be True or False, not {head!r}.")
    _require(backend)
    if backend == "torch":
        label, load_dtype = "8-bit weight-only (torch)", dtype
    elif bits == 8:
        label, load_dtype = "8-bit weight-only (torchao)", torch.bfloat16
    else:
        group = group_size or DEFAULT_GROUP_SIZE
        label, load_dtype = f"4-bit weight-only in groups of {group} (torchao)", torch.bfloat16
    return QuantizationPlan(
        label=label + (" + 8-bit head" if head and backend == "torchao" and bits == 4 else ""),
        backend=backend,
        bits=bits,
        from_pretrained_config=None,
        load_dtype=load_dtype,
        compilable=True,
        group_size=group_size,
        quantize_lm_head=head,
    )


def footprint_bytes(model: torch.nn.Module) -> int:
    """Bytes held by the model's parameters and buffers, quantized tensors counted as stored.

    ``model.get_memory_footprint()`` multiplies element counts by the element size, which is
    wrong for tensor subclasses (torchao reports int4 weights at bfloat16 size). Here each
    storage counts once, so tied and shared matrices are not counted twice.
    """
    seen: set[int] = set()
    total = 0
    for tensor in [*model.parameters(), *model.buffers()]:
        for leaf in cpu_quant.tensor_leaves(tensor):
            if leaf.device.type == "meta":
                continue  # offloaded to disk: not in memory
            storage = leaf.untyped_storage()
            if storage.data_ptr() not in seen:
                seen.add(storage.data_ptr())
                total += storage.nbytes()
    return total


# ----------------------------------------------------------------------------- checks


def _as_options(config: Any) -> dict[str, Any]:
    from transformers import BitsAndBytesConfig

    if isinstance(config, BitsAndBytesConfig):
        options = {k: v for k, v in config.to_dict().items() if k in _bnb_keys()}
        return {**options, "backend": "bitsandbytes"}
    if not isinstance(config, dict):
        raise TypeError(
            f"quantization_config must be a dict such as {{'load_in_4bit': True}}, not {type(config).__name__}."
        )
    valid = _OWN_KEYS | _bnb_keys()
    unknown = sorted(str(k) for k in config if k not in valid)
    if unknown:
        raise ValueError(
            f"Unknown quantization_config key(s): {', '.join(unknown)}. Valid keys: {', '.join(sorted(valid))}."
        )
    return dict(config)


def _bits(options: dict[str, Any]) -> int:
    four, eight = options.get("load_in_4bit", False), options.get("load_in_8bit", False)
    for name, flag in (("load_in_4bit", four), ("load_in_8bit", eight)):
        if not isinstance(flag, bool):
            raise TypeError(f"quantization_config[{name!r}] must be True or False, not {flag!r}.")
    if four and eight:
        raise ValueError(
            "quantization_config asks for both 4-bit and 8-bit; choose one of load_in_4bit or load_in_8bit."
        )
    if not (four or eight):
        raise ValueError("quantization_config needs load_in_4bit=True or load_in_8bit=True.")
    return 4 if four else 8


def _auto_backend(bits: int, device: torch.device, *, wants_bnb: bool) -> str:
    """The backend measured best for this device and bit width that can honour the options.

    On CPU, 8-bit: torch's int8 kernel (bitsandbytes' LLM.int8 decodes slower than float32).
    4-bit: torchao's int4 in groups of 32, which decoded faster than bitsandbytes' NF4 in
    ``benchmarks/run.py`` and stays far closer to bf16 (see ``DEFAULT_GROUP_SIZE``); on CPUs
    without AVX512-BF16, bitsandbytes 4-bit also dequantizes every matrix on every call.
    """
    if wants_bnb or device.type != "cpu":
        return "bitsandbytes"
    if bits == 8:
        return "torch"
    return "torchao" if _installed("torchao") or not _installed("bitsandbytes") else "bitsandbytes"


def _check_honoured(backend: str, bits: int, device: torch.device, options: dict[str, Any], bnb_keys: list[str]):
    if backend in _CPU_ONLY and device.type != "cpu":
        raise ValueError(
            f"quantization_config backend {backend!r} runs on the CPU only, not on {device.type}: "
            "use backend='bitsandbytes' there (the default)."
        )
    if backend == "torch" and bits == 4:
        raise ValueError(
            "quantization_config backend 'torch' has 8-bit only; for load_in_4bit use backend='torchao' "
            "or 'bitsandbytes' (or leave backend out)."
        )
    honoured = _HONOURS.get(backend, set())
    foreign = [k for k in options if k in _OWN_KEYS - {"load_in_8bit", "load_in_4bit"} and k not in honoured]
    if backend == "torch" and "group_size" in options:
        foreign = ["group_size"]
    if backend != "bitsandbytes":
        foreign += bnb_keys
    if backend == "torchao" and bits == 8 and "group_size" in options:
        foreign.append("group_size")
    if foreign:
        raise ValueError(
            f"quantization_config key(s) {', '.join(sorted(set(foreign)))} cannot be honoured by the "
            f"{backend!r} backend with {bits}-bit weights. Drop them, or choose a backend that has them "
            "(group_size: 'torchao' 4-bit; bnb_* and llm_int8_*: 'bitsandbytes')."
        )


def _check_group_size(group_size: Any) -> int | None:
    if group_size is None:
        return None
    if isinstance(group_size, bool) or not isinstance(group_size, int):
        raise TypeError(f"quantization_config['group_size'] must be an int such as 64, not {group_size!r}.")
    if group_size not in GROUP_SIZES:
        raise ValueError(
            f"quantization_config['group_size'] must be one of {', '.join(map(str, GROUP_SIZES))}, not {group_size}."
        )
    return group_size


def _bitsandbytes_plan(options: dict[str, Any], bits: int, dtype: torch.dtype, device: torch.device):
    from transformers import BitsAndBytesConfig

    head = options.pop("quantize_lm_head", device.type == "cpu")
    if not isinstance(head, bool):
        raise TypeError(f"quantization_config['quantize_lm_head'] must be True or False, not {head!r}.")
    if head and device.type != "cpu":
        raise ValueError(
            f"quantization_config['quantize_lm_head']=True is CPU-only with bitsandbytes (its int8 head uses "
            f"torch's CPU kernel); drop it on {device.type}."
        )
    _require("bitsandbytes")
    if bits == 4:
        options.setdefault("bnb_4bit_compute_dtype", dtype)
        # NF4 fits normally distributed weights better than BitsAndBytesConfig's default FP4, at the same speed.
        kind = options.setdefault("bnb_4bit_quant_type", "nf4")
        label = f"4-bit {kind} (bitsandbytes)"
    else:
        label = "8-bit LLM.int8 (bitsandbytes)"
    return QuantizationPlan(
        label=label + (" + 8-bit head" if head else ""),
        backend="bitsandbytes",
        bits=bits,
        from_pretrained_config=BitsAndBytesConfig(**options),
        load_dtype=dtype,
        compilable=False,
        quantize_lm_head=head,
    )


def _require(backend: str) -> None:
    """Fail now, naming what to install, if the backend's package is missing."""
    if backend == "torch":
        if not hasattr(torch.ops.aten, "_weight_int8pack_mm"):
            raise ImportError(f"backend 'torch' needs torch>=2.4 (found {torch.__version__}): pip install -U torch")
        return
    if not _installed(backend):
        raise ImportError(
            f"Quantization with backend {backend!r} needs the {backend} package. Install it with: "
            f"{EXTRA_INSTALL} (or pip install {backend})."
        )
    import_quietly(backend)
    if backend == "torchao":  # the modules after_load uses: imported now, so their start-up messages are ours
        import_quietly("torchao.quantization")
        import_quietly("torchao.prototype.quantization.int4.inference_workflow")


def _installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


def _bnb_keys() -> set[str]:
    from transformers import BitsAndBytesConfig

    params = inspect.signature(BitsAndBytesConfig.__init__).parameters
    return {name for name, p in params.items() if name != "self" and p.kind is p.POSITIONAL_OR_KEYWORD}


# ----------------------------------------------------------------------------- applying


def _quantize_torchao_int8(model: torch.nn.Module) -> None:
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    quantize_(model, Int8WeightOnlyConfig(), filter_fn=lambda m, _: isinstance(m, torch.nn.Linear) and m is not head)


def _report_unquantized(model: torch.nn.Module, skipped: dict[str, str], *, head_kept: bool) -> None:
    """One warning naming every layer left in floating point by shape; the kept head only at INFO."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    head_names = {n for n, m in model.named_modules() if m is head} if head_kept else set()
    left = [n for n in cpu_quant.unquantized_linears(model) if n not in head_names]
    reasons: dict[str, list[str]] = {}
    for name in left:
        reasons.setdefault(skipped.get(name, "no quantized layout for this layer"), []).append(name)
    if reasons:
        logger.warning(
            "Quantization left %d layer(s) in floating point: %s.",
            len(left),
            "; ".join(f"{cpu_quant.describe(names)} ({why})" for why, names in reasons.items()),
        )
    if head_names:
        logger.info("The output layer %s stays in floating point (quantize_lm_head=False).", ", ".join(head_names))
