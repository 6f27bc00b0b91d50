"""``TokenStepper``: the model side of ``NextTokenExplorer``, with no widgets.

The tokens so far, their KV cache and the next-token logits. Its model calls are plain
functions (``read_next``) run through ``llm.run``, on the model's own thread, in turn with
generations.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ..core import validation
from ..core.tokens import ExplainedToken, token_text
from ..engines.local.distributions import reshape
from ..engines.local.explain import vocab_size

if TYPE_CHECKING:
    from ..llm import HuggingFaceLLM

_ALTERNATIVES = 5  # kept with each chosen token, for its hover text


@dataclass(frozen=True)
class Reading:
    """One position's next-token numbers, computed in the same model-thread job as its forward pass.

    One job instead of four (forward, probabilities, entropy, greedy's choice): each job is a
    hand-off between threads, and a step of the explorer should cost one forward pass.
    """

    logits: torch.Tensor  # raw, (vocab,) float32 on the CPU
    probabilities: torch.Tensor  # the model's own softmax
    entropy: float  # nats
    top_id: int  # greedy decoding's choice


class TokenStepper:
    """The tokens so far, their KV cache and the next-token logits; every model call is here.

    Each next-token distribution is computed the same way, by reading one token on top of the
    cache of those before it, so ``undo`` (crop the cache by two, re-read one token) gives back
    exactly the numbers shown before.
    """

    def __init__(self, llm: HuggingFaceLLM, prompt: str) -> None:
        if not isinstance(prompt, str):
            validation.check_prompt(prompt)
            raise TypeError("The explorer takes one prompt string, not a list.")
        validation.check_prompt(prompt)
        self._llm = llm
        ids, self.tokenizer, self.vocab_size = llm.run(_read_prompt, prompt)
        if not ids:
            raise ValueError(f"The prompt ({prompt!r}) has no tokens: the tokenizer drops all of it.")
        if len(ids) >= llm.context_length:
            raise ValueError(f"The prompt fills the model's context of {llm.context_length} tokens; shorten it.")
        self.prompt_ids = list(ids)
        self.ids = list(ids)
        self.chosen: list[ExplainedToken] = []
        self._cache: Any = None
        self._reading = self._prompt_reading = self._sync()

    @property
    def reading(self) -> Reading:
        """The next token's numbers at the current position (rebuilt if a model call failed)."""
        if self._cache is None:  # a model call failed earlier: rebuild from the tokens
            self._reading = self._sync()
        return self._reading

    @property
    def logits(self) -> torch.Tensor:
        """Raw next-token logits, (vocab,) float32 on the CPU."""
        return self.reading.logits

    def _sync(self) -> Reading:
        self._cache = None
        if len(self.ids) > 1:
            self._forward(self.ids[:-1], score=False)
        return self._forward(self.ids[-1:])

    def _forward(self, new_ids: list[int], score: bool = True) -> Any:
        try:
            reading, self._cache = self._llm.run(score_next if score else read_next, new_ids, self._cache)
        except BaseException:
            self._cache = None  # it may hold half a step now; rebuilt on next use
            raise
        return reading

    # Vocabulary-wide math runs on the model thread too (``llm.run``): a torch op this large on the
    # widget's thread would give the process a second OpenMP team and slow every later generate.

    def distribution(self, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
        """Next-token probabilities over the vocabulary after temperature, top-k and top-p."""
        return self._llm.run(_reshaped, self.logits, temperature, top_k, top_p)

    def kept(self, temperature: float, top_k: int, top_p: float) -> int:
        """How many tokens keep a probability above 0 after the filters."""
        logits = self.logits  # here, not in the job: after a failed call it rebuilds by running the model
        return self._llm.run(lambda _m, _t: int((_reshaped(_m, _t, logits, temperature, top_k, top_p) > 0).sum()))

    def draw(self, distribution: torch.Tensor, seed: int | None) -> int:
        """One token drawn from ``distribution``; the same seed draws the same token."""
        return self._llm.run(_draw, distribution, seed)

    def argmax(self) -> int:
        return self.reading.top_id

    def raw(self) -> tuple[torch.Tensor, float]:
        """The model's own next-token probabilities and their entropy (nats)."""
        reading = self.reading
        return reading.probabilities, reading.entropy

    def choose(self, token_id: Any, shown: float | None = None) -> int:
        """Append ``token_id``; ``shown`` is its probability where it was chosen, for its record."""
        token_id = self.check_token(token_id)
        if len(self.ids) >= self._llm.context_length:
            raise ValueError(f"The text fills the model's context of {self._llm.context_length} tokens; undo or reset.")
        probabilities, entropy = self.raw()
        top = probabilities.topk(_ALTERNATIVES)
        alternatives = tuple(
            (token_text(self.tokenizer, i)[0], p)
            for i, p in zip(*(top.indices.tolist(), top.values.tolist()), strict=True)
        )
        text, partial = token_text(self.tokenizer, token_id)
        record = ExplainedToken(
            text,
            token_id,
            False,
            float(probabilities[token_id]),
            entropy,
            alternatives,
            tuple(top.indices.tolist()),
            shown,
            partial,
        )
        self._reading = self._forward([token_id])
        self.ids.append(token_id)
        self.chosen.append(record)
        return token_id

    def check_token(self, token_id: Any) -> int:
        """``token_id`` as an int inside the vocabulary, or a TypeError / ValueError saying why not."""
        if isinstance(token_id, bool) or not isinstance(token_id, numbers.Integral):
            raise TypeError(f"token_id must be an int, not {type(token_id).__name__} ({token_id!r}).")
        if not 0 <= token_id < self.logits.shape[0]:
            raise ValueError(f"token_id {token_id} is outside the vocabulary (0 to {self.logits.shape[0] - 1}).")
        return int(token_id)

    def undo(self) -> None:
        """Remove the last chosen token: crop the KV cache, re-read the token before it."""
        if len(self.ids) == len(self.prompt_ids):
            raise ValueError("Nothing to undo: the text is back at the prompt.")
        if self._cache is None:
            self._reading = self._sync()
        self._crop(len(self.ids) - 2)
        self._reading = self._forward(self.ids[-2:-1])
        self.ids.pop()
        self.chosen.pop()

    def release(self) -> None:
        """Drop the KV cache (it can be large); the next step rebuilds it from the tokens."""
        self._cache = None

    def reset(self) -> None:
        """Back to the prompt; its logits were kept, so no model call."""
        self._crop(len(self.prompt_ids))
        self.ids, self.chosen, self._reading = list(self.prompt_ids), [], self._prompt_reading

    def _crop(self, length: int) -> None:
        """Keep the cache of the first ``length`` tokens (a negative count removes tokens)."""
        extra = self._cache.get_seq_length() - length if self._cache is not None else 0
        if extra > 0:
            self._cache.crop(-extra)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)


def _read_prompt(model: Any, tokenizer: Any, prompt: str) -> tuple[list[int], Any, int]:
    """The prompt's ids, the tokenizer, and how many tokens the model scores (run by ``llm.run``)."""
    return tokenizer(prompt)["input_ids"], tokenizer, vocab_size(model, tokenizer)


def read_next(model: Any, tokenizer: Any, new_ids: list[int], cache: Any) -> tuple[torch.Tensor, Any]:
    """Read ``new_ids`` on top of ``cache``: the next-token logits (vocab,) float32 CPU, and the cache."""
    device = model.get_input_embeddings().weight.device
    with torch.inference_mode():
        output = model(input_ids=torch.tensor([new_ids], device=device), cache=cache, use_cache=True)
    return output.logits[0, -1].float().cpu(), output.cache


def score_next(model: Any, tokenizer: Any, new_ids: list[int], cache: Any) -> tuple[Reading, Any]:
    """``read_next``, and the model's own probabilities, entropy and greedy choice from its logits."""
    logits, cache = read_next(model, tokenizer, new_ids, cache)
    probabilities, entropy = _own(model, tokenizer, logits)
    return Reading(logits, probabilities, entropy, int(logits.argmax())), cache


def _reshaped(model: Any, tokenizer: Any, logits: torch.Tensor, temperature: float, top_k: int, top_p: float):
    return reshape(logits, temperature=temperature, top_k=top_k, top_p=top_p)


def _own(model: Any, tokenizer: Any, logits: torch.Tensor) -> tuple[torch.Tensor, float]:
    log_probs = torch.log_softmax(logits, dim=-1)
    entropy = float(-torch.where(log_probs > -torch.inf, log_probs.exp() * log_probs, 0.0).sum())
    return log_probs.exp(), entropy


def _draw(model: Any, tokenizer: Any, distribution: torch.Tensor, seed: int | None) -> int:
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    return int(torch.multinomial(distribution, 1, generator=generator))
