"""Next-token distributions: top-k summaries, entropy, and reshaping by temperature, top-k and top-p.

Plain tensor functions shared by ``lookinside`` (explain, logit lens) and ``explorer`` (the widget).
"""

from __future__ import annotations

from typing import Any

import torch

from ...core.validation import check_top_k  # noqa: F401  (lives in core: the remote path has no torch)


def summarize(log_probs: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-k probabilities, their ids, and the entropy (nats) of each row, moved to the CPU."""
    probs = log_probs.exp()  # (rows, vocab)
    # p·log p is 0 for p = 0; where() avoids 0·(-inf) = nan for masked tokens.
    entropy = -torch.where(probs > 0, probs * log_probs, 0.0).sum(-1)
    top = probs.topk(k, dim=-1)
    return top.values.cpu(), top.indices.cpu(), entropy.cpu()


def reshape(logits: torch.Tensor, *, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Probabilities after temperature, then top-k, then top-p, as sampling in transformers applies them.

    ``logits`` is one row (vocab,); ``top_k=0`` and ``top_p=1`` turn those filters off.

    >>> reshape(logits, temperature=0.5)   # == softmax(logits / 0.5)   # doctest: +SKIP
    """
    scores = logits.float()[None]  # the warpers work on (batch, vocab)
    for warper in sampling_warpers(temperature, top_k, top_p):
        scores = warper(None, scores)
    return torch.softmax(scores, dim=-1)[0]


def sampling_warpers(temperature: float, top_k: int | None, top_p: float, min_p: float | None = None) -> list:
    """transformers' sampling warpers for these settings, in the order ``generate`` applies them."""
    from transformers import MinPLogitsWarper, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    warpers: list[Any] = [TemperatureLogitsWarper(temperature)] if temperature != 1.0 else []
    warpers += [TopKLogitsWarper(top_k)] if top_k else []
    warpers += [TopPLogitsWarper(top_p)] if top_p < 1.0 else []
    return warpers + ([MinPLogitsWarper(min_p)] if min_p is not None else [])
