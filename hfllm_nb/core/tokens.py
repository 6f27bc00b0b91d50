"""Tokens as data: ``ExplainedToken`` (what the model thought of one token) and readable token text.

Plain data shared by the engines that produce explained tokens (local and remote) and the views
that draw them; transformers is imported only when a byte-level tokenizer needs its byte table.
"""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ExplainedToken:
    """One token of an ``Explanation``, with what the model thought of it.

    ``probability`` and ``entropy`` (nats) describe the model's raw distribution for this
    position, before temperature, top-k or top-p; ``sampled_probability`` is the probability
    under the distribution sampling actually drew from (``None`` when greedy or for the prompt).
    ``partial_bytes`` is set when the token holds only part of a UTF-8 character; ``text``
    then shows those bytes as ``\\x`` escapes instead of "�". ``from_server``: the numbers come
    from a server's top-k log-probabilities (a remote engine), so ``entropy`` is a lower bound over
    the returned alternatives, and a prompt token may have no probability (``None``).
    """

    text: str
    token_id: int
    is_prompt: bool
    probability: float | None
    entropy: float | None
    alternatives: tuple[tuple[str, float], ...] = ()
    alternative_ids: tuple[int, ...] = ()
    sampled_probability: float | None = None
    partial_bytes: bytes | None = None
    from_server: bool = False


@functools.cache
def _byte_decoder() -> dict[str, int]:
    # Byte-level BPE (GPT-2, Llama 3, SmolLM) writes each byte as one printable character.
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return {char: byte for byte, char in bytes_to_unicode().items()}


def _piece_bytes(piece: str) -> bytes | None:
    """The raw bytes behind a vocabulary entry, where the tokenizer's scheme tells them."""
    fallback = re.fullmatch(r"<0x([0-9A-Fa-f]{2})>", piece)  # SentencePiece byte fallback
    if fallback:
        return bytes([int(fallback[1], 16)])
    decoder = _byte_decoder()
    if piece and all(char in decoder for char in piece):
        return bytes(decoder[char] for char in piece)
    return None


def token_text(tokenizer: Any, token_id: int) -> tuple[str, bytes | None]:
    """A token as readable text, plus its bytes when it holds only part of a UTF-8 character.

    Such a token decodes to "�" on its own; here its bytes read as ``\\x`` escapes instead.

    >>> token_text(llm.tokenizer, 23274)   # the first two bytes of "日"   # doctest: +SKIP
    ('\\\\xe6\\\\x97', b'\\xe6\\x97')
    """
    text = tokenizer.decode([token_id])
    piece = tokenizer.convert_ids_to_tokens(token_id)
    if "\ufffd" in text and isinstance(piece, str):
        raw = _piece_bytes(piece)
        if raw is not None:
            try:
                return raw.decode("utf-8"), None
            except UnicodeDecodeError:
                return raw.decode("utf-8", errors="backslashreplace"), raw
    if isinstance(piece, str) and piece.startswith("▁") and not text.startswith(" "):
        text = " " + text  # SentencePiece drops a word's leading space when decoding one token
    return text, None


def split_characters(tokens: Sequence[ExplainedToken]) -> list[str | None]:
    """For each token that splits a character: the text it forms with its neighbours, else None."""
    joined: list[str | None] = [None] * len(tokens)
    start = 0
    while start < len(tokens):
        if tokens[start].partial_bytes is None:
            start += 1
            continue
        buffer, end = b"", start
        while end < len(tokens) and tokens[end].partial_bytes is not None:
            buffer += tokens[end].partial_bytes
            end += 1
            with contextlib.suppress(UnicodeDecodeError):
                joined[start:end] = [buffer.decode("utf-8")] * (end - start)
                break
        start = end if joined[start] is not None else start + 1
    return joined
