"""``GenerationStats``: what the last generation cost, and why it ended."""

from __future__ import annotations

from dataclasses import dataclass

from .requests import END_OF_TEXT, LENGTH, STOP_STRING, STOPPED


@dataclass(frozen=True)
class GenerationStats:
    """Tokens, time and end reason of one call; ``llm.last_stats`` holds the latest.

    ``finish_reasons`` has one entry per prompt: "end of text" (the model's end token),
    "length" (the budget ran out), "stop string" or "stopped" (``llm.stop()``, Stop, a closed
    stream). ``budget`` names the limit that applied, e.g. "max_length=20".
    ``prompt_tokens_reused``: how many prompt tokens were not run again because the previous call
    on this model had them (an in-process model keeps the KV cache of its last prompt and reply;
    servers do their own prefix caching, so for them it stays 0).
    """

    prompt_tokens: int
    new_tokens: int
    seconds: float
    time_to_first_token: float | None
    finish_reasons: tuple[str, ...]
    budget: str
    peak_gpu_memory: int | None = None
    prompt_tokens_reused: int = 0

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0

    @property
    def stopped(self) -> bool:
        """True when Stop (or closing the stream) ended the run early."""
        return STOPPED in self.finish_reasons

    @property
    def finish_reason(self) -> str:
        """The one reason, or the distinct reasons of a batch joined by ", "."""
        return ", ".join(dict.fromkeys(self.finish_reasons))

    @property
    def ended_because(self) -> str:
        """Why the run ended, in words for a status line: "end of text", "max_length=20 reached", …"""
        words = {
            END_OF_TEXT: "end of text",
            LENGTH: f"{self.budget} reached",
            STOP_STRING: "stop string",
            STOPPED: "stopped",
        }
        return ", ".join(dict.fromkeys(words.get(r, r) for r in self.finish_reasons))
