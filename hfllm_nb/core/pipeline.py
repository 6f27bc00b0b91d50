"""The one path every request takes: its turn, the open check, the engine call, Stop, stats.

``generate``, ``stream``, ``chat``, ``explain``/``explain_stream``, ``run``/``run_stream`` and so every
view go through ``Pipeline``; nothing else takes a model's turn or writes ``last_stats``. Written
once, because each seam written twice (turn lock, Stop scope, close ordering) is where a hang hides.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable, Generator
from typing import Any, TypeVar

from .requests import StopSignal
from .turns import TextStream, Turns

T = TypeVar("T")

# what a finished or half-read stream is recorded with: (pieces read, the engine's result or None, seconds, TTFT)
Recorder = Callable[[list[Any], Any, float, "float | None"], None]


class Pipeline:
    """Runs requests on one model, one at a time. ``check_open`` raises once the model is closed.

    The facade's methods are held weakly, so a dropped model is freed without waiting for the
    garbage collector to break a cycle.
    """

    def __init__(self, turns: Turns, check_open: Callable[[], None]) -> None:
        self.turns = turns
        self._check_open = weakref.WeakMethod(check_open)  # type: ignore[arg-type]

    def new_signal(self) -> StopSignal:
        return self.turns.new_signal()

    def check_open(self) -> None:
        check = self._check_open()
        if check is not None:
            check()

    def call(self, signal: StopSignal, run: Callable[[], T]) -> T:
        """``run()`` while holding the model's turn (after checking, once it is ours, that the model is open)."""
        with self.turns.request(signal, self.check_open):
            return run()

    def stream(
        self, signal: StopSignal, open_pieces: Callable[[], Generator[Any, None, Any]], record: Recorder | None = None
    ) -> TextStream:
        """An iterator over what ``open_pieces()`` yields, holding the turn from its first ``next`` to its end.

        ``record`` gets what was read and the engine's result (None when closed early) once it ends.
        """

        def body(handle: weakref.ref[TextStream]) -> Generator[Any, None, None]:
            seen: list[Any] = []
            started = time.perf_counter()
            first: float | None = None
            result: Any = None
            with self.turns.request(signal, self.check_open, handle):
                try:
                    pieces = open_pieces()
                    try:
                        while True:
                            piece = next(pieces)
                            first = first if first is not None else time.perf_counter() - started
                            seen.append(piece)
                            yield piece
                    except StopIteration as end:
                        result = end.value
                    finally:
                        pieces.close()
                finally:  # still holding the turn: the next call's stats cannot come first
                    if record is not None and (result is not None or seen):
                        record(seen, result, time.perf_counter() - started, first)

        return TextStream(body, signal)
