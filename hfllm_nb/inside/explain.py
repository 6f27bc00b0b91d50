"""``llm.explain``: prompt and continuation token by token, each with its probability and alternatives.

The numbers come from the engine (``ExplainsTokens``: in-process from the logits, remote from the
server's log-probabilities) through the facade's ``explain_stream``; this module gathers them
into an ``Explanation``, which draws itself (``html``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..core.tokens import ExplainedToken
from .html import describe_settings, render_explanation

if TYPE_CHECKING:
    from ..llm import HuggingFaceLLM


@dataclass(frozen=True)
class Explanation:
    """Prompt and continuation, token by token (``llm.explain(...)``); displays as coloured text."""

    tokens: list[ExplainedToken]
    text: str  # prompt + continuation, as generate() returns it
    settings: dict[str, Any] = field(default_factory=dict)  # how the continuation was chosen

    @property
    def generated(self) -> list[ExplainedToken]:
        return [token for token in self.tokens if not token.is_prompt]

    def __repr__(self) -> str:
        new, how = len(self.generated), describe_settings(self.settings)
        return f"Explanation({len(self.tokens) - new} prompt + {new} new tokens, {how}: {self.text!r})"

    def _repr_html_(self) -> str:
        return render_explanation(self)


def explain(llm: HuggingFaceLLM, prompt: str, **kwargs: Any) -> Explanation:
    """``llm.explain`` as a function (kept for code written against 0.1)."""
    return llm.explain(prompt, **kwargs)


def gather(llm: HuggingFaceLLM, tokens: list[ExplainedToken], settings: dict[str, Any]) -> Explanation:
    """The ``Explanation`` of explained tokens, prompt first: its text as ``generate`` returns it."""
    tokenizer = llm.tokenizer
    if llm.in_process:
        text = tokenizer.decode([token.token_id for token in tokens], skip_special_tokens=True)
    else:  # the server's text, after the prompt as our tokenizer reads it
        prompt_ids = [token.token_id for token in tokens if token.is_prompt]
        new_text = "".join(token.text for token in tokens if not token.is_prompt)
        text = tokenizer.decode(prompt_ids, skip_special_tokens=True) + new_text
    return Explanation(tokens, text, settings)


def explain_stream(
    llm: HuggingFaceLLM, prompt: str, max_length: int | None = None, **kwargs: Any
) -> Iterator[ExplainedToken]:
    """``llm.explain_stream`` as a function (kept for code written against 0.1)."""
    return llm.explain_stream(prompt, max_length, **kwargs)
