"""Kept for `from hfllm_nb.memory import ...` in code written against 0.1; it lives in core now."""

from .core.memory import (
    GPUMemory,
    HostMemory,
    MemoryPeak,
    MemorySnapshot,
    PeakTracker,
    format_bytes,
    read_gpus,
    read_host,
    read_memory,
)

__all__ = [
    "GPUMemory",
    "HostMemory",
    "MemoryPeak",
    "MemorySnapshot",
    "PeakTracker",
    "format_bytes",
    "read_gpus",
    "read_host",
    "read_memory",
]
