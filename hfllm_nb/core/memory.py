"""Memory readings as plain data: GPU (torch + NVML), process RSS and system RAM, and peaks.

No widgets here: ``MemoryMonitor`` (monitor.py) draws these readings; code can use them directly.
"""

from __future__ import annotations

import logging
import math
import numbers
import os
import threading
import time
from dataclasses import dataclass
from typing import Any

import psutil

try:  # nvidia-ml-py; a missing driver only shows up later, in nvmlInit()
    import pynvml
except ImportError:  # pragma: no cover - it is a dependency, but the readings do without it
    pynvml = None

logger = logging.getLogger("hfllm_nb")

_UNITS = ("KiB", "MiB", "GiB", "TiB", "PiB")


@dataclass(frozen=True)
class GPUMemory:
    """One CUDA device, in bytes. ``used``/``total`` come from NVML (all processes), or None."""

    index: int  # torch's index, as in "cuda:0"
    name: str
    allocated: int  # held by this process's tensors
    reserved: int  # held by torch's caching allocator (allocated + cache)
    used: int | None
    total: int | None

    @property
    def fraction(self) -> float | None:
        """Share of the device in use (0…1), or None when NVML could not tell."""
        if self.used is None or not self.total:
            return None
        return self.used / self.total

    @property
    def detail(self) -> str:
        """The numbers in words: "used 3.10 GiB / 80.00 GiB, allocated …, reserved …"."""
        parts = [
            f"allocated {format_bytes(self.allocated)}",
            f"reserved {format_bytes(self.reserved)}",
        ]
        if self.used is not None and self.total is not None:
            parts.insert(0, f"used {format_bytes(self.used)} / {format_bytes(self.total)}")
        return ", ".join(parts)

    def __str__(self) -> str:
        return f"GPU {self.index} ({self.name}): {self.detail}"


@dataclass(frozen=True)
class HostMemory:
    """This process's resident memory and the machine's RAM, in bytes."""

    rss: int
    used: int  # total - available: what other programs could not get right now
    total: int

    @property
    def fraction(self) -> float:
        return self.used / self.total if self.total else 0.0

    def __str__(self) -> str:
        return (
            f"Process RSS: {format_bytes(self.rss)}\n"
            f"System RAM: {format_bytes(self.used)} / {format_bytes(self.total)} used"
        )


@dataclass(frozen=True)
class MemorySnapshot:
    """Everything ``read_memory()`` saw at one moment; ``str()`` gives the readout text."""

    gpus: tuple[GPUMemory, ...]
    host: HostMemory

    def __str__(self) -> str:
        return "\n".join([*map(str, self.gpus), str(self.host)])


@dataclass(frozen=True)
class MemoryPeak:
    """The highest memory a ``PeakTracker`` saw, with the values when it started, in bytes."""

    rss: int
    rss_start: int
    gpu_allocated: tuple[int, ...]  # one per GPU, torch's index order
    gpu_allocated_start: tuple[int, ...]
    samples: int
    seconds: float

    def __str__(self) -> str:
        parts = [f"GPU {i} allocated {format_bytes(b)}" for i, b in enumerate(self.gpu_allocated)]
        parts.append(f"RSS {format_bytes(self.rss)} (+{format_bytes(max(self.rss - self.rss_start, 0))})")
        return ", ".join(parts)


def format_bytes(n: int) -> str:
    """A byte count with binary units: ``format_bytes(3 * 2**30) == '3.00 GiB'``."""
    if isinstance(n, bool) or not isinstance(n, numbers.Integral):
        raise TypeError(f"format_bytes takes an int number of bytes, not {type(n).__name__} ({n!r}).")
    if n < 0:
        raise ValueError(f"format_bytes takes a byte count ≥ 0, got {n}.")
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in _UNITS:
        value /= 1024
        if value < 1024 or unit == _UNITS[-1]:
            # Two decimals from GiB up: 0.01 GiB steps still show a model's growth.
            return f"{value:.2f} {unit}" if unit not in ("KiB", "MiB") else f"{value:.1f} {unit}"
    raise AssertionError("unreachable")  # pragma: no cover


def check_interval(value: Any, name: str = "interval") -> float:
    """A refresh/sampling period in seconds: a positive, finite number."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number of seconds such as 1.0, not {type(value).__name__} ({value!r}).")
    value = float(value)
    if not value > 0 or math.isinf(value):
        raise ValueError(f"{name} must be a positive, finite number of seconds (e.g. 1.0), got {value!r}.")
    return value


class _Nvml:
    """NVML, initialised once per process; if that fails it stays off and torch's numbers remain."""

    def __init__(self, module: Any) -> None:
        self.module = module
        self._lock = threading.Lock()
        self._ready: bool | None = None  # None: not tried yet

    def read(self, torch_index: int) -> tuple[str, int, int] | None:
        """(name, used, total) of the device torch calls ``torch_index``, or None."""
        with self._lock:
            if not self._start():
                return None
            try:
                handle = self._handle(torch_index)
                info = self.module.nvmlDeviceGetMemoryInfo(handle)
                name = self.module.nvmlDeviceGetName(handle)
            except Exception as exc:  # NVMLError or a driver quirk: skip this reading only
                logger.debug("NVML could not read cuda:%d: %s", torch_index, exc)
                return None
        name = name.decode() if isinstance(name, bytes) else str(name)
        return name, int(info.used), int(info.total)

    def _start(self) -> bool:
        if self._ready is None:
            try:
                if self.module is None:
                    raise ImportError("pynvml (nvidia-ml-py) is not installed")
                self.module.nvmlInit()
                self._ready = True
            except Exception as exc:
                logger.debug("NVML is unavailable (%s); GPU used/total will not be shown.", exc)
                self._ready = False
        return self._ready

    def _handle(self, torch_index: int) -> Any:
        # NVML counts physical GPUs; torch counts those CUDA_VISIBLE_DEVICES lets through.
        visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
        entry = visible[torch_index] if torch_index < len(visible) else None
        if entry is not None and entry.isdigit():
            return self.module.nvmlDeviceGetHandleByIndex(int(entry))
        if entry is not None and entry.startswith(("GPU-", "MIG-")):
            return self.module.nvmlDeviceGetHandleByUUID(entry)
        return self.module.nvmlDeviceGetHandleByIndex(torch_index)


