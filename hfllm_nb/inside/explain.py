"""``llm.explain``: prompt and continuation token by token, each with its probability and alternatives.

The numbers come from the engine (``ExplainsTokens``: in-process from the logits, remote from the
server's log-probabilities) through the facade's ``explain_stream``; this module gathers them
into an ``Explanation``, which draws itself (``html``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..core import validation
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


def explain(
    llm: HuggingFaceLLM,
    prompt: str,
    max_new_tokens: int = 20,
    top_k: int = 5,
    sampling_top_k: int | None = None,
    **generate_kwargs: Any,
) -> Explanation:
    """Continue ``prompt`` (greedy unless ``do_sample=True``) and explain every token (``llm.explain``).

    ``top_k`` is how many alternatives each token keeps; ``sampling_top_k`` is sampling's top-k;
    other sampling settings pass through. ``llm.stop()`` ends it within a step.

    >>> llm.explain("The capital of France is", max_new_tokens=3)   # doctest: +SKIP
    """
    validation.check_top_k(top_k, len(llm.tokenizer))  # named as explain() takes it
    if sampling_top_k is not None:
        generate_kwargs["top_k"] = sampling_top_k
    stream = llm.explain_stream(
        prompt, max_new_tokens=max_new_tokens, alternatives=top_k, include_prompt=True, **generate_kwargs
    )
    tokens = list(stream)
    tokenizer = llm.tokenizer
    if llm.in_process:
        text = tokenizer.decode([token.token_id for token in tokens], skip_special_tokens=True)
    else:  # the server's text, after the prompt as our tokenizer reads it
        prompt_ids = [token.token_id for token in tokens if token.is_prompt]
        text = tokenizer.decode(prompt_ids, skip_special_tokens=True) + "".join(
            token.text for token in tokens if not token.is_prompt
        )
    return Explanation(tokens, text, {"do_sample": False, **generate_kwargs})


def explain_stream(
    llm: HuggingFaceLLM, prompt: str, max_length: int | None = None, **kwargs: Any
) -> Iterator[ExplainedToken]:
    """``llm.explain_stream`` as a function (kept for code written against 0.1)."""
    return llm.explain_stream(prompt, max_length, **kwargs)
