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


# CPU flags (as Linux's /proc/cpuinfo spells them) that mean bf16 matmuls run in hardware.
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
# The first CUDA compute capability with bf16 tensor cores (Ampere, sm 8.0); T4 is 7.5, V100 7.0.
CUDA_BF16_CAPABILITY = (8, 0)


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> frozenset[str]:
    """This CPU's feature flags, from Linux's cpuinfo; elsewhere, the bf16 ones torch's cpuinfo detects."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as info:
            for line in info:
                if line.split(":")[0].strip() in ("flags", "Features"):  # x86 / aarch64
                    return frozenset(line.partition(":")[2].split())
    except OSError:
        pass
    probes = {"avx512_bf16": "_is_avx512_bf16_supported", "amx_bf16": "_is_amx_tile_supported"}
    return frozenset(flag for flag, probe in probes.items() if getattr(torch.cpu, probe, lambda: False)())


def cpu_prefers_bfloat16(flags: frozenset[str] | None = None) -> bool:
    """Whether bf16 is the faster dtype on this CPU: only with bf16 in hardware (AVX512-BF16 or AMX).

    Without them (plain AVX2 or AVX-512, any aarch64 so far) every bf16 matmul converts to fp32
    in software: a 1000-token prompt prefilled ~4× slower than in float32 on a 2-core AVX2 machine
    (issue 28), for a ~13 % faster decode. So those CPUs get float32; ``benchmarks/cost.py`` measures it.
    """
    return bool(NATIVE_BF16_FLAGS & (cpu_flags() if flags is None else flags))


def cuda_prefers_bfloat16(device: torch.device) -> bool:
    """bf16 from compute capability 8.0 (A100, H100, RTX 30xx); below, float16.

    Not ``torch.cuda.is_bf16_supported()``: it says True on a T4 (sm 7.5), where bf16 is
    emulated and float16 runs on the tensor cores.
    """
    return torch.cuda.get_device_capability(device) >= CUDA_BF16_CAPABILITY


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """Pick the dtype to load weights in. ``"auto"`` or ``None`` chooses by device.

    CUDA: bfloat16 from compute capability 8.0, float16 below. MPS: float16. CPU: bfloat16 with
    AVX512-BF16 or AMX, float32 otherwise.
    """
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPE_NAMES.values():
            raise ValueError(f"dtype {dtype} is not supported; use torch.float32, bfloat16 or float16.")
        return dtype
    if dtype is None or dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if cuda_prefers_bfloat16(device) else torch.float16
        if device.type == "mps":
            return torch.float16
        return torch.bfloat16 if cpu_prefers_bfloat16() else torch.float32
    if not isinstance(dtype, str):
        raise TypeError(f"dtype must be 'auto', a dtype name or a torch.dtype, not {type(dtype).__name__}.")
    if dtype not in DTYPE_NAMES:
        raise ValueError(f"Unknown dtype {dtype!r}. Use 'auto', 'float32', 'bfloat16' or 'float16'.")
    return DTYPE_NAMES[dtype]
