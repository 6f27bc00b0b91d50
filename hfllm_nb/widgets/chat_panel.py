"""``ChatPanel``: a multi-turn chat with one ``HuggingFaceLLM``: turns, streamed replies, Stop, Regenerate, Edit.

The conversation, its trimming to the context and the prompt live in ``conversation.py``; this
widget draws them and runs ``llm.chat(messages, stream=True, ...)`` in a worker thread, as
``LLMPanel`` runs ``llm.stream``. It uses only widgets that ipywidgets 7.7 and 8 both have.

Enter sends without JavaScript: the message box syncs every keystroke, and a newline typed at the
end of the text sends it. The browser reports Shift+Enter as the same newline, so a line that
ends in a backslash continues instead (``line one\\`` + Enter), as in a shell; pasted text keeps
its line breaks, and ``panel.send(text)`` takes any text.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import ipywidgets as widgets

from ..conversation import STOPPED, Conversation, PromptPlan, check_message_text
from ..errors import GenerationError
from .chat_render import STYLE, prompt_html, turn_html
from .controls import BackgroundRun, GenerationControls, close_tree, describe_stats, error_html, set_tooltip
from .monitor import MemoryMonitor
from .settings import CHAT_SETTINGS, check_panel_settings

if TYPE_CHECKING:
    from ..llm import GenerationStats, HuggingFaceLLM

logger = logging.getLogger("hfllm_nb")

_FULL = {"width": "100%"}


class ChatPanel(BackgroundRun, widgets.VBox):
    """Chat with an instruct model: type, press Enter, watch the reply stream in; every click has a code twin.

    Args:
        llm: the model (``llm.chat_panel()`` builds one for you); it needs a chat template.
        system_prompt: the system message, or None for the template's default.
        **initial_settings: max_length (the reply's budget, as in ``llm.chat``), do_sample,
            temperature, top_p, top_k, seed (None: a new sample each run), memory_interval.

    ``.messages`` is the conversation as ``llm.chat`` takes it (settable); ``.send(text)``,
    ``.wait()``, ``.stop()``, ``.regenerate()``, ``.edit_last(text)``, ``.clear()`` and
    ``.system_prompt`` do what the buttons and fields do. Errors from code raise; from clicks they
    show in the panel. When the history outgrows the context, the oldest turns are left out of
    what the model reads (never the system prompt) and the status line says how many.

    >>> panel = llm.chat_panel("Answer briefly.", max_length=200)   # doctest: +SKIP
    >>> panel.send("What is the capital of France?"); panel.wait(); panel.messages[-1]["content"]
    """

    render_interval = 0.05  # seconds between redraws of the streaming reply
    _STOP_DRAIN_S = 2.0  # after Stop, read what the stream flushes for at most this long

    def __init__(self, llm: HuggingFaceLLM, system_prompt: str | None = None, **initial_settings: Any) -> None:
        self._llm_ref = weakref.ref(llm)
        start = check_panel_settings(llm, initial_settings, names=CHAT_SETTINGS, owner="ChatPanel")
        if not getattr(llm.tokenizer, "chat_template", None):
            raise ValueError(f"ChatPanel needs a chat template, and {llm.model_id!r} has none; load an instruct model.")
        self.conversation = Conversation(system_prompt)
        self.system_box = widgets.Textarea(
            value=system_prompt or "",
            placeholder="System prompt (optional): how the assistant should behave",
            rows=2,
            layout=_FULL,
        )
        self.style_html = widgets.HTML(STYLE)
        self.turns = widgets.VBox(layout=_FULL)
        self.turns.add_class("hfllm-chat-turns")
        self.input = widgets.Textarea(
            placeholder="Type a message · Enter sends · end a line with \\ for a new line", rows=3, layout=_FULL
        )
        self.send_button = widgets.Button(description="Send", button_style="primary", icon="paper-plane")
        self.stop_button = widgets.Button(description="Stop", icon="stop", disabled=True)
        self.regenerate_button = widgets.Button(description="Regenerate", icon="refresh", tooltip="answer again")
        self.edit_button = widgets.Button(description="Edit", icon="pencil", tooltip="edit your last message")
        self.clear_button = widgets.Button(description="Clear", icon="trash")
        self.show_prompt = set_tooltip(
            widgets.ToggleButton(value=False, description="show prompt", icon="eye"), "the exact text the model reads"
        )
        self.prompt_view = widgets.HTML(layout={"display": "none"})
        self._controls = controls = GenerationControls(llm, start)
        self.max_length, self.do_sample, self.seed = controls.max_length, controls.do_sample, controls.seed
        self.temperature, self.top_p, self.top_k = controls.temperature, controls.top_p, controls.top_k
        self.status = widgets.HTML()
        self.error = widgets.HTML()

        self.reply_text = ""  # the reply being streamed, or the last one
        self.last_plan: PromptPlan | None = None  # what the model read for that reply
        self.last_stats: GenerationStats | None = None
        self.last_error: BaseException | None = None
        self._turn_widgets: list[widgets.HTML] = []
        self._busy = False
        self._state_lock = threading.Lock()
        self._stop_requested = threading.Event()
        self._worker: threading.Thread | None = None
        self._quiet = False  # True while the code itself sets a box, so observers do not act on it

        self.send_button.on_click(lambda _: self._click(self._send_box))
        self.stop_button.on_click(lambda _: self.stop())
        self.regenerate_button.on_click(lambda _: self._click(self.regenerate))
        self.edit_button.on_click(lambda _: self._click(self._edit_box))
        self.clear_button.on_click(lambda _: self._click(self.clear))
        self.input.observe(self._on_typing, "value")
        self.system_box.observe(self._on_system_prompt, "value")
        self.show_prompt.observe(lambda _: self._draw_prompt(), "value")
        buttons = [self.send_button, self.stop_button, self.regenerate_button, self.edit_button, self.clear_button]
        self._boxes = [
            widgets.HBox([*buttons, self.show_prompt]),
            widgets.HBox([self.max_length]),
            controls.sampling_row(),
        ]
        self._own = [self.system_box, self.style_html, self.turns, self.input, *buttons, self.show_prompt]
        self._own += [self.prompt_view, *controls.all, self.status, self.error]
        self._update_buttons()
        top = [self.style_html, self.system_box, self.turns, self.input, self._boxes[0], self.prompt_view]
        self.memory = None
        try:  # the readout's thread is the one thing to undo if Ctrl-C lands from here on
            self.memory = MemoryMonitor(start["memory_interval"], llm=llm)
            super().__init__([*top, *self._boxes[1:], self.status, self.error, self.memory])
            self.add_class("hfllm-chat")
            llm.register_view(self)  # llm.close() closes the panel too
        except BaseException:
            if self.memory is not None:
                self.memory.close()
            raise

    # ---------------------------------------------------------------- the conversation

    @property
    def messages(self) -> list[dict[str, str]]:
        """The conversation as ``llm.chat`` takes it, the system message first; set it to load one."""
        return self.conversation.messages

    @messages.setter
    def messages(self, value: list[dict[str, str]]) -> None:
        self._check_idle()
        self.conversation.messages = value
        self._quiet_set(self.system_box, self.conversation.system_prompt or "")
        self.last_plan, self.reply_text = None, ""
        self._draw_turns()
        self._update_buttons()

    @property
    def system_prompt(self) -> str | None:
        """The system message (None: the template's default); it applies from the next reply on."""
        return self.conversation.system_prompt

    @system_prompt.setter
    def system_prompt(self, value: str | None) -> None:
        self.conversation.system_prompt = value
        self._quiet_set(self.system_box, self.conversation.system_prompt or "")

    @property
    def is_busy(self) -> bool:
        """True from Send until the reply has ended and the panel shows it."""
        return self._busy

    def send(self, text: str) -> None:
        """Add ``text`` as the user's message and start the reply (``wait()`` waits for it)."""
        check_message_text(text)
        self._begin(lambda: self.conversation.add_user(text))

    def regenerate(self) -> None:
        """Answer the last user message again: with sampling a new draw, with a seed the same one."""
        self._begin(self.conversation.drop_reply)

    def edit_last(self, text: str) -> None:
        """Replace the last user message by ``text``, drop its reply, and answer again."""
        check_message_text(text)

        def edit() -> None:
            if not any(turn["role"] == "user" for turn in self.conversation.turns):
                raise ValueError("There is no user message to edit: send one first.")
            self.conversation.take_last_user()
            self.conversation.add_user(text)

        self._begin(edit)

    def clear(self) -> None:
        """Forget the turns (stopping a reply first); the system prompt stays."""
        self.stop()
        self.wait(timeout=30)
        self._check_idle()
        self.conversation.clear()
        self.last_plan, self.reply_text, self.status.value = None, "", ""
        self._draw_turns()
        self._draw_prompt()
        self._update_buttons()

    def close(self) -> None:
        """Stop the reply and the memory readout, then close every widget."""
        if getattr(self, "memory", None) is None:  # __init__ failed (ipywidgets closes from __del__)
            return super().close()
        self.stop()
        self.wait(timeout=30)
        self.memory.close()
        for widget in (*self._turn_widgets, *self._own, *self._boxes):
            widget.close()
        close_tree(self)
        super().close()

    # ---------------------------------------------------------------- a run

    def _check_idle(self) -> None:
        if self._busy:
            raise GenerationError("The chat is still replying: wait() for it, or stop() it first.")

    def _begin(self, change: Callable[[], None]) -> None:
        """Apply ``change`` to the conversation and start the reply; on any error, undo it and raise."""
        with self._state_lock:
            self._check_idle()
            self._busy = True
        turns, notes = list(self.conversation.turns), list(self.conversation.notes)
        try:
            change()
            settings = self._controls.settings()
            plan = self.conversation.plan(self.llm, settings["max_length"])
            if self.llm.is_busy:
                raise GenerationError(
                    "The model is busy with another generation: wait for it, call llm.stop(), or close a "
                    "stream() left half-read in another cell (stream.close())."
                )
            stats_before = self.llm.last_stats
            chunks = self.llm.chat(plan.messages, stream=True, **settings)  # validates before any thread starts
        except BaseException:
            self.conversation.turns, self.conversation.notes = turns, notes
            with self._state_lock:
                self._busy = False
            raise
        self._stop_requested.clear()
        self.last_plan, self.reply_text, self.last_error = plan, "", None
        self.error.value = ""
        self.status.value = "generating…"
        self._update_buttons()
        self._draw_turns(pending=True)
        self._draw_prompt()
        self._chunks = chunks
        self._worker = threading.Thread(
            target=self._work, args=(chunks, stats_before), name="hfllm_nb-chat", daemon=True
        )
        self._worker.start()

    def _work(self, chunks: Iterator[str], stats_before: GenerationStats | None) -> None:
        """The background run; whatever happens, the reply joins the conversation and the panel is idle again."""
        failure = None
        try:
            self.memory.generation_started()
            self._read(chunks)
        except Exception as exc:
            failure = exc
        finally:
            try:
                chunks.close()  # ends generation within one step and waits for its thread
                self.memory.generation_finished()
                stats = self.llm.last_stats
                self.last_stats = stats if stats is not stats_before else None
                stopped = self._stop_requested.is_set() or bool(self.last_stats and self.last_stats.stopped)
                note = STOPPED if stopped else "error" if failure is not None else ""
                self.conversation.add_reply(self.reply_text, note)
                self._draw_turns()
                self.status.value = self._describe()
            except Exception as exc:
                failure = failure or exc
            if failure is not None:
                self.last_error = failure
                logger.debug("Chat reply failed", exc_info=failure)
                self.error.value = error_html(failure)
            self._chunks = None  # the stream holds the model: let it go with the run
            with self._state_lock:
                self._busy = False
            self._update_buttons()

    def _read(self, chunks: Iterator[str]) -> None:
        """Collect the reply; redraw at most every ``render_interval`` s."""
        started = last_draw = time.perf_counter()
        first = stopped_at = None
        if self._stop_requested.is_set():
            return  # stopped before it began: never take the model
        for piece in chunks:
            self.reply_text += piece
            if self._stop_requested.is_set():  # keep reading: the stream ends within a step and flushes
                stopped_at = stopped_at or time.perf_counter()
                if time.perf_counter() - stopped_at > self._STOP_DRAIN_S:
                    return
            now = time.perf_counter()
            first = now - started if first is None else first
            if now - last_draw >= self.render_interval:
                last_draw = now
                self._turn_widgets[-1].value = turn_html("assistant", self.reply_text, streaming=True)
                self.status.value = f"generating… {now - started:.1f} s · first token after {first:.2f} s"

    def _describe(self) -> str:
        text = describe_stats(self.last_stats, self._stop_requested.is_set())
        left_out = self.last_plan.left_out if self.last_plan is not None else 0
        if left_out:
            text += (
                f" · the oldest {left_out} message{'s' * (left_out != 1)} left out to fit the context "
                f"({self.llm.context_length} tokens)"
            )
        return text

    # ---------------------------------------------------------------- drawing and clicks

    def _draw_turns(self, pending: bool = False) -> None:
        """One HTML widget per message, reused; ``pending`` adds the reply being streamed."""
        conversation = self.conversation
        turns = zip(conversation.turns, conversation.notes, strict=True)
        shown = [turn_html(turn["role"], turn["content"], note) for turn, note in turns]
        if pending:
            shown.append(turn_html("assistant", "", streaming=True))
        grew = len(shown) != len(self._turn_widgets)
        while len(self._turn_widgets) > len(shown):
            self._turn_widgets.pop().close()
        while len(self._turn_widgets) < len(shown):
            self._turn_widgets.append(widgets.HTML())
        for widget, value in zip(self._turn_widgets, shown, strict=True):
            if widget.value != value:
                widget.value = value
        if grew:
            self.turns.children = tuple(self._turn_widgets)

    def _draw_prompt(self) -> None:
        self.prompt_view.layout.display = None if self.show_prompt.value else "none"
        if self.show_prompt.value:
            self.prompt_view.value = prompt_html(self.last_plan)

    def _update_buttons(self) -> None:
        busy, turns = self._busy, self.conversation.turns
        self.stop_button.disabled = not busy
        self.send_button.disabled = busy
        self.regenerate_button.disabled = busy or not turns
        self.edit_button.disabled = busy or not turns
        self.clear_button.disabled = busy or not turns

    def _click(self, action: Callable[[], Any]) -> None:
        """Run a click's action; its error shows in the panel instead of a log nobody reads."""
        self.error.value = ""
        try:
            action()
        except Exception as exc:
            self.last_error = exc
            self.error.value = error_html(exc)

    def _send_box(self) -> None:
        self.send(self.input.value)
        self._quiet_set(self.input, "")

    def _edit_box(self) -> None:
        self._check_idle()
        if not self.conversation.turns:
            raise ValueError("There is no user message to edit: send one first.")
        text = self.conversation.take_last_user()
        self._draw_turns()
        self._update_buttons()
        self._quiet_set(self.input, text)

    def _on_typing(self, change: dict[str, Any]) -> None:
        new, old = change["new"], change["old"]
        if self._quiet or not new.endswith("\n") or len(new) <= len(old):
            return
        if new.endswith("\\\n"):  # a continued line: keep the line break, drop the backslash
            self._quiet_set(self.input, new[:-2] + "\n")
            return
        self._quiet_set(self.input, new.rstrip("\n"))  # the Enter that sends is no part of the message
        self._click(self._send_box)

    def _on_system_prompt(self, change: dict[str, Any]) -> None:
        if not self._quiet:
            self.conversation.system_prompt = change["new"]

    def _quiet_set(self, widget: Any, value: str) -> None:
        self._quiet = True
        try:
            widget.value = value
        finally:
            self._quiet = False
