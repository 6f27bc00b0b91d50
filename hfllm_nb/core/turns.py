"""Whose turn it is on one model: serialized calls, per-request Stop, and streams left open.

The rule (documented in README): calls on one ``HuggingFaceLLM`` run one at a time. A call
made from the thread that holds an unfinished ``stream()`` (one not read to the end, or the
loop that is reading it) cannot wait for that stream, since only that thread could finish
it: the stream is stopped with a ``RuntimeWarning`` and the new call runs. A call made from
inside a running generation (a callback: it runs on the model's own thread, while the
caller's thread holds the turn) raises ``GenerationError`` at once. Calls from other threads
wait their turn. Nothing blocks forever on its own thread.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
import weakref
from collections.abc import Callable, Generator, Iterator
from typing import Any

from ..errors import GenerationError
from .requests import INSIDE_MESSAGE, StopSignal

_POLL_S = 0.05  # a caller waiting for its turn wakes this often, so Ctrl-C lands at once


class TextStream(Iterator[str]):
    """The iterator ``stream()`` and ``chat(stream=True)`` return: text pieces as they come.

    ``close()`` (or ``break`` out of a ``for`` loop that then drops it) stops generation within
    a step. Reading it from one thread at a time is the caller's part.
    """

    def __init__(
        self, body: Callable[[weakref.ref[TextStream]], Generator[str, None, None]], signal: StopSignal | None = None
    ) -> None:
        # The body gets a weak reference: were it strong, the two would form a cycle, and a stream
        # dropped after ``break`` would hold the model until the garbage collector came by.
        self._body = body(weakref.ref(self))
        self.signal = signal if signal is not None else StopSignal()
        self.owner: threading.Thread | None = None

    def __iter__(self) -> TextStream:
        return self

    def __next__(self) -> str:
        self.owner = threading.current_thread()
        return next(self._body)

    def close(self) -> None:
        """Stop generating and free the model for the next call (from the thread that reads it)."""
        self._body.close()

    def stop(self) -> None:
        """Stop this stream's generation within a step, from any thread; other callers' runs go on."""
        self.signal.set()


class Turns:
    """Serializes generations on one model and keeps each request's Stop signal reachable."""

    def __init__(self) -> None:
        # Set once the engine exists: True on a thread that runs inside a generation (its callbacks).
        self.inside_generation: Callable[[], bool] = lambda: False
        self._free = threading.Condition()  # notified when the turn is given back
        self._claim: object | None = None  # a token of the call holding the turn
        self._holder: Any = None  # a weakref to the TextStream holding the model, or the thread of a plain call
        self._signals: weakref.WeakSet[StopSignal] = weakref.WeakSet()
        self._signals_lock = threading.Lock()

    @property
    def busy(self) -> bool:
        return self._claim is not None

    def new_signal(self) -> StopSignal:
        """A Stop signal for a request that has been asked for but may not have started yet."""
        signal = StopSignal()
        with self._signals_lock:
            self._signals.add(signal)
        return signal

    def retire(self, signal: StopSignal) -> None:
        with self._signals_lock:
            self._signals.discard(signal)

    def stop_all(self) -> None:
        """Stop the running request and every request asked for but not started yet."""
        with self._signals_lock:
            signals = list(self._signals)
        for signal in signals:
            signal.set()

    @contextlib.contextmanager
    def turn(self, holder: weakref.ref[TextStream] | None = None) -> Iterator[None]:
        """Hold the model for one call (``holder`` refers to the stream, for ``stream()``).

        Taking and recording the turn happen together under one condition, inside the ``try``
        whose ``finally`` gives it back: Ctrl-C landing between any two bytecodes can never
        leave the turn held with no one to release it.
        """
        claim = object()
        try:
            self._clear_the_way()
            with self._free:
                while self._claim is not None:
                    self._free.wait(_POLL_S)
                self._claim = claim
                self._holder = holder if holder is not None else threading.current_thread()
            yield
        finally:
            with self._free:
                if self._claim is claim:
                    self._claim = self._holder = None
                    self._free.notify()

    @contextlib.contextmanager
    def request(
        self, signal: StopSignal, check_open: Callable[[], None], holder: weakref.ref[TextStream] | None = None
    ) -> Iterator[None]:
        """One request's whole life: its turn, the open check after waiting for it, and retiring its Stop signal.

        ``check_open`` runs once the turn is held: a call that waited while ``close()`` ran must not start.
        """
        try:
            with self.turn(holder):
                check_open()
                yield
        finally:
            self.retire(signal)

    def _clear_the_way(self) -> None:
        holder = self._holder
        if isinstance(holder, weakref.ref):
            holder = holder()  # None: the stream was dropped and is closing itself
        me = threading.current_thread()
        if holder is me or self.inside_generation():
            raise GenerationError(INSIDE_MESSAGE)
        if isinstance(holder, TextStream) and (holder.owner is me or (holder.owner and not holder.owner.is_alive())):
            warnings.warn(
                "An earlier stream() on this model was still open (not read to the end, or this call "
                "comes from inside its loop); it has been stopped so this call can run. Read streams "
                "to the end or call .close() on them.",
                RuntimeWarning,
                stacklevel=5,  # the user's line: _clear_the_way < turn < contextlib < generate/chat
            )
            with contextlib.suppress(ValueError):  # "generator already executing": it is ending anyway
                holder.close()
