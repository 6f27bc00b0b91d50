"""Stop and timing hooks for in-process generation, and a streamer that surfaces errors from its thread."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
from transformers import StoppingCriteria, TextIteratorStreamer

from .engines.base import StopSignal


class StepWatch(StoppingCriteria):
    """Called once per decoding step: stops on the request's Stop and records when tokens arrive.

    transformers calls stopping criteria after every new token, so this costs one
    ``is_set()`` per step and gives Stop a latency of one step.
    """

    def __init__(self, stop: StopSignal) -> None:
        self.stop = stop
        self.started = time.perf_counter()
        self.first_token_at: float | None = None
        self.steps = 0
        self.stopped = False

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        self.steps += 1
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()
        stop = self.stop.is_set()
        self.stopped = self.stopped or stop
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)


class ThreadedTextStream:
    """Run ``generate`` in a thread and iterate over its text; errors re-raise in the reader.

    The streamer's own ``timeout`` makes each read give up after a short wait, so a generation
    thread that dies, or a KeyboardInterrupt in the kernel, never leaves the reader blocked.
    """

    _READ_TIMEOUT_S = 0.05

    def __init__(self, tokenizer: Any, *, skip_special_tokens: bool = True) -> None:
        self.streamer = TextIteratorStreamer(
            tokenizer, skip_prompt=True, skip_special_tokens=skip_special_tokens, timeout=self._READ_TIMEOUT_S
        )
        self.error: BaseException | None = None
        self.result: Any = None
        self._thread: threading.Thread | None = None

    def start(self, generate_fn: Callable[[TextIteratorStreamer], Any]) -> None:
        def work() -> None:
            try:
                self.result = generate_fn(self.streamer)
            except BaseException as exc:  # handed to the reader, which re-raises it
                self.error = exc
                self.streamer.end()

        self._thread = threading.Thread(target=work, name="hfllm_nb-generate", daemon=True)
        self._thread.start()

    def __iter__(self) -> Iterator[str]:
        assert self._thread is not None, "start() first"
        while True:
            try:
                chunk = next(self.streamer)
            except StopIteration:
                return
            except queue.Empty:
                if not self._thread.is_alive():
                    # Its end signal is queued already, unless it died before it could send one.
                    self.streamer.end()
                continue
            if chunk:
                yield chunk

    def join(self) -> None:
        if self._thread is not None:
            self._thread.join()
