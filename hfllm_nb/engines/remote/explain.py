"""``llm.explain`` and ``explain_stream`` on a remote engine, from the server's log-probabilities.

The in-process views compute every number from the model's logits; a server hands back only each
token's log-probability and its top alternatives (``engines/_openai_logprobs``). The results are
the same ``Explanation`` / ``ExplainedToken`` objects, marked ``from_server``: entropy is a lower
bound, and prompt tokens have no probability (``None``) unless the server's prompt
log-probabilities were verified right (vLLM's are; llama-cpp-python's are shifted by one).
"""

from __future__ import annotations

import time
from collections.abc import Generator, Iterator
from typing import TYPE_CHECKING, Any

from ...core import budgets as _budgets
from ...core import options as _options
from ...core import validation
from ...core.requests import STOPPED, Completion, EngineRequest, EngineResult
from ...core.stats import GenerationStats
from ...inside.html import ExplainedToken, Explanation, token_text

if TYPE_CHECKING:
    from ...llm import HuggingFaceLLM


def is_remote(llm: HuggingFaceLLM) -> bool:
    """True when the model runs on a server that can explain from log-probabilities."""
    return hasattr(llm._engine, "explain_stream")


def explain(
    llm: HuggingFaceLLM,
    prompt: str,
    max_new_tokens: int = 20,
    top_k: int = 5,
    sampling_top_k: int | None = None,
    **generate_kwargs: Any,
) -> Explanation:
    """``llm.explain`` on a server: the prompt's tokens (with probabilities where the server's are right) and
    each new token explained.

    ``top_k`` is how many alternatives each token keeps; ``sampling_top_k`` is sampling's top-k.
    """
    if sampling_top_k is not None:
        generate_kwargs["top_k"] = sampling_top_k
    request, label = _request(llm, prompt, None, max_new_tokens, top_k, True, generate_kwargs)
    outcome: list[EngineResult] = []
    generated = list(_run(llm, request, top_k, None, label, outcome, "top_k"))
    prompt_ids = request.token_ids[0]
    tokenizer = llm.tokenizer
    prompt_tokens = llm._engine.explain_prompt(prompt_ids, top_k) or [
        ExplainedToken(token_text(tokenizer, i)[0], i, True, None, None, partial_bytes=token_text(tokenizer, i)[1],
                       from_server=True)
        for i in prompt_ids
    ]  # fmt: skip
    continuation = outcome[0].completions[0].text if outcome else "".join(t.text for t in generated)
    text = tokenizer.decode(prompt_ids, skip_special_tokens=True) + continuation
    options = dict(request.options)
    settings = {"do_sample": False, **options}
    return Explanation(prompt_tokens + generated, text, settings)


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
    """``lookinside.explain_stream`` on a server: input checked here, tokens yielded as they come."""
    if not isinstance(add_special_tokens, bool):
        raise TypeError(f"add_special_tokens must be True or False, not {add_special_tokens!r}.")
    request, label = _request(
        llm, prompt, max_length, max_new_tokens, alternatives, add_special_tokens, generate_kwargs, "alternatives"
    )
    return _run(llm, request, alternatives, stop_event, label, [], "alternatives")


def _request(llm, prompt, max_length, max_new_tokens, top_k, add_special_tokens, options, name="top_k"):
    """Everything checked before any request: prompt, lengths, options, how many alternatives."""
    if not isinstance(prompt, str):
        validation.check_prompt(prompt)
        raise TypeError("Pass one prompt string; the look-inside views take one prompt at a time.")
    llm._check_open()
    validation.check_top_k(top_k, len(llm.tokenizer), name)
    options = _options.check_options(options, streaming=True)
    llm._engine.check_options(options)
    prompts, encoded, budgets, label = _budgets.plan(
        llm.tokenizer,
        prompt,
        max_length,
        max_new_tokens,
        context_length=llm.context_length,
        default_max_length=llm.max_length,
        chat=not add_special_tokens,  # a prompt from format_chat: lengths bound the reply, as in chat()
    )
    return EngineRequest(prompts, encoded, budgets, options, llm._turns.new_signal(), None), label


def _run(
    llm: HuggingFaceLLM,
    request: EngineRequest,
    top_k: int,
    stop_event: Any,
    label: str,
    outcome: list,
    name: str = "alternatives",
) -> Generator[ExplainedToken, None, None]:
    """Take the model's turn, stream the explained tokens, and record ``llm.last_stats`` however it ends."""
    seen: list[ExplainedToken] = []
    started = time.perf_counter()
    result: EngineResult | None = None
    try:
        with llm._turns.request(request.stop, llm._check_open):
            pieces = llm._engine.explain_stream(request, top_k, stop_event, name)
            try:
                while True:
                    token = next(pieces)
                    seen.append(token)
                    yield token
            except StopIteration as end:
                result = end.value
            finally:
                pieces.close()
    finally:
        if result is None and seen:  # closed early: count what was read
            text = "".join(token.text for token in seen)
            result = EngineResult([Completion(text, len(seen), STOPPED)], time.perf_counter() - started, None)
        if result is not None:
            outcome.append(result)
            completion = result.completions[0]
            new_tokens = len(seen) if seen else completion.new_tokens
            llm.last_stats = GenerationStats(
                len(request.token_ids[0]), new_tokens, result.seconds, result.time_to_first_token,
                (completion.finish_reason,), label,
            )  # fmt: skip
