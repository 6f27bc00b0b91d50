"""Stop and timing hooks for generation, and a streamer that surfaces errors from its thread."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator

import torch
from transformers import StoppingCriteria, TextIteratorStreamer


class StepWatch(StoppingCriteria):
    """Called once per decoding step: stops on ``stop_event`` and records when tokens arrive.

    transformers calls stopping criteria after every new token, so this costs one
    ``Event.is_set()`` per step and gives Stop a latency of one step.
    """

    def __init__(self, stop_event: threading.Event) -> None:
        self.stop_event = stop_event
        self.started = time.perf_counter()
        self.first_token_at: float | None = None
        self.steps = 0
        self.stopped = False

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        self.steps += 1
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()
        stop = self.stop_event.is_set()
        self.stopped = self.stopped or stop
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)


class ThreadedTextStream:
    """Run ``generate`` in a thread and iterate over its text; errors re-raise in the reader.

    The reader polls the queue with a short timeout so that a generation thread that
    dies, or a KeyboardInterrupt in the kernel, never leaves it blocked forever.
    """

    _POLL_S = 0.05

    def __init__(self, tokenizer, *, skip_special_tokens: bool = True) -> None:
        self.streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=skip_special_tokens)
        self.error: BaseException | None = None
        self._thread: threading.Thread | None = None

    def start(self, generate_fn) -> None:
        def work() -> None:
            try:
                generate_fn(self.streamer)
            except BaseException as exc:  # handed to the reader, which re-raises it
                self.error = exc
                self.streamer.end()

        self._thread = threading.Thread(target=work, name="hfllm_nb-generate", daemon=True)
        self._thread.start()

    def __iter__(self) -> Iterator[str]:
        assert self._thread is not None, "start() first"
        stop_signal = self.streamer.stop_signal
        while True:
            try:
                chunk = self.streamer.text_queue.get(timeout=self._POLL_S)
            except queue.Empty:
                if not self._thread.is_alive() and self.streamer.text_queue.empty():
                    return
                continue
            if chunk is stop_signal:
                return
            if chunk:
                yield chunk

    def join(self) -> None:
        if self._thread is not None:
            self._thread.join()
