"""``MemoryMonitor``: a widget that redraws GPU / RAM use every second from a daemon thread."""

from __future__ import annotations

import contextlib
import dataclasses
import html
import logging
import threading
import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING

import ipywidgets as widgets

from ..core.memory import (
    MemoryPeak,
    MemorySnapshot,
    PeakTracker,
    check_interval,
    format_bytes,
    read_memory,
)
from .controls import close_tree

if TYPE_CHECKING:
    from ..llm import GenerationStats, HuggingFaceLLM

logger = logging.getLogger("hfllm_nb")

# Bar colours by how full the device is.
_WARN_AT, _DANGER_AT = 0.75, 0.9
_LABEL = {"width": "11em"}
_BAR = {"width": "14em"}


def _bar_style(fraction: float) -> str:
    return "danger" if fraction >= _DANGER_AT else "warning" if fraction >= _WARN_AT else "success"


class _Row(widgets.HBox):
    """A label, a bar, and the numbers in words."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.label = widgets.HTML(f"<b>{html.escape(name)}</b>", layout=_LABEL)
        self.bar = widgets.FloatProgress(value=0.0, min=0.0, max=1.0, layout=_BAR)
        self.detail = widgets.HTML()
        self.text = ""
        super().__init__([self.label, self.bar, self.detail])

    def show(self, fraction: float | None, detail: str) -> None:
        self.text = f"{self.name}: {detail}"
        with self.bar.hold_sync():
            # Rounded, so RSS jitter does not send a comm message every refresh.
            self.bar.value = round(min(max(fraction or 0.0, 0.0), 1.0), 3)
            self.bar.bar_style = _bar_style(fraction or 0.0)
        self.detail.value = html.escape(detail)

    def close(self) -> None:
        close_tree(self)
        super().close()


class MemoryMonitor(widgets.VBox):
    """Live memory readout: per GPU allocated/reserved (torch) and used/total (NVML), then RAM.

    It refreshes every ``interval`` seconds in a daemon thread, so the kernel stays free,
    until ``close()``. Wrap work in ``track()`` to see its peak memory.

    Args:
        interval: seconds between refreshes (a positive number).
        llm: optional model; its exact CUDA peak (``last_stats.peak_gpu_memory``) is shown
            after each tracked generation.

    >>> monitor = MemoryMonitor(interval=1.0)    # doctest: +SKIP
    >>> monitor                                  # shows the bars in a notebook
    >>> with monitor.track():
    ...     llm.generate("Hello", max_length=50)
    """

    def __init__(self, interval: float = 1.0, *, llm: HuggingFaceLLM | None = None) -> None:
        self._interval = check_interval(interval)
        # Weak, so a readout left on screen never keeps a closed or deleted model's weights alive.
        self._llm_ref = weakref.ref(llm) if llm is not None else None
        self.snapshot: MemorySnapshot = read_memory()
        self.last_peak: MemoryPeak | None = None
        self._tracker: PeakTracker | None = None
        self._stats_before: GenerationStats | None = None
        self._refresh_lock = threading.Lock()
        self._gpu_rows = [_Row(f"GPU {g.index} ({g.name})") for g in self.snapshot.gpus]
        self._rss_row = _Row("Process RSS")
        self._ram_row = _Row("System RAM")
        self.peak_label = widgets.HTML()
        self._peak_text = ""
        # Where the model runs, e.g. "remote · http://host:8000/v1 · model": its memory is not ours.
        self._engine_text = f"Model: {llm.engine_description}" if llm is not None else ""
        self.engine_label = widgets.HTML(f"<i>{html.escape(self._engine_text)}</i>")
        super().__init__([*self._gpu_rows, self._rss_row, self._ram_row, self.engine_label, self.peak_label])
        self.refresh()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="hfllm_nb-memory", daemon=True)
        self._thread.start()

    # ---------------------------------------------------------------- readout

    @property
    def interval(self) -> float:
        """Seconds between refreshes; may be changed while running."""
        return self._interval

    @interval.setter
    def interval(self, value: float) -> None:
        self._interval = check_interval(value)

    @property
    def running(self) -> bool:
        """True while the refresh thread is alive (until ``close()``)."""
        return self._thread.is_alive()

    @property
    def text(self) -> str:
        """The current readout as plain text, one line per row."""
        lines = [row.text for row in (*self._gpu_rows, self._rss_row, self._ram_row)]
        extra = [text for text in (self._engine_text, self._peak_text) if text]
        return "\n".join(lines + extra)

    @property
    def llm(self) -> HuggingFaceLLM | None:
        """The model whose peaks are shown, while it exists."""
        return self._llm_ref() if self._llm_ref is not None else None

    def refresh(self) -> MemorySnapshot:
        """Read memory now and redraw; returns the reading."""
        snapshot = read_memory()
        with self._refresh_lock:
            self.snapshot = snapshot
            # Rows are built once; CUDA devices do not come and go within a process.
            for row, gpu in zip(self._gpu_rows, snapshot.gpus, strict=False):
                # Without NVML the total is unknown: an empty bar, but torch's numbers.
                row.show(gpu.fraction, gpu.detail)
            host = snapshot.host
            rss_share = host.rss / host.total if host.total else None
            self._rss_row.show(rss_share, format_bytes(host.rss))
            self._ram_row.show(host.fraction, f"{format_bytes(host.used)} / {format_bytes(host.total)} used")
        return snapshot

    # ---------------------------------------------------------------- peaks

    def generation_started(self) -> None:
        """Start sampling for the peak of the coming generation."""
        if self._tracker is not None:
            self._tracker.stop()
        llm = self.llm
        self._stats_before = llm.last_stats if llm is not None else None
        self._tracker = PeakTracker().start()

    def generation_finished(self) -> MemoryPeak | None:
        """Stop sampling and show the peak; returns it (None if nothing was started)."""
        if self._tracker is None:
            return None
        peak, self._tracker = self._tracker.stop(), None
        llm = self.llm
        stats = llm.last_stats if llm is not None else None
        exact = stats.peak_gpu_memory if stats is not None and stats is not self._stats_before else None
        # Sampling can miss a short spike; torch's own counter (reset per generation) cannot.
        device = getattr(llm, "device", None)
        if exact is not None and device is not None and device.type == "cuda":
            index = device.index or 0
            gpus = list(peak.gpu_allocated)
            if index < len(gpus):
                gpus[index] = max(gpus[index], exact)
                peak = dataclasses.replace(peak, gpu_allocated=tuple(gpus))
        self.last_peak = peak
        self._peak_text = f"Peak during last generation: {peak}"
        self.peak_label.value = f"<i>{html.escape(self._peak_text)}</i>"
        return peak

    @contextlib.contextmanager
    def track(self) -> Iterator[MonitorTracking]:
        """Context manager: ``generation_started()`` on entry, ``generation_finished()`` on exit."""
        tracking = MonitorTracking()
        self.generation_started()
        try:
            yield tracking
        finally:
            tracking.peak = self.generation_finished()

    # ---------------------------------------------------------------- lifetime

    def close(self) -> None:
        """Stop refreshing (the thread ends at once) and close the widgets."""
        if not hasattr(self, "_thread"):  # __init__ failed (ipywidgets closes from __del__)
            return super().close()
        self._closed.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        if self._tracker is not None:
            self._tracker.stop()
            self._tracker = None
        for child in (*self._gpu_rows, self._rss_row, self._ram_row, self.engine_label, self.peak_label):
            child.close()
        close_tree(self)
        super().close()

    def _loop(self) -> None:
        while not self._closed.wait(self._interval):
            try:
                self.refresh()
            except Exception as exc:  # a failed reading must not end the readout for good
                logger.debug("Memory refresh failed: %s", exc)


class MonitorTracking:
    """Filled in when a ``MemoryMonitor.track()`` block ends: ``.peak`` is its ``MemoryPeak``."""

    peak: MemoryPeak | None = None
