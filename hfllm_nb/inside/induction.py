"""Induction heads: on a random sequence shown twice, heads that look back at "what came after this token last time".

Why random tokens: nothing in them can be predicted from language, so the second copy's low loss
can only come from copying the first, and the heads that do the copying stand out. Also the
prompt the attention view needs: five tokens show nothing but the first-token sink.
"""

from __future__ import annotations

import random
from typing import Any

import torch


def repeated_random_text(tokenizer: Any, length: int = 20, seed: int = 0) -> tuple[str, list[int]]:
    """``length`` random whole-word tokens, written twice: the text and its token ids (``2 * length``).

    Words are drawn from the vocabulary's space-prefixed alphabetic tokens and kept only if the
    doubled text tokenizes back to exactly those ids, so ``llm.attention(text)`` sees this sequence.
    """
    if isinstance(length, bool) or not isinstance(length, int) or not 2 <= length <= 500:
        raise ValueError(f"length must be an int from 2 to 500, not {length!r}.")
    words = sorted(
        i
        for piece, i in tokenizer.get_vocab().items()
        if piece.startswith("Ġ") and piece[1:].isascii() and piece[1:].isalpha() and len(piece) > 3
    )
    if len(words) < 10 * length:
        raise ValueError("This tokenizer has too few space-prefixed word tokens (a byte-level BPE, like GPT-2's?).")
    rng = random.Random(seed)
    for _ in range(100):
        ids = rng.sample(words, length)
        text = tokenizer.decode(ids * 2)
        if list(tokenizer(text, add_special_tokens=False)["input_ids"]) == ids * 2:
            return text, ids * 2
    raise ValueError("No random sequence tokenized back to itself in 100 tries; try another seed.")


def induction_scores(weights: torch.Tensor, period: int) -> torch.Tensor:
    """Per layer × head, the mean attention from each token of the second copy to the token after its first copy.

    ``weights`` is ``llm.attention(text).weights`` (layers, heads, n, n) for a text that repeats with
    ``period`` tokens; token i (i ≥ period) looks at i - period + 1 in a perfect induction head: 1.0.
    """
    n = weights.shape[-1]
    if not 1 <= period < n:
        raise ValueError(f"period must be from 1 to {n - 1} for {n} tokens, not {period!r}.")
    queries = torch.arange(period, n)
    return weights[:, :, queries, queries - period + 1].mean(-1)


def top_heads(scores: torch.Tensor, k: int = 5) -> list[tuple[int, int, float]]:
    """The ``k`` highest-scoring heads as (layer, head, score)."""
    heads = scores.shape[1]
    order = scores.flatten().argsort(descending=True)[:k].tolist()
    return [(i // heads, i % heads, float(scores.flatten()[i])) for i in order]
