"""Look inside the model: each token's probability, the top alternatives, a logit lens.

Plain functions on the in-process model, no widgets (``explain_view`` draws, ``explorer`` is the
widget). Every step is cut down to its top-k, entropy and the chosen token's probability as soon
as it is computed, so no full-vocabulary tensor outlives its step.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import torch
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from ..core import budgets, validation
from ..core import options as _options
from ..core.requests import END_OF_TEXT, LENGTH, STOP_STRING, STOPPED
from ..core.stats import GenerationStats
from ..engines.local.distributions import check_top_k, sampling_warpers, summarize
from ..engines.remote import explain as _remote_explain
from ..errors import GenerationError
from .html import ExplainedToken, Explanation, token_text

if TYPE_CHECKING:
    from ..llm import HuggingFaceLLM

_PROMPT_CHUNK = 256  # prompt rows turned into probabilities at a time (bounds the float32 copy)


# ----------------------------------------------------------------------------- distributions


# ----------------------------------------------------------------------------- the recorder


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
        self.on_token(_make_token(self.tokenizer, token_id, False, raw, float(step["entropy"]), sampled, top=top))

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


def _make_token(tokenizer, token_id, is_prompt, probability=None, entropy=None, sampled=None, top=None):
    """An ``ExplainedToken``; ``top`` is (top-k probabilities, their ids) on the CPU."""
    text, partial = token_text(tokenizer, token_id)
    ids = tuple(top[1].tolist()) if top is not None else ()
    values = top[0].tolist() if top is not None else []
    alternatives = tuple((token_text(tokenizer, i)[0], p) for i, p in zip(ids, values, strict=True))
    return ExplainedToken(text, token_id, is_prompt, probability, entropy, alternatives, ids, sampled, partial)


class _StopOn(StoppingCriteria):
    """Ends generation within one step once ``event`` is set (a closed stream, Stop)."""

    def __init__(self, *events: Any) -> None:
        self.events = [event for event in events if event is not None]

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        stop = any(event.is_set() for event in self.events)
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)


# ----------------------------------------------------------------------------- explain


@dataclass
class _Job:
    """A checked request: the prompt's ids, the new-token budget, generate options."""

    ids: list[int]
    budget: int
    options: dict[str, Any]
    seed: int | None
    top_k: int
    label: str = ""  # the limit that applies, e.g. "max_length=20", for GenerationStats


def explain(
    llm: HuggingFaceLLM,
    prompt: str,
    max_new_tokens: int = 20,
    top_k: int = 5,
    sampling_top_k: int | None = None,
    decode: Callable[[int, int, int], dict] | None = None,
    **generate_kwargs: Any,
) -> Explanation:
    """Continue ``prompt`` (greedy unless ``do_sample=True``) and explain every token (``llm.explain``).

    ``top_k`` is how many alternatives each token keeps; ``sampling_top_k`` is sampling's top-k;
    other sampling settings pass through. ``llm.stop()`` ends it within a step. ``decode(batch,
    prompt_width, new_tokens)`` gives the engine's own generate settings (``llm.explain`` passes
    them), so a compiled model is explained on the graph its ``generate`` runs.

    >>> llm.explain("The capital of France is", max_new_tokens=3)   # doctest: +SKIP
    """
    if _remote_explain.is_remote(llm):  # a server: from its log-probabilities
        settings = {"max_new_tokens": max_new_tokens, "top_k": top_k, "sampling_top_k": sampling_top_k}
        return _remote_explain.explain(llm, prompt, **settings, **generate_kwargs)
    if sampling_top_k is not None:
        generate_kwargs["top_k"] = sampling_top_k
    decode = decode or (lambda batch, width, new_tokens: {})
    job = _tokenize(llm, *_check(llm, prompt, None, max_new_tokens, top_k, generate_kwargs))
    tokens: list[ExplainedToken] = list(llm.run_stream(_explain_job, job, llm.sampling_defaults, decode))
    text = llm.tokenizer.decode([token.token_id for token in tokens], skip_special_tokens=True)
    settings = {"do_sample": False, **job.options, **({"seed": job.seed} if job.seed is not None else {})}
    return Explanation(tokens, text, settings)


