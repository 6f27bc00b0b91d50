"""A decoding lab: one prompt continued by several decoding strategies, each with its probabilities.

Plain functions, no widgets (``compare_view`` draws). Each lane's text is what
``llm.generate(prompt, **lane, return_full_text=False)`` gives. Greedy and sampling lanes run
through ``llm.explain_stream`` (generate with each token's probability recorded; unlike
``llm.explain`` it passes a sampling ``top_k`` through). Beam search keeps its scores to itself,
so a beam lane is generated, then scored by one teacher-forced forward pass (``llm.run``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..core import options as _options
from ..core import validation
from ..core.tokens import ExplainedToken, token_text
from ..engines.local.explain import explain_prompt

if TYPE_CHECKING:
    from ..llm import HuggingFaceLLM

_ALTERNATIVES = 5  # kept with each token, for its hover text


@dataclass(frozen=True)
class Lane:
    """One decoding strategy's continuation.

    ``tokens`` are the new tokens, each with the model's own probability (``None`` where it is not
    known: a remote engine sends text only); ``log_probability`` is the sum of their natural logs.
    """

    name: str
    options: dict[str, Any]
    text: str
    tokens: list[ExplainedToken]
    log_probability: float | None
    note: str = ""


@dataclass(frozen=True)
class Comparison:
    """Lanes side by side (``llm.compare(prompt, lanes)``); displays as columns of coloured tokens.

    >>> c = llm.compare("Once upon a time", {"greedy": {}, "beam 4": {"num_beams": 4}})   # doctest: +SKIP
    >>> c.texts["greedy"] == llm.generate("Once upon a time", max_new_tokens=20, return_full_text=False)
    True
    """

    prompt: str
    lanes: dict[str, Lane]
    max_new_tokens: int = 20
    notes: list[str] = field(default_factory=list)

    @property
    def texts(self) -> dict[str, str]:
        return {name: lane.text for name, lane in self.lanes.items()}

    @property
    def parting(self) -> int | None:
        """The first new-token position where the lanes do not all agree (``None``: all the same)."""
        sequences = [[t.token_id for t in lane.tokens] for lane in self.lanes.values()]
        for position in range(max(map(len, sequences), default=0)):
            if len({ids[position] if position < len(ids) else None for ids in sequences}) > 1:
                return position
        return None

    def __repr__(self) -> str:
        lanes = ", ".join(f"{name}: {lane.text!r}" for name, lane in self.lanes.items())
        return f"Comparison({self.prompt!r} -> {lanes})"

    def _repr_html_(self) -> str:
        from .compare_html import render_comparison

        return render_comparison(self)


def check_lanes(lanes: Any, in_process: bool) -> dict[str, dict[str, Any]]:
    """Every lane checked as ``generate`` checks its options, before anything runs."""
    if not isinstance(lanes, Mapping):
        raise TypeError(
            f"lanes must be a dict of name -> generate options, e.g. {{'greedy': {{}}, 'beam 4': {{'num_beams': 4}}}}; "
            f"got {type(lanes).__name__}."
        )
    if not lanes:
        raise ValueError("lanes is empty; pass at least one, e.g. {'greedy': {}}.")
    checked = {}
    for name, options in lanes.items():
        if not isinstance(name, str) or not name.strip():
            raise TypeError(f"Each lane needs a non-empty str name, not {name!r}.")
        if not isinstance(options, Mapping):
            raise TypeError(f"lane {name!r}: options must be a dict such as {{'do_sample': True}}, not {options!r}.")
        try:
            clean = _options.check_options(options)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"lane {name!r}: {exc}") from exc
        needs = sorted(set(clean) & set(_options.IN_PROCESS_ONLY))
        if needs and not in_process:
            raise ValueError(
                f"lane {name!r}: {', '.join(needs)} needs the model in this process (in-process engine); "
                "this model runs on a server. Drop that lane, or load the model with HuggingFaceLLM(model_id)."
            )
        checked[name] = clean
    return checked


def compare(llm: HuggingFaceLLM, prompt: str, lanes: dict[str, dict[str, Any]], max_new_tokens: int = 20) -> Comparison:
    """Continue ``prompt`` with each lane's generate options (``llm.compare``)."""
    if not isinstance(prompt, str):
        validation.check_prompt(prompt)
        raise TypeError("Pass one prompt string; compare continues one prompt in several ways.")
    validation.check_prompt(prompt)
    max_new_tokens = validation.check_length("max_new_tokens", max_new_tokens, limit=llm.context_length)
    in_process = llm.in_process  # a remote engine has no weights here: text only
    checked = check_lanes(lanes, in_process)
    results = {}
    notes = [] if in_process else ["probabilities need the model in this process; a server sends text only"]
    for name, options in checked.items():
        run_lane = _remote_lane if not in_process else _beam_lane if _beam(options) else _explained_lane
        results[name] = run_lane(llm, prompt, name, options, max_new_tokens)
        if llm.last_stats is not None and llm.last_stats.stopped:  # llm.stop(): the lanes after it are skipped
            skipped = [other for other in checked if other not in results]
            notes.append(f"stopped during {name!r}" + (f"; not run: {', '.join(skipped)}" if skipped else ""))
            break
    return Comparison(prompt, results, max_new_tokens, notes)