_nvml = _Nvml(pynvml)
_process: psutil.Process | None = None


def _this_process() -> psutil.Process:
    global _process
    if _process is None or _process.pid != os.getpid():  # a forked child reads itself
        _process = psutil.Process()
    return _process


def _torch() -> Any:
    """torch, imported on first reading (a process without torch, e.g. a remote-only install, has no GPUs here)."""
    try:
        import torch
    except ImportError:
        return None
    return torch


def _gpu_count() -> int:
    # is_available() and device_count() do not create a CUDA context; get_device_properties would.
    torch = _torch()
    return torch.cuda.device_count() if torch is not None and torch.cuda.is_available() else 0


def read_gpus() -> tuple[GPUMemory, ...]:
    """One ``GPUMemory`` per CUDA device torch can see (empty without CUDA)."""
    gpus = []
    torch = _torch()
    for i in range(_gpu_count()):
        name, used, total = f"cuda:{i}", None, None
        nvml = _nvml.read(i)
        if nvml is not None:
            name, used, total = nvml
        elif torch.cuda.is_initialized():  # without NVML, ask CUDA, but never start it just for this
            free, total = torch.cuda.mem_get_info(i)
            used, name = total - free, torch.cuda.get_device_name(i)
        gpus.append(
            GPUMemory(
                index=i,
                name=name,
                allocated=int(torch.cuda.memory_allocated(i)),
                reserved=int(torch.cuda.memory_reserved(i)),
                used=used,
                total=total,
            )
        )
    return tuple(gpus)


def read_host() -> HostMemory:
    """This process's RSS and the system's RAM use, from psutil."""
    ram = psutil.virtual_memory()
    return HostMemory(rss=_this_process().memory_info().rss, used=ram.total - ram.available, total=ram.total)


def read_memory() -> MemorySnapshot:
    """Read GPU and host memory now.

    >>> print(read_memory())            # doctest: +SKIP
    Process RSS: 612.3 MiB
    System RAM: 7.21 GiB / 15.60 GiB used
    """
    return MemorySnapshot(gpus=read_gpus(), host=read_host())


def _sample() -> tuple[int, tuple[int, ...]]:
    """The cheap part of a reading (no NVML, no /proc/meminfo), for frequent sampling."""
    torch = _torch()
    gpus = tuple(int(torch.cuda.memory_allocated(i)) for i in range(_gpu_count()))
    return _this_process().memory_info().rss, gpus


class PeakTracker:
    """Sample RSS and torch's GPU allocation in a daemon thread; ``peak`` is the highest seen.

    Sampling can miss a spike shorter than ``interval``; on CUDA the core's
    ``GenerationStats.peak_gpu_memory`` (torch's own counter) is exact.

    >>> with PeakTracker(interval=0.01) as tracker:
    ...     block = bytearray(64 * 2**20)
    >>> tracker.peak.rss - tracker.peak.rss_start >= 60 * 2**20     # doctest: +SKIP
    True
    """

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = check_interval(interval)
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self._peak: MemoryPeak | None = None
        self._started = 0.0

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def peak(self) -> MemoryPeak:
        """The peak so far (while running) or over the whole tracked span (after stop)."""
        if self._peak is None:
            raise RuntimeError("PeakTracker has not started; call start() or use it in a with block.")
        return self._peak

    def start(self) -> PeakTracker:
        if self.running:
            raise RuntimeError("This PeakTracker is already running; stop() it first.")
        rss, gpus = _sample()
        self._started = time.perf_counter()
        self._peak = MemoryPeak(rss, rss, gpus, gpus, samples=1, seconds=0.0)
        self._done.clear()
        self._thread = threading.Thread(target=self._loop, name="hfllm_nb-peak", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> MemoryPeak:
        """Stop sampling (one last sample first) and return the peak."""
        if self._thread is not None:
            self._done.set()
            self._thread.join()
            self._thread = None
            self._record()
        return self.peak

    def __enter__(self) -> PeakTracker:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _loop(self) -> None:
        while not self._done.wait(self.interval):
            self._record()

    def _record(self) -> None:
        try:
            rss, gpus = _sample()
        except Exception as exc:  # e.g. CUDA torn down at exit: keep what we have
            logger.debug("Memory sample failed: %s", exc)
            return
        with self._lock:
            old = self._peak
            assert old is not None
            if len(gpus) != len(old.gpu_allocated):
                gpus = old.gpu_allocated
            self._peak = MemoryPeak(
                rss=max(old.rss, rss),
                rss_start=old.rss_start,
                gpu_allocated=tuple(map(max, old.gpu_allocated, gpus)),
                gpu_allocated_start=old.gpu_allocated_start,
                samples=old.samples + 1,
                seconds=time.perf_counter() - self._started,
            )
