"""``LLMPanel``: prompt box, sliders, streamed output, stats and memory for one ``HuggingFaceLLM``.

The panel holds no model logic: callbacks read widget values, call the public
``HuggingFaceLLM`` API (``stream``, ``chat(stream=True)``, ``stop``, ``count_tokens``) and write
results. It never asks which engine runs the model.
"""

from __future__ import annotations

import html
import logging
import threading
import time
import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import ipywidgets as widgets

from ..errors import GenerationError
from .controls import BackgroundRun, GenerationControls, close_tree, describe_stats, error_html, set_tooltip
from .monitor import MemoryMonitor
from .settings import check_panel_settings

if TYPE_CHECKING:
    from ..llm import GenerationStats, HuggingFaceLLM

logger = logging.getLogger("hfllm_nb")

_PROMPT_STYLE = "color:#6a737d"
_CONTINUATION_STYLE = "font-weight:600"
_OUTPUT_STYLE = (
    "white-space:pre-wrap;font-family:var(--jp-code-font-family,monospace);"
    "line-height:var(--jp-code-line-height,1.4);min-height:3em"
)


def render_output(prompt: str, continuation: str, *, chat: bool = False, continuation_html: str | None = None) -> str:
    """The output HTML: the prompt in grey, the continuation in bold, all text escaped.

    ``continuation_html`` (already escaped, e.g. tokens coloured by probability) replaces the plain text.
    """
    shown_prompt = prompt + "\n\n" if chat else prompt
    body = html.escape(continuation) if continuation_html is None else continuation_html
    return (
        f'<div class="hfllm-output" style="{_OUTPUT_STYLE}">'
        f'<span class="hfllm-prompt" style="{_PROMPT_STYLE}">{html.escape(shown_prompt)}</span>'
        f'<span class="hfllm-continuation" style="{_CONTINUATION_STYLE}">{body}</span>'
        "</div>"
    )