def _total(tokens: list[ExplainedToken]) -> float | None:
    if any(t.probability is None for t in tokens):
        return None
    return sum(math.log(t.probability) if t.probability > 0 else -math.inf for t in tokens)


def _remote_lane(llm: HuggingFaceLLM, prompt: str, name: str, options: dict[str, Any], budget: int) -> Lane:
    """Text from the server; tokens as our tokenizer splits it, with no probabilities."""
    text = llm.generate(prompt, max_new_tokens=budget, return_full_text=False, **options)
    ids = llm.tokenizer(text, add_special_tokens=False)["input_ids"]
    tokens = [ExplainedToken(*token_text(llm.tokenizer, i)[:1], i, False, None, None) for i in ids]
    return Lane(name, options, text, tokens, None, "no probabilities: the server sends text only")


def _beam(options: dict[str, Any]) -> bool:
    return options.get("num_beams", 1) > 1


def _explained_lane(llm: HuggingFaceLLM, prompt: str, name: str, options: dict[str, Any], budget: int) -> Lane:
    """Greedy and sampling: the tokens as generated, each recorded with its probability on the way."""
    # generate() samples with transformers' default top_k (50) when none is given; explain_stream
    # reads the generation config, which leaves it unset, so the default is passed explicitly.
    defaults = {"top_k": llm.sampling_defaults["top_k"]} if options.get("do_sample") else {}
    stream = llm.explain_stream(prompt, max_new_tokens=budget, alternatives=_ALTERNATIVES, **{**defaults, **options})
    tokens = list(stream)
    text = llm.tokenizer.decode([t.token_id for t in tokens], skip_special_tokens=True)  # as generate decodes
    return Lane(name, options, text, tokens, _total(tokens))


def _beam_lane(llm: HuggingFaceLLM, prompt: str, name: str, options: dict[str, Any], budget: int) -> Lane:
    """Beam search keeps its scores to itself: generate's text, then one teacher-forced pass scores it."""
    text = llm.generate(prompt, max_new_tokens=budget, return_full_text=False, **options)
    prompt_ids = llm.tokenizer(prompt)["input_ids"]
    new_ids = llm.tokenizer(text, add_special_tokens=False)["input_ids"]
    tokens = llm.run(score_continuation, prompt_ids, new_ids) if new_ids else []
    return Lane(name, options, text, tokens, _total(tokens), "scored afterwards, as the tokenizer splits its text")


def score_continuation(model: Any, tokenizer: Any, prompt_ids: list[int], new_ids: list[int]) -> list[ExplainedToken]:
    """Each of ``new_ids`` with its probability given everything before it: one teacher-forced pass.

    Runs on the model's thread (``llm.run``); the prompt's own rows are scored and dropped.
    """
    scored = explain_prompt(model, tokenizer, prompt_ids + new_ids, _ALTERNATIVES)[len(prompt_ids) :]
    return [dataclasses.replace(token, is_prompt=False) for token in scored]
