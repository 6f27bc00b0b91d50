"""Device and dtype selection: CUDA, then MPS, then CPU, with errors that list what exists."""

from __future__ import annotations

import torch

DTYPE_NAMES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def available_devices() -> list[str]:
    """Names of the devices torch can use in this process, best first."""
    names = [f"cuda:{i}" for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    if _mps_available():
        names.append("mps")
    names.append("cpu")
    return names


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(device: str | int | torch.device | None) -> torch.device:
    """Turn the user's ``device`` argument into a ``torch.device`` that exists.

    ``None`` picks CUDA, then MPS, then CPU. An int means that CUDA index.
    """
    if device is None:
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if isinstance(device, bool) or not isinstance(device, (str, int, torch.device)):
        raise TypeError(
            f"device must be a string like 'cpu' or 'cuda:0', an int, a torch.device or None, "
            f"not {type(device).__name__} ({device!r})."
        )
    try:
        parsed = torch.device("cuda", device) if isinstance(device, int) else torch.device(device)
    except (RuntimeError, ValueError):
        raise ValueError(
            f"Unknown device {device!r}. Devices here: {', '.join(available_devices())}. "
            "Pass one of them, or device=None to pick the best one."
        ) from None
    _check_exists(parsed, device)
    if parsed.type == "cuda" and parsed.index is None:
        parsed = torch.device("cuda", torch.cuda.current_device())
    return parsed


def _check_exists(parsed: torch.device, asked: object) -> None:
    here = available_devices()
    if parsed.type == "cpu":
        return
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count and (parsed.index is None or 0 <= parsed.index < count):
            return
    elif parsed.type == "mps" and _mps_available():
        return
    raise ValueError(
        f"Device {asked!r} is not available in this process. Devices here: {', '.join(here)}. "
        "Pass one of them, or device=None to pick the best one."
    )


def cpu_prefers_bfloat16() -> bool:
    """Whether bf16 decodes faster than fp32 on this CPU.

    Decoding a small model is bound by memory bandwidth, so halving the bytes per
    weight pays off as soon as the CPU converts bf16 in vector registers: AVX2 or
    better on x86 (benchmarks/run.py measures it). On aarch64 torch reports "DEFAULT"
    even with NEON, so such machines get float32 until a measurement says otherwise.
    """
    capability = torch.backends.cpu.get_cpu_capability()
    return capability not in ("DEFAULT", "NO AVX", "")


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """Pick the dtype to load weights in. ``"auto"`` or ``None`` chooses by device."""
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPE_NAMES.values():
            raise ValueError(f"dtype {dtype} is not supported; use torch.float32, bfloat16 or float16.")
        return dtype
    if dtype is None or dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if device.type == "mps":
            return torch.float16
        return torch.bfloat16 if cpu_prefers_bfloat16() else torch.float32
    if not isinstance(dtype, str):
        raise TypeError(f"dtype must be 'auto', a dtype name or a torch.dtype, not {type(dtype).__name__}.")
    if dtype not in DTYPE_NAMES:
        raise ValueError(f"Unknown dtype {dtype!r}. Use 'auto', 'float32', 'bfloat16' or 'float16'.")
    return DTYPE_NAMES[dtype]