class LLMPanel(BackgroundRun, widgets.VBox):
    """Type a prompt, press Generate, watch the text stream in.

    Args:
        llm: the model to drive (``llm.panel()`` builds one for you).
        **initial_settings: prompt, max_length, do_sample, temperature, top_p, top_k, seed
            (None: a new sample each run), chat_mode, memory_interval. Defaults come from
            ``llm`` (``llm.max_length``, the model's generation config).

    Anything the panel does is one call on ``llm``: ``llm.stream(prompt, **panel.settings())``, or
    in chat mode ``llm.chat(prompt, stream=True, **panel.settings())``, where ``max_length`` bounds
    the reply alone (the chat template is not counted), as in ``llm.chat``.

    >>> panel = llm.panel(prompt="Once upon a time,", max_length=60)   # doctest: +SKIP
    >>> panel                       # display it; or drive it from code:
    >>> panel.generate(); panel.wait(); panel.result_text
    """

    render_interval = 0.05  # seconds between output redraws (≤ 20/s keeps comms off the hot path)
    _STOP_DRAIN_S = 2.0  # after Stop, read what the stream flushes for at most this long

    def __init__(self, llm: HuggingFaceLLM, **initial_settings: Any) -> None:
        self._llm_ref = weakref.ref(llm)
        start = check_panel_settings(llm, initial_settings)
        has_template = bool(getattr(llm.tokenizer, "chat_template", None))
        self.prompt = widgets.Textarea(
            value=start["prompt"],
            placeholder="Type a prompt, then press Generate",
            layout={"width": "100%", "height": "6em"},
        )
        self.generate_button = widgets.Button(description="Generate", button_style="primary", icon="play")
        self.probabilities = set_tooltip(
            widgets.Checkbox(value=start["probabilities"], description="probabilities", indent=False),
            "Colour each new token by its probability; hover a token for the alternatives",
        )
        self.stop_button = widgets.Button(description="Stop", icon="stop", disabled=True)
        self.chat_mode = set_tooltip(
            widgets.Checkbox(value=start["chat_mode"], description="chat", disabled=not has_template, indent=False),
            "Wrap the prompt in the chat template" if has_template else "This tokenizer has no chat template",
        )
        self._controls = GenerationControls(llm, start)  # max_length and the sampling settings, as ChatPanel has
        controls = self._controls
        self.max_length, self.do_sample, self.seed = controls.max_length, controls.do_sample, controls.seed
        self.temperature, self.top_p, self.top_k = controls.temperature, controls.top_p, controls.top_k
        self.prompt_tokens = widgets.HTML()
        self.output = widgets.HTML(render_output("", ""))
        self.status = widgets.HTML()
        self.error = widgets.HTML()

        self.result_text = ""  # plain continuation of the last (or current) run
        self.tokens: list | None = None  # with probabilities on: the explained tokens of that run
        self.last_stats: GenerationStats | None = None
        self.last_error: BaseException | None = None
        self._busy = False
        self._state_lock = threading.Lock()
        self._stop_requested = threading.Event()
        self._worker: threading.Thread | None = None

        self.generate_button.on_click(lambda _: self.generate())
        self.stop_button.on_click(lambda _: self.stop())
        self.prompt.observe(self._show_prompt_tokens, "value")
        self.max_length.observe(self._show_prompt_tokens, "value")
        self.chat_mode.observe(self._show_prompt_tokens, "value")
        self._show_prompt_tokens()
        self._own = [
            self.prompt,
            self.generate_button,
            self.stop_button,
            self.chat_mode,
            self.probabilities,
            self.max_length,
            self.prompt_tokens,
            self.do_sample,
            self.temperature,
            self.top_p,
            self.top_k,
            self.seed,
            self.output,
            self.status,
            self.error,
        ]
        rows = [
            widgets.HBox([self.generate_button, self.stop_button, self.chat_mode, self.probabilities]),
            widgets.HBox([self.max_length, self.prompt_tokens]),
            self._controls.sampling_row(),
        ]
        self._boxes = rows
        self.memory = None
        try:  # the readout's thread is the one thing to undo if Ctrl-C lands from here on
            self.memory = MemoryMonitor(start["memory_interval"], llm=llm)
            super().__init__([self.prompt, *rows, self.output, self.status, self.error, self.memory])
            llm.register_view(self)  # llm.close() stops and closes it, however it was built
        except BaseException:
            if self.memory is not None:
                self.memory.close()
            raise

    # ---------------------------------------------------------------- public API

    def settings(self) -> dict[str, Any]:
        """The keyword arguments the widgets stand for, as ``llm.generate`` takes them."""
        return self._controls.settings()

    @property
    def is_busy(self) -> bool:
        """True from Generate until the run has ended and the panel shows its result."""
        return self._busy

    def generate(self) -> bool:
        """Start a run in a background thread, as clicking Generate does.

        Returns False (and starts nothing) while a run is going, or when the input is
        rejected; the reason then shows in ``error``.
        """
        with self._state_lock:
            if self._busy:  # a double click, or Generate pressed again while running
                return False
            self._busy = True
        self._show_running(True)
        self.error.value = ""
        self.last_error = None
        self._stop_requested.clear()
        prompt, chat = self.prompt.value, self.chat_mode.value
        try:
            if self.llm.is_busy:
                raise GenerationError(
                    "The model is busy with another generation: wait for it, call llm.stop(), or close a "
                    "stream() left half-read in another cell (stream.close())."
                )
            stats_before = self.llm.last_stats
            kwargs = self.settings()
            # Validation happens here, in the caller's thread, before any thread starts.
            if self.probabilities.value:
                text = self.llm.format_chat(prompt) if chat else prompt
                chunks = self.llm.explain_stream(text, add_special_tokens=not chat, **kwargs)
            elif chat:
                chunks = self.llm.chat(prompt, stream=True, **kwargs)
            else:
                chunks = self.llm.stream(prompt, **kwargs)
        except Exception as exc:
            self._show_error(exc)
            self._show_running(False)
            return False
        self.result_text = ""
        self.tokens = [] if self.probabilities.value else None
        self.output.value = render_output(prompt, "", chat=chat)
        self.status.value = "generating…"
        self._chunks = chunks
        if self._stop_requested.is_set():  # Stop pressed while the request was being checked
            self.stop()
        self._worker = threading.Thread(
            target=self._work,
            args=(chunks, prompt, chat, stats_before),
            name="hfllm_nb-panel",
            daemon=True,
        )
        self._worker.start()
        return True

    def close(self) -> None:
        """Stop the generation and the memory readout, then close every widget."""
        if getattr(self, "memory", None) is None:  # __init__ failed (ipywidgets closes from __del__)
            return super().close()
        self.stop()
        self.wait(timeout=30)
        self.memory.close()
        for widget in (*self._own, *self._boxes):
            widget.close()
        close_tree(self)
        super().close()

    # ---------------------------------------------------------------- callbacks

    def _work(self, chunks: Iterator[str], prompt: str, chat: bool, stats_before: GenerationStats | None) -> None:
        """The background run; whatever happens, it ends with the panel idle again."""
        failure = None
        try:
            self.memory.generation_started()
            self._read(chunks, prompt, chat)
        except Exception as exc:
            failure = exc
        finally:
            try:
                chunks.close()  # ends generation within one step and waits for its thread
                self.memory.generation_finished()
                stats = self.llm.last_stats
                self.last_stats = stats if stats is not stats_before else None
                self._draw(prompt, chat)
                self.status.value = self._describe(self.last_stats)
            except Exception as exc:
                failure = failure or exc
            if failure is not None:
                self._show_error(failure)
            self._chunks = None  # the stream holds the model: let it go with the run
            self._show_running(False)

    def _read(self, chunks: Iterator[str], prompt: str, chat: bool) -> None:
        """Collect chunks into ``result_text``; redraw at most every ``render_interval`` s."""
        started = last_draw = time.perf_counter()
        first = stopped_at = None
        if self._stop_requested.is_set():
            return  # stopped before it began: never take the model
        for piece in chunks:
            if self.tokens is None:
                self.result_text += piece
            else:  # probabilities on: pieces are explained tokens
                self.tokens.append(piece)
            # After Stop keep reading: the stream ends within a step and flushes the word it held back.
            if self._stop_requested.is_set():
                stopped_at = stopped_at or time.perf_counter()
                if time.perf_counter() - stopped_at > self._STOP_DRAIN_S:
                    return  # a stream that ignores Stop: stop reading; _work's close() then ends it
            now = time.perf_counter()
            first = now - started if first is None else first
            if now - last_draw >= self.render_interval:
                last_draw = now
                self._draw(prompt, chat)
                self.status.value = f"generating… {now - started:.1f} s · first token after {first:.2f} s"

    def _draw(self, prompt: str, chat: bool) -> None:
        if self.tokens is None:
            self.output.value = render_output(prompt, self.result_text, chat=chat)
            return
        from ..inside.html import render_tokens_html

        ids = [token.token_id for token in self.tokens]
        self.result_text = self.llm.tokenizer.decode(ids, skip_special_tokens=True)
        self.output.value = render_output(prompt, "", chat=chat, continuation_html=render_tokens_html(self.tokens))

    def _describe(self, stats: GenerationStats | None) -> str:
        return describe_stats(stats, self._stop_requested.is_set())

    def _show_error(self, exc: BaseException) -> None:
        self.last_error = exc
        logger.debug("Panel run failed", exc_info=exc)
        self.error.value = error_html(exc)

    def _show_running(self, running: bool) -> None:
        self.generate_button.disabled = running
        self.stop_button.disabled = not running
        if not running:
            with self._state_lock:
                self._busy = False

    def _show_prompt_tokens(self, change: Any = None) -> None:
        text = self.prompt.value
        try:
            if self.chat_mode.value:
                count = self.llm.count_tokens(self.llm.format_chat(text), add_special_tokens=False)
            else:
                count = self.llm.count_tokens(text)
        except (TypeError, ValueError):  # empty prompt
            count = 0
        limit = self.max_length.value
        if self.chat_mode.value:  # in chat, max_length bounds the reply alone, as in llm.chat
            self.prompt_tokens.value = f"prompt: {count} tokens (chat template, not counted) · up to {limit} new"
            return
        if count and count >= limit:
            self.prompt_tokens.value = (
                f'<span style="color:#c62828">prompt: {count} tokens, raise max_length above {count}</span>'
            )
        else:
            self.prompt_tokens.value = f"prompt: {count} tokens · up to {limit - count} new"
