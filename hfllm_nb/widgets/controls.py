"""Widgets both panels draw: the generation settings, the status and error lines; tooltips on ipywidgets 7 and 8.

``LLMPanel`` and ``ChatPanel`` take the same settings and report a run the same way, so these
pieces live here once. Only widget constructors and arguments that ipywidgets 7.7 and 8 share
are used (Colab ships 7.7).
"""

from __future__ import annotations

import html
import threading
import weakref
from typing import TYPE_CHECKING, Any

import ipywidgets as widgets

from ..errors import GenerationError
from .settings import NO_SEED

if TYPE_CHECKING:
    from ..llm import GenerationStats, HuggingFaceLLM

# Past this a slider is too coarse to aim with; a larger max_length=... still widens it.
SLIDER_MAX_LENGTH = 2048
WIDE = {"description_width": "initial"}
ERROR_STYLE = "color:#c62828"


def close_tree(widget: Any) -> None:
    """Close everything ``widget`` holds: its children, theirs, and every Layout and Style model.

    ipywidgets keeps each open model (a Layout too) in its registry, so a tree closed only at the
    top keeps the rest, and what they reference, alive. ``widget`` itself is left to its caller.
    """
    seen, todo = {id(widget)}, [widget]
    while todo:
        current = todo.pop()
        parts = [*(getattr(current, "children", None) or ()), getattr(current, "layout", None)]
        parts.append(getattr(current, "style", None))
        for part in parts:
            if isinstance(part, widgets.Widget) and id(part) not in seen:
                seen.add(id(part))
                todo.append(part)
                part.close()


class BackgroundRun:
    """Stop and wait for a panel whose run reads the model from a worker thread (both panels).

    The panel holds its model weakly (``llm``), so a model the notebook has dropped is freed,
    closing its panels with it, instead of living on in the widget registry.
    """

    _llm_ref: weakref.ref

    @property
    def llm(self) -> Any:
        llm = self._llm_ref()
        if llm is None:
            raise GenerationError("This panel's model was dropped; make a new panel with llm.panel().")
        return llm
    _busy: bool
    _stop_requested: threading.Event
    _worker: threading.Thread | None
    _chunks: Any = None  # the run's stream (a TextStream): its Stop is this panel's alone

    def stop(self) -> None:
        """Stop this panel's run within one step, as clicking Stop does; other callers' runs go on."""
        if not self._busy:
            return  # never stop a generation that someone else started on this model
        self._stop_requested.set()
        stop_its_request = getattr(self._chunks, "stop", None)  # a TextStream; any other iterator is drained
        if stop_its_request is not None:
            stop_its_request()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the run has ended and the panel shows it (or ``timeout`` seconds pass); True if idle."""
        worker = self._worker
        if worker is not None and worker is not threading.current_thread():
            worker.join(timeout)
        return not self._busy


def set_tooltip(widget: Any, text: str) -> Any:
    """Give ``widget`` a hover text: ``tooltip`` in ipywidgets 8 (and on 7's buttons), else 7's ``description_tooltip``.

    Passing ``tooltip=`` to a 7.7 Checkbox would only warn and drop the text.
    """
    setattr(widget, "tooltip" if widget.has_trait("tooltip") else "description_tooltip", text)
    return widget


def _slider(kind: type, name: str, start: dict[str, Any], low: Any, high: Any, step: Any) -> Any:
    # The range widens to take in a validated value outside the usual one.
    value = start[name]
    return kind(value, min=min(low, value), max=max(high, value), step=step, description=name, style=WIDE)


class GenerationControls:
    """max_length, sample, temperature, top_p, top_k and seed, and the keyword arguments they stand for.

    ``start`` comes from ``check_panel_settings``: every value there is already valid.
    """

    def __init__(self, llm: HuggingFaceLLM, start: dict[str, Any]) -> None:
        self.max_length = widgets.IntSlider(
            value=start["max_length"],
            min=1,
            max=max(min(llm.context_length, SLIDER_MAX_LENGTH), start["max_length"]),
            description="max_length",
            style=WIDE,
            continuous_update=False,
        )
        self.do_sample = widgets.Checkbox(value=start["do_sample"], description="sample", indent=False)
        self.temperature = _slider(widgets.FloatSlider, "temperature", start, 0.05, 2.0, 0.05)
        self.top_p = _slider(widgets.FloatSlider, "top_p", start, 0.05, 1.0, 0.05)
        self.top_k = _slider(widgets.IntSlider, "top_k", start, 0, 200, 1)
        self.seed = set_tooltip(
            widgets.IntText(value=start["seed"], description="seed", layout={"width": "10em"}, style=WIDE),
            f"{NO_SEED}: a new sample every run",
        )
        self.do_sample.observe(self._enable_sampling, "value")
        self._enable_sampling()

    @property
    def all(self) -> list[Any]:
        return [self.max_length, self.do_sample, self.temperature, self.top_p, self.top_k, self.seed]

    def sampling_row(self) -> widgets.HBox:
        return widgets.HBox([self.do_sample, self.temperature, self.top_p, self.top_k, self.seed])

    def settings(self) -> dict[str, Any]:
        """The keyword arguments the widgets stand for, as ``llm.generate`` takes them."""
        options: dict[str, Any] = {"max_length": self.max_length.value, "do_sample": self.do_sample.value}
        if self.do_sample.value:
            options.update(temperature=self.temperature.value, top_p=self.top_p.value, top_k=self.top_k.value)
            if self.seed.value != NO_SEED:
                options["seed"] = self.seed.value
        return options

    def _enable_sampling(self, change: Any = None) -> None:
        for widget in (self.temperature, self.top_p, self.top_k, self.seed):
            widget.disabled = not self.do_sample.value


def describe_stats(stats: GenerationStats | None, stop_requested: bool) -> str:
    """The status line after a run: tokens, speed, first-token latency, time, and why it ended (HTML)."""
    if stats is None:
        return "stopped before the first token" if stop_requested else ""
    first = f"{stats.time_to_first_token:.2f} s" if stats.time_to_first_token is not None else "–"
    return (
        f"{stats.new_tokens} token{'s' * (stats.new_tokens != 1)} · {stats.tokens_per_second:.1f} tokens/s · "
        f"first token after {first} · {stats.seconds:.2f} s · ended: <b>{html.escape(stats.ended_because)}</b>"
    )


def error_html(exc: BaseException) -> str:
    """A short red line naming the error: no traceback, all text escaped."""
    message = str(exc).strip() or "(no message)"
    return (
        f'<span class="hfllm-error" style="{ERROR_STYLE}">'
        f"{html.escape(type(exc).__name__)}: {html.escape(message)}</span>"
    )
