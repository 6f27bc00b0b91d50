"""A server's token log-probabilities (``logprobs`` / ``top_logprobs``) as ``ExplainedToken`` objects.

The completions endpoint of llama.cpp's servers, vLLM, SGLang and Ollama returns, for each
generated token, its log-probability and the top alternatives, keyed by their *text*. Here the
texts become our tokenizer's ids again (same tokenizer as the server's: checked in the tests), and
the numbers become the fields ``llm.explain`` fills in-process. What cannot be known from a top-k
list is said so: the entropy is a lower bound (``ExplainedToken.from_server``).
"""

from __future__ import annotations

import math
from typing import Any

from ...core.tokens import ExplainedToken, token_text

# Servers (wire.detect_dialect) whose prompt log-probabilities were checked against in-process
# numbers and found right: vLLM 0.32 (``prompt_logprobs``, within 1e-5; tests/test_vllm.py).
# llama-cpp-python 0.3.36 lists token i+1's alternatives at token i (``echo: true``), so it is not
# here; prompt tokens then get no probability (None), never a wrong one.
PROMPT_LOGPROBS_RIGHT: frozenset[str] = frozenset({"vllm"})
SERVERS_WITH_LOGPROBS = "llama.cpp (llama-server, llama-cpp-python), vLLM, SGLang and Ollama"


class VocabularyText:
    """Token text -> token id for one tokenizer, built once (a server names tokens by their text)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        size = len(tokenizer)
        texts = tokenizer.batch_decode([[i] for i in range(size)])
        self._ids: dict[str, int] = {}
        for token_id, text in enumerate(texts):
            self._ids.setdefault(text, token_id)  # the lowest id for a text several tokens share

    def id_of(self, text: str) -> int | None:
        return self._ids.get(text)


def entropy_lower_bound(probabilities: list[float]) -> float:
    """Entropy (nats) of a distribution known only by its top entries: never more than the true one.

    The entries' own terms, plus the rest of the mass as if it were one token (spread over many
    tokens, it can only add more).
    """
    known = [p for p in probabilities if p > 0]
    rest = max(0.0, 1.0 - sum(known))
    return -sum(p * math.log(p) for p in known) - (rest * math.log(rest) if rest > 0 else 0.0)


def generated_tokens(logprobs: Any, vocabulary: VocabularyText, top_k: int) -> list[ExplainedToken]:
    """One chunk's (or reply's) ``choice.logprobs`` as explained generated tokens.

    Raises ValueError when the server sent text without log-probabilities.
    """
    texts = _field(logprobs, "tokens") or []
    chosen = _field(logprobs, "token_logprobs") or []
    tops = _field(logprobs, "top_logprobs") or [None] * len(texts)
    if len(chosen) != len(texts) or len(tops) != len(texts):
        raise ValueError(f"log-probabilities that do not line up with the tokens: {logprobs!r:.200}")
    tokens = []
    for text, logprob, top in zip(texts, chosen, tops, strict=True):
        tokens.append(_token(text, logprob, top, vocabulary, top_k))
    return tokens


def prompt_tokens(entries: Any, ids: list[int], tokenizer: Any, top_k: int) -> list[ExplainedToken]:
    """vLLM's ``prompt_logprobs`` (per prompt token: None, or {id: {logprob, rank, ...}}) as prompt tokens.

    Entry i is what the model made of token i given the tokens before it; the first has none.
    Raises ValueError when the entries do not line up with ``ids``.
    """
    if not isinstance(entries, list) or len(entries) != len(ids):
        raise ValueError(f"prompt log-probabilities that do not line up with the {len(ids)} prompt tokens")
    tokens = []
    for token_id, entry in zip(ids, entries, strict=True):
        shown, partial = token_text(tokenizer, token_id)
        if not isinstance(entry, dict):
            tokens.append(ExplainedToken(shown, token_id, True, None, None, partial_bytes=partial, from_server=True))
            continue
        numbers = {int(k): float(_field(v, "logprob")) for k, v in entry.items()}
        probability = math.exp(numbers[token_id]) if token_id in numbers else None
        ranked = sorted(numbers.items(), key=lambda pair: -pair[1])[:top_k]
        alternatives = tuple((token_text(tokenizer, i)[0], math.exp(v)) for i, v in ranked)
        known = [p for _, p in alternatives] + ([probability] if token_id not in dict(ranked) and probability else [])
        entropy = entropy_lower_bound(known)
        ids_ranked = tuple(i for i, _ in ranked)
        token = ExplainedToken(
            shown, token_id, True, probability, entropy, alternatives, ids_ranked, None, partial, True
        )
        tokens.append(token)
    return tokens


def _token(text: str, logprob: float | None, top: Any, vocabulary: VocabularyText, top_k: int) -> ExplainedToken:
    tokenizer = vocabulary.tokenizer
    token_id = _id_for(text, vocabulary)
    probability = math.exp(logprob) if logprob is not None else None
    ranked = sorted(_pairs(top), key=lambda pair: -pair[1])
    alternatives, ids, seen = [], [], set()
    for alt_text, alt_logprob in ranked:
        alt_id = vocabulary.id_of(alt_text)
        if alt_id is None or alt_id in seen:
            continue  # a partial UTF-8 character the server shows as "", or a duplicate
        seen.add(alt_id)
        alternatives.append((token_text(tokenizer, alt_id)[0], math.exp(alt_logprob)))
        ids.append(alt_id)
    known = [p for _, p in alternatives]
    if probability is not None and token_id not in seen:
        known.append(probability)
    entropy = entropy_lower_bound(known) if known else None
    shown, partial = token_text(tokenizer, token_id) if token_id >= 0 else (text, None)
    return ExplainedToken(
        shown, token_id, False, probability, entropy, tuple(alternatives[:top_k]), tuple(ids[:top_k]),
        None, partial, from_server=True,
    )  # fmt: skip


def _id_for(text: str, vocabulary: VocabularyText) -> int:
    """The id of a chosen token from its text; -1 where the text alone cannot tell (a split character)."""
    token_id = vocabulary.id_of(text)
    if token_id is not None:
        return token_id
    ids = vocabulary.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []
    return ids[0] if len(ids) == 1 else -1


def _pairs(top: Any) -> list[tuple[str, float]]:
    """``top_logprobs`` entries as (text, logprob): a dict (legacy completions) or a list of objects (chat)."""
    if top is None:
        return []
    if isinstance(top, dict):
        return [(str(k), float(v)) for k, v in top.items() if v is not None]
    return [(str(_field(entry, "token")), float(_field(entry, "logprob"))) for entry in top]


def _field(item: Any, name: str) -> Any:
    return item.get(name) if isinstance(item, dict) else getattr(item, name, None)
