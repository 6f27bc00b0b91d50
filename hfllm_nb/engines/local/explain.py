"""Explained tokens in-process: each token's probability, entropy and top alternatives as it is generated.

The ``ExplainsTokens`` capability of ``LocalEngine``: a ``StepRecorder`` rides along ``model.generate``
on the model thread. Every step is cut down to its top-k, entropy and the chosen token's
probability as soon as it is computed, so no full-vocabulary tensor outlives its step.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import torch
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from ...core.requests import (
    CRITERION,
    END_OF_TEXT,
    LENGTH,
    STOP_STRING,
    STOPPED,
    Completion,
    EngineRequest,
    EngineResult,
)
from ...core.tokens import ExplainedToken, token_text
from ...errors import GenerationError
from .distributions import sampling_warpers, summarize

PROMPT_CHUNK = 256  # prompt rows turned into probabilities at a time (bounds the float32 copy)


@dataclass
class _Job:
    """One explained generation: the prompt's ids, the new-token budget, generate options."""

    ids: list[int]
    budget: int
    options: dict[str, Any]
    seed: int | None
    top_k: int


class StepRecorder(LogitsProcessor, BaseStreamer):
    """Records each generated token's probability, entropy and top-k while ``generate`` runs.

    One object, three hooks: as a forward hook on the model it sees each step's raw logits; as the
    last logits processor, what sampling draws from; as the streamer, the token chosen. A step's
    vocabulary rows wait (on the device) only until its token arrives and goes to ``on_token``.

    >>> recorder = StepRecorder(tokenizer, top_k=5, sampling=False, on_token=tokens.append)   # doctest: +SKIP
    >>> handle = model.register_forward_hook(recorder.on_forward)
    >>> model.generate(ids, logits_processor=[recorder], streamer=recorder)
    """

    def __init__(self, tokenizer: Any, top_k: int, sampling: bool, on_token: Callable[[ExplainedToken], None]) -> None:
        self.tokenizer = tokenizer
        self.top_k = top_k
        self.sampling = sampling
        self.on_token = on_token
        self._pending: deque[dict[str, Any]] = deque()  # steps computed, token not yet chosen
        self._prompt_seen = False

    def on_forward(self, module: Any, args: Any, output: Any) -> None:
        log_probs = torch.log_softmax(output.logits[:, -1].float(), dim=-1)  # (1, vocab)
        values, ids, entropy = summarize(log_probs, self.top_k)
        self._pending.append({"raw": log_probs, "values": values[0], "ids": ids[0], "entropy": entropy[0]})

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.sampling and self._pending:
            self._pending[-1]["sampled"] = torch.softmax(scores, dim=-1)
        return scores

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:  # generate() hands the prompt over first
            self._prompt_seen = True
            return
        token_id = int(value.reshape(-1)[0])
        step = self._pending.popleft()
        raw, sampled = float(step["raw"][0, token_id].exp()), step.get("sampled")
        sampled = float(sampled[0, token_id]) if sampled is not None else None
        top = (step["values"], step["ids"])
        self.on_token(make_token(self.tokenizer, token_id, False, raw, float(step["entropy"]), sampled, top=top))

    def end(self) -> None:
        self._pending.clear()  # a step computed past the end (deferred stop checks) is dropped

    def replay(self, output: Any, prompt_length: int) -> None:
        """Record a finished ``generate(..., output_logits=True)`` step by step, as if it were live."""
        self._prompt_seen = True
        new_ids = output.sequences[0, prompt_length:]
        for step, token_id in enumerate(new_ids.tolist()):
            self.on_forward(None, None, SimpleNamespace(logits=output.logits[step][:, None, :]))
            if self.sampling:
                self(None, output.scores[step])
            self.put(torch.tensor([token_id]))  # one prompt, so no padding follows the last token


