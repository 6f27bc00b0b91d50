"""Import the quantization backends without their start-up noise, and ask what their CPU kernels can do.

Each message dropped below is known, says nothing a user can act on, and is re-logged at
DEBUG on the ``hfllm_nb`` logger so it stays findable.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import logging
from collections.abc import Iterator

import torch

logger = logging.getLogger("hfllm_nb")

# (logger name, text the message contains, why it is safe to drop)
_KNOWN_NOISE = (
    (
        # bitsandbytes tries an optional kernel that the `kernels` package would download from the
        # Hugging Face Hub at run time (not usable offline). Without it, bitsandbytes uses the 4-bit
        # AVX512-BF16 kernel it ships, which is the one benchmarks/ measures.
        "bitsandbytes.backends.cpu.ops",
        "gemm_4bit_forward from kernels-community",
        "bitsandbytes: optional Hub kernel not installed; its bundled CPU kernel is used",
    ),
    (
        # torchao's wheel ships CUDA-only extensions (mxfp8, CUTLASS for sm90a) that cannot load
        # into a CPU build of torch; no CPU feature needs them.
        "torchao",
        "Failed to load ",
        "torchao: a CUDA-only extension did not load into this CPU build of torch",
    ),
    (
        # torchao's GPU int-matmul kernels are written in Triton, which CPU builds of torch lack.
        "torchao.kernel.intmm",
        "Detected no triton",
        "torchao: no Triton (GPU kernels only) in this CPU build of torch",
    ),
    (
        # A deprecation aimed at torchao's authors (it registers Enums with torch's pytree).
        "torch.utils._pytree",
        "is an Enum subclass and is now natively supported",
        "torch: pytree deprecation notice raised while importing torchao",
    ),
)


class _DropKnown(logging.Filter):
    """Drops one known message, re-logging it at DEBUG on our logger."""

    def __init__(self, marker: str, summary: str) -> None:
        super().__init__()
        self.marker, self.summary = marker, summary

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if self.marker not in message:
            return True
        logger.debug("%s (%s)", self.summary, message[:200])
        return False


@contextlib.contextmanager
def quiet_backend_imports() -> Iterator[None]:
    """Drop the known start-up messages of bitsandbytes and torchao (and re-log them at DEBUG) while open.

    transformers imports torchao as soon as its model code loads, when torchao is installed:
    wrap that first import too.
    """
    cuda_build = torch.version.cuda is not None  # there, torchao's CUDA extensions matter
    added = []
    for name, marker, summary in _KNOWN_NOISE:
        if name.startswith("torchao") and cuda_build:
            continue
        target, drop = logging.getLogger(name), _DropKnown(marker, summary)
        target.addFilter(drop)
        added.append((target, drop))
    try:
        yield
    finally:
        for target, drop in added:
            target.removeFilter(drop)


def import_quietly(package: str) -> object:
    """``importlib.import_module(package)`` with the known start-up messages moved to DEBUG."""
    with quiet_backend_imports():
        return importlib.import_module(package)


@functools.cache
def bnb_has_fused_cpu_4bit() -> bool:
    """Whether bitsandbytes has its fused 4-bit CPU kernel here (it needs AVX512-BF16)."""
    functional = import_quietly("bitsandbytes.functional")
    return bool(functional.has_avx512bf16())
