"""Per-step hooks for in-process generation: Stop, timing, why each row ended, and streamed text."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from transformers import StoppingCriteria, StopStringCriteria, TextStreamer

from ...core.requests import END_OF_TEXT, STOP_STRING, StopSignal


class StepWatch(StoppingCriteria):
    """Called once per decoding step: stops on the request's Stop and records why each row ended.

    transformers calls stopping criteria after every new token, so Stop has a latency of one
    step. The stop-string check runs here rather than inside ``generate`` so that the step at
    which each row of a batch matched is known: a finished row is then padded with the pad
    token, which for most models is the end token, so reading the padded output afterwards
    would misreport a stop string as the end of text (and miscount its tokens).

    Args:
        stop: the request's Stop.
        end_ids: the model's end-of-text token ids.
        stop_strings: the caller's stop strings, with the tokenizer that matches them.
    """

    def __init__(
        self,
        stop: StopSignal,
        end_ids: set[int] | None = None,
        stop_strings: list[str] | None = None,
        tokenizer: Any = None,
    ) -> None:
        self.stop = stop
        self.started = time.perf_counter()
        self.first_token_at: float | None = None
        self.steps = 0
        self.stopped = False
        self._end_ids = torch.tensor(sorted(end_ids or ()), dtype=torch.long)
        self._strings = StopStringCriteria(tokenizer, stop_strings) if stop_strings else None
        self.ended: dict[int, tuple[int, str]] = {}  # row -> (new tokens it kept, reason)
        self.per_row = True  # False for beam search, whose rows are beams, not prompts

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        self.steps += 1
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()
        stop = self.stop.is_set()
        self.stopped = self.stopped or stop
        done = torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)
        if self._strings is not None:
            matched = self._strings(input_ids, scores)
            done |= matched
            self._note(matched, STOP_STRING)
        if self.per_row and self._end_ids.numel():
            self._note(torch.isin(input_ids[:, -1], self._end_ids.to(input_ids.device)), END_OF_TEXT)
        return done

    def _note(self, rows: torch.Tensor, reason: str) -> None:
        if not self.per_row or not bool(rows.any()):
            return
        for row in rows.nonzero()[:, 0].tolist():
            self.ended.setdefault(row, (self.steps, reason))


class TextEmitter(TextStreamer):
    """transformers' ``TextStreamer`` with its printing replaced by ``emit(text)``.

    The streamer's own logic decides when text is final (whole words, complete characters);
    ``emit`` hands each finished piece to the reader on the other side of the model thread.
    """

    def __init__(self, tokenizer: Any, emit: Callable[[str], None]) -> None:
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.emit = emit

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        if text:
            self.emit(text)