def make_token(tokenizer, token_id, is_prompt, probability=None, entropy=None, sampled=None, top=None):
    """An ``ExplainedToken``; ``top`` is (top-k probabilities, their ids) on the CPU."""
    text, partial = token_text(tokenizer, token_id)
    ids = tuple(top[1].tolist()) if top is not None else ()
    values = top[0].tolist() if top is not None else []
    alternatives = tuple((token_text(tokenizer, i)[0], p) for i, p in zip(ids, values, strict=True))
    return ExplainedToken(text, token_id, is_prompt, probability, entropy, alternatives, ids, sampled, partial)


class StopOn(StoppingCriteria):
    """Ends generation within one step once ``stop`` (anything with ``is_set()``) is set."""

    def __init__(self, stop: Any) -> None:
        self.stop = stop

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.stop.is_set(), dtype=torch.bool, device=input_ids.device)


def explain_job(
    model: Any, tokenizer: Any, request: EngineRequest, top_k: int, emit: Callable, stop: Any, *,
    include_prompt: bool, defaults: dict, decode: Callable[[int, int, int], dict],
) -> EngineResult:  # fmt: skip
    """On the model thread: the prompt's tokens (if asked) then each generated one, to ``emit``.

    ``decode`` gives the engine's own generate settings (``compile=True``: the compiled graph),
    used for a whole explanation so explain runs what generate runs; a stream records live.
    """
    options = dict(request.options)
    job = _Job(request.token_ids[0], request.budgets[0], options, options.pop("seed", None), top_k)
    if include_prompt:
        for token in explain_prompt(model, tokenizer, job.ids, top_k):
            emit(token)
    started, first, seen = time.perf_counter(), [], []

    def on_token(token: ExplainedToken) -> None:
        if not first:
            first.append(time.perf_counter() - started)
        seen.append(token)
        emit(token)

    settings = decode(1, len(job.ids), job.budget) if include_prompt else {}
    _generate(model, tokenizer, job, on_token, stop, defaults, settings)
    reason = _finish_reason(model, tokenizer, job, seen, stop.is_set())
    text = tokenizer.decode([t.token_id for t in seen], skip_special_tokens=True)
    ids = [t.token_id for t in seen]
    completion = Completion(text, len(seen), reason, ids)
    return EngineResult([completion], time.perf_counter() - started, first[0] if first else None)


def _finish_reason(model: Any, tokenizer: Any, job: _Job, tokens: list[ExplainedToken], stopped: bool) -> str:
    ends = model.generation_config.eos_token_id
    ends = set(ends) if isinstance(ends, (list, tuple)) else {ends}
    if tokens and tokens[-1].token_id in ends:
        return END_OF_TEXT
    if len(tokens) >= job.budget:
        return LENGTH
    if stopped:
        return STOPPED  # Stop, or a closed stream
    if _ends_with_a_stop_string(tokenizer, job, tokens):
        return STOP_STRING
    return CRITERION  # one of the caller's own stopping criteria


def _ends_with_a_stop_string(tokenizer: Any, job: _Job, tokens: list[ExplainedToken]) -> bool:
    """Whether a stop string ended the run: it may begin in the prompt, as transformers matches it."""
    strings = job.options.get("stop_strings") or []
    tail = tokenizer.decode(job.ids[-8:] + [token.token_id for token in tokens], skip_special_tokens=True)
    return any(string in tail[-(len(string) + 64) :] for string in strings)


def vocab_size(model: Any, tokenizer: Any) -> int:
    """How many tokens the model scores (the width of its logits)."""
    size = getattr(model.config.get_text_config(), "vocab_size", None)
    return size if isinstance(size, int) and size > 0 else len(tokenizer)