def explain_stream(
    llm: HuggingFaceLLM,
    prompt: str,
    max_length: int | None = None,
    *,
    max_new_tokens: int | None = None,
    alternatives: int = 5,
    add_special_tokens: bool = True,
    stop_event: Any = None,
    **generate_kwargs: Any,
) -> Iterator[ExplainedToken]:
    """Yield each new token, explained, as it is generated: ``llm.stream`` with probabilities.

    Takes what ``llm.stream`` takes (sampling ``top_k`` too); ``alternatives`` is how many likely
    tokens each keeps. Input is checked here, before the first token. Closing the iterator,
    ``llm.stop()`` or setting ``stop_event`` (anything with ``is_set()``) stops within a step; an
    error in the run is raised in the reader. ``add_special_tokens=False`` suits a prompt from
    ``llm.format_chat``; lengths then bound the reply alone, as in ``chat``. Sets ``llm.last_stats``.

    >>> for token in explain_stream(llm, "Once upon a time,", max_new_tokens=5):   # doctest: +SKIP
    ...     print(repr(token.text), round(token.probability, 3))
    """
    if _remote_explain.is_remote(llm):  # a server: from its log-probabilities
        return _remote_explain.explain_stream(
            llm, prompt, max_length, max_new_tokens=max_new_tokens, alternatives=alternatives,
            add_special_tokens=add_special_tokens, stop_event=stop_event, **generate_kwargs,
        )  # fmt: skip
    if not isinstance(add_special_tokens, bool):
        raise TypeError(f"add_special_tokens must be True or False, not {add_special_tokens!r}.")
    request = _check(llm, prompt, max_length, max_new_tokens, alternatives, generate_kwargs, "alternatives")
    job = _tokenize(llm, *request, add_special_tokens=add_special_tokens)
    tokens = llm.run_stream(_explain_job, job, llm.sampling_defaults, None, stop_event)
    return _timed(llm, job, tokens, stop_event)


def _explain_job(model, tokenizer, emit, stop, job: _Job, defaults: dict, decode: Any, stop_event: Any = None) -> None:
    """On the model thread: the prompt's tokens then each generated one, to ``emit``.

    ``decode`` is the engine's ``decode_options`` for a whole explanation, None for a stream.
    """
    if decode is not None:
        for token in _explain_prompt(model, tokenizer, model.device, job):
            emit(token)
    options = decode(1, len(job.ids), job.budget) if decode is not None else {}
    _generate(model, tokenizer, model.device, job, emit, (stop, stop_event), defaults, options)


def _timed(llm: HuggingFaceLLM, job: _Job, tokens: Iterator[ExplainedToken], stop_event: Any):
    """Pass the tokens on and set ``llm.last_stats`` when the run ends, as ``stream`` does."""
    seen: list[ExplainedToken] = []
    started = time.perf_counter()
    first: float | None = None
    finished = False
    try:
        for token in tokens:
            first = first if first is not None else time.perf_counter() - started
            seen.append(token)
            yield token
        finished = True
    finally:
        tokens.close()  # a break or Ctrl-C here: stops the run within a step
        if finished or seen:
            stopped = not finished or bool(stop_event is not None and stop_event.is_set())
            llm.last_stats = _stats(llm, job, seen, stopped, time.perf_counter() - started, first)


def _stats(llm, job: _Job, tokens: list[ExplainedToken], stopped: bool, seconds: float, first) -> GenerationStats:
    """What ``llm.last_stats`` says after a plain run: so the panel's status line reads alike."""
    ends = llm.model.generation_config.eos_token_id
    ends = set(ends) if isinstance(ends, (list, tuple)) else {ends}
    if tokens and tokens[-1].token_id in ends:
        reason = END_OF_TEXT
    elif len(tokens) >= job.budget:
        reason = LENGTH
    elif not stopped and _ends_with_a_stop_string(llm.tokenizer, job, tokens):
        reason = STOP_STRING
    else:
        reason = STOPPED  # Stop, a closed stream, or a stopping criterion of the caller's
    return GenerationStats(len(job.ids), len(tokens), seconds, first, (reason,), job.label)


