"""Prefix reuse: keep the KV cache of the last call, so a prompt that extends it prefills only what is new.

The next chat turn, a panel re-run with more text: the new prompt starts with the last one (and
usually with the reply the model wrote to it). transformers' ``generate`` continues from a
``cache`` it is given, running the model only on the prompt tokens past the cache's length. One
``PrefixCache`` per engine keeps the last call's cache, crops it to the tokens the next prompt
shares with it, and drops it whenever it could be stale. Model thread only, like every torch op.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

logger = logging.getLogger("hfllm_nb")

# The kept cache is dropped rather than kept when it holds more than this: one long chat on a
# big model must not pin gigabytes between calls (SmolLM2-135M in float32: 45 KiB per token).
MAX_KEPT_BYTES = 1 << 30


def shared_prefix(a: list[int], b: list[int]) -> int:
    """How many leading token ids ``a`` and ``b`` have in common."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def weights_fingerprint(model: Any) -> tuple[Any, ...]:
    """What the KV values depend on besides the tokens: which tensors the weights are, and their versions.

    torch bumps a tensor's version on every in-place write (``copy_``, an optimizer step,
    ``load_state_dict``), and swapping a module (an adapter) changes the tensors themselves,
    so either makes the fingerprint differ and the kept cache go.
    """
    versions = []
    for parameter in model.parameters():
        try:
            versions.append((id(parameter), parameter._version))
        except RuntimeError:  # an inference tensor has no version counter: its identity is all we know
            versions.append((id(parameter), None))
    return (id(model), getattr(model.config, "_attn_implementation", None), hash(tuple(versions)))


def cache_bytes(cache: Any) -> int:
    """Bytes the keys and values of ``cache`` hold."""
    total = 0
    for layer in cache.layers:
        for tensor in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if isinstance(tensor, torch.Tensor):
                total += tensor.numel() * tensor.element_size()
    return total


def _croppable(cache: Any) -> bool:
    """Only full-attention layers keep every token's KV: sliding-window and linear-attention layers
    forget old tokens, so a crop back into their past cannot be undone."""
    from transformers.cache_utils import DynamicLayer

    return bool(cache.layers) and all(type(layer) is DynamicLayer for layer in cache.layers)


class PrefixCache:
    """The one kept KV cache of an engine, and the cache of the call running now.

    Args:
        model: the loaded model; its config shapes new caches.
        max_bytes: a kept cache larger than this is dropped after its call.

    >>> prefix = PrefixCache(model)                      # doctest: +SKIP
    >>> reused = prefix.prepare(prompt_ids)              # 0 the first time
    >>> model.generate(input_ids, cache=prefix.live, …)
    >>> prefix.finish(output_ids)                        # kept for the next call
    """

    def __init__(self, model: Any, max_bytes: int = MAX_KEPT_BYTES) -> None:
        self.model = model
        self.max_bytes = max_bytes
        self.live: Any = None  # the cache generate is filling now
        self._kept: Any = None
        self._ids: list[int] = []  # the token ids whose KV ``_kept`` holds, in order
        self._fingerprint: tuple[Any, ...] | None = None

    @staticmethod
    def supported(model: Any) -> bool:
        """False for models whose generation config asks for a cache of its own (static, hybrid, …)."""
        return getattr(model.generation_config, "cache_implementation", None) is None

    @property
    def tokens(self) -> int:
        """How many tokens the kept cache holds (0: none kept)."""
        return len(self._ids) if self._kept is not None else 0

    @property
    def nbytes(self) -> int:
        """Bytes of keys and values the kept cache holds."""
        return cache_bytes(self._kept) if self._kept is not None else 0

    def prepare(self, ids: list[int]) -> int:
        """Make ``live`` the cache for a prompt of ``ids``; returns how many of them it already holds.

        The kept cache is taken out first, so a call that fails leaves nothing behind. At least
        the prompt's last token is always run: generate needs logits to pick the next token.
        """
        from transformers import DynamicCache

        kept, kept_ids, self._kept, self._ids = self._kept, self._ids, None, []
        fingerprint = weights_fingerprint(self.model)
        reused = 0
        if kept is not None and fingerprint == self._fingerprint:
            reused = min(shared_prefix(kept_ids, ids), len(ids) - 1)
        if reused > 0:
            kept.crop(reused - kept.get_seq_length())  # a negative count: remove that many from the end
            self.live = kept
        else:
            self.live = DynamicCache(config=self.model.config.get_text_config(decoder=True))
        self._fingerprint = fingerprint
        return reused

    def finish(self, sequence: list[int], keep: bool = True) -> None:
        """After a call that returned: keep ``live`` for the next call, holding the KV of ``sequence``'s start.

        ``sequence`` is the prompt and the new tokens; the cache holds all but the last new token
        (generate never runs the model on it), so the kept ids are read from the cache's length.
        """
        cache, self.live = self.live, None
        if not keep or cache is None or not _croppable(cache):
            return
        length = cache.get_seq_length()
        if length > len(sequence) or cache_bytes(cache) > self.max_bytes:
            return
        self._kept, self._ids = cache, list(sequence[:length])

    def drop(self) -> None:
        """Forget the kept cache and the live one (after an error, a Stop mid-prefill, a view, close())."""
        self.live = self._kept = None
        self._ids = []
        self._fingerprint = None