def explain_prompt(model: Any, tokenizer: Any, ids: list[int], top_k: int) -> list[ExplainedToken]:
    """Prompt tokens from one forward pass: row i of the logits predicts token i + 1."""
    device = model.get_input_embeddings().weight.device
    tokens = [make_token(tokenizer, ids[0], True)]
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([ids], device=device), use_cache=False).logits[0]  # (n, vocab)
        following = torch.tensor(ids[1:], device=logits.device)
        for start in range(0, len(ids) - 1, PROMPT_CHUNK):
            stop = min(start + PROMPT_CHUNK, len(ids) - 1)
            log_probs = torch.log_softmax(logits[start:stop].float(), dim=-1)
            chosen = log_probs.gather(-1, following[start:stop, None])[:, 0].exp().cpu().tolist()
            values, top_ids, entropy = summarize(log_probs, top_k)
            for row, token_id in enumerate(ids[start + 1 : stop + 1]):
                top = (values[row], top_ids[row])
                tokens.append(make_token(tokenizer, token_id, True, chosen[row], float(entropy[row]), top=top))
    return tokens


def _generate(model, tokenizer, job: _Job, on_token, stop: Any, defaults: dict, decode: dict) -> None:
    """``model.generate`` with a ``StepRecorder`` attached, on the model thread.

    ``defaults`` are the sampling settings generate() falls back to (``llm.sampling_defaults``);
    ``decode`` the engine's own generate settings for this call (``compile=True``'s static cache
    and compiled step), so explain runs the very computation generate runs. A forward hook would
    break that compiled graph, so there the recorder reads the raw logits generate returns at the
    end instead (the tokens then arrive together).
    """
    options = dict(job.options)
    recorder = StepRecorder(tokenizer, job.top_k, options.get("do_sample", False), on_token)
    warpers = []
    if options.get("do_sample"):
        # generate() appends its sampling warpers after every custom processor; we apply them
        # ourselves, in the same order, so the recorder comes last and sees what sampling draws from.
        # Unset ones fall back as in generate(): the model's generation config, else transformers'
        # defaults (top-k 50 among them, which generation_config.top_k alone does not say).
        fallback = {**defaults, "min_p": model.generation_config.min_p}
        given = {name: options.pop(name, None) for name in ("temperature", "top_k", "top_p", "min_p")}
        given = {name: fallback.get(name) if value is None else value for name, value in given.items()}
        warpers = sampling_warpers(given["temperature"], given["top_k"], given["top_p"], given["min_p"])
        options.update(temperature=1.0, top_k=0, top_p=1.0, min_p=None)  # so generate() adds none of its own
    processors = LogitsProcessorList([*(options.pop("logits_processor", None) or []), *warpers, recorder])
    criteria = StoppingCriteriaList([StopOn(stop), *(options.pop("stopping_criteria", None) or [])])
    options = {"do_sample": False, "pad_token_id": tokenizer.pad_token_id, **options}
    if "stop_strings" in options:
        options["tokenizer"] = tokenizer  # transformers needs it to match strings
    device = model.get_input_embeddings().weight.device
    input_ids = torch.tensor([job.ids], device=device)
    replay = bool(decode)
    if replay:
        processors.pop()  # the recorder: it reads generate's returned logits and scores instead
        options.update(decode, return_dict_in_generate=True, output_logits=True, output_scores=recorder.sampling)
    handle = None if replay else model.register_forward_hook(recorder.on_forward)
    # A seed must not disturb the caller's global random state.
    rng = torch.random.fork_rng([device] if device.type == "cuda" else []) if job.seed is not None else None
    out_of_memory = False
    try:
        with rng or contextlib.nullcontext(), torch.inference_mode():
            if job.seed is not None:
                torch.manual_seed(job.seed)
            output = model.generate(
                input_ids=input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=job.budget,
                logits_processor=processors, stopping_criteria=criteria, streamer=None if replay else recorder,
                **options,
            )  # fmt: skip
            if replay:
                recorder.replay(output, len(job.ids))
    except torch.OutOfMemoryError:
        out_of_memory = True  # raised below, once the frames holding the cache are gone
    finally:
        if handle is not None:
            handle.remove()
    if out_of_memory:
        if device.type == "cuda":
            torch.cuda.empty_cache()
        raise GenerationError("Out of memory while explaining; use a shorter prompt or fewer max_new_tokens.")