def _ends_with_a_stop_string(tokenizer: Any, job: _Job, tokens: list[ExplainedToken]) -> bool:
    """Whether a stop string ended the run: it may begin in the prompt, as transformers matches it."""
    strings = job.options.get("stop_strings") or []
    tail = tokenizer.decode(job.ids[-8:] + [token.token_id for token in tokens], skip_special_tokens=True)
    return any(string in tail[-(len(string) + 64) :] for string in strings)


def _check(llm, prompt, max_length, max_new_tokens, top_k, options, name="top_k") -> tuple:
    """Every check that needs no model call, done before the model is taken."""
    if not isinstance(prompt, str):
        validation.check_prompt(prompt)  # a precise message for wrong types
        raise TypeError("Pass one prompt string; the look-inside views take one prompt at a time.")
    validation.check_prompt(prompt)
    check_top_k(top_k, vocab_size(llm.model, llm.tokenizer), name)
    max_length = validation.check_length("max_length", max_length, limit=llm.context_length)
    max_new_tokens = validation.check_length("max_new_tokens", max_new_tokens, limit=llm.context_length)
    if max_length is not None and max_new_tokens is not None:
        raise ValueError(f"Pass max_length ({max_length}) or max_new_tokens ({max_new_tokens}), not both.")
    options = _options.check_options(options)
    if options.get("num_beams", 1) > 1:
        raise ValueError(
            f"num_beams={options['num_beams']} cannot be explained token by token: beam search keeps several "
            "sequences and picks one at the end. Drop num_beams here, or use generate() for beam search."
        )
    return prompt, max_length, max_new_tokens, top_k, options


def _tokenize(llm, prompt, max_length, max_new_tokens, top_k, options, add_special_tokens=True) -> _Job:
    """The prompt's ids and how many tokens may follow, by the budget rules generate() uses."""
    _, (ids,), (budget,), label = budgets.plan(
        llm.tokenizer,
        prompt,
        max_length,
        max_new_tokens,
        context_length=llm.context_length,
        default_max_length=llm.max_length,
        chat=not add_special_tokens,  # a prompt from format_chat: lengths bound the reply, as in chat()
    )
    return _Job(ids, budget, options, options.pop("seed", None), top_k, label)


def vocab_size(model: Any, tokenizer: Any) -> int:
    """How many tokens the model scores (the width of its logits)."""
    size = getattr(model.config.get_text_config(), "vocab_size", None)
    return size if isinstance(size, int) and size > 0 else len(tokenizer)


def _explain_prompt(model: Any, tokenizer: Any, device: torch.device, job: _Job) -> list[ExplainedToken]:
    """Prompt tokens from one forward pass: row i of the logits predicts token i + 1."""
    ids = job.ids
    tokens = [_make_token(tokenizer, ids[0], True)]
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([ids], device=device), use_cache=False).logits[0]  # (n, vocab)
        following = torch.tensor(ids[1:], device=logits.device)
        for start in range(0, len(ids) - 1, _PROMPT_CHUNK):
            stop = min(start + _PROMPT_CHUNK, len(ids) - 1)
            log_probs = torch.log_softmax(logits[start:stop].float(), dim=-1)
            chosen = log_probs.gather(-1, following[start:stop, None])[:, 0].exp().cpu().tolist()
            values, top_ids, entropy = summarize(log_probs, job.top_k)
            for row, token_id in enumerate(ids[start + 1 : stop + 1]):
                top = (values[row], top_ids[row])
                tokens.append(_make_token(tokenizer, token_id, True, chosen[row], float(entropy[row]), top=top))
    return tokens


def _generate(model, tokenizer, device, job: _Job, on_token, stop_events, defaults: dict, decode: dict) -> None:
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
    criteria = StoppingCriteriaList([_StopOn(*stop_events), *(options.pop("stopping_criteria", None) or [])])
    options = {"do_sample": False, "pad_token_id": tokenizer.pad_token_id, **options}
    if "stop_strings" in options:
        options["tokenizer"] = tokenizer  # transformers needs it to match strings
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
