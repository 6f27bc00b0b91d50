"""One validated set of generation options, shared by generate, stream, chat, the panel and the CLI.

A curated allow-list rather than every ``GenerationConfig`` field: each option here is checked
before the model runs, and each one either works on every surface or is refused with a reason.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Mapping
from typing import Any

from . import validation as _validation
from .validation import short

# Options every engine understands (a remote engine may still refuse one the server lacks).
SAMPLING_OPTIONS = ("do_sample", "temperature", "top_p", "top_k", "min_p", "repetition_penalty", "seed")
ENDING_OPTIONS = ("stop_strings", "min_new_tokens")
# Options only an in-process transformers model can honour.
SEARCH_OPTIONS = ("num_beams", "length_penalty", "early_stopping", "no_repeat_ngram_size", "bad_words_ids")
HOOK_OPTIONS = ("stopping_criteria", "logits_processor")
ALLOWED_OPTIONS = SAMPLING_OPTIONS + ENDING_OPTIONS + SEARCH_OPTIONS + HOOK_OPTIONS
IN_PROCESS_ONLY = SEARCH_OPTIONS + HOOK_OPTIONS

# Flags that change what generate() returns: we always return text.
_OUTPUT_FLAGS = (
    "return_dict_in_generate",
    "output_scores",
    "output_logits",
    "output_attentions",
    "output_hidden_states",
)
# Set by the wrapper itself: passing them would fight it.
_RESERVED = ("input_ids", "attention_mask", "inputs", "streamer", "max_length", "max_new_tokens", "tokenizer")


def check_options(options: Mapping[str, Any], *, streaming: bool = False) -> dict[str, Any]:
    """Validate generation options and return a clean copy (numbers normalised to Python types).

    Raises TypeError for an unknown or wrongly typed option and ValueError for a bad value,
    each naming the option and what to do instead.

    >>> check_options({"do_sample": True, "temperature": 2})
    {'do_sample': True, 'temperature': 2.0}
    """
    options = dict(options)
    reserved = sorted(set(options) & set(_RESERVED))
    if reserved:
        raise TypeError(
            f"{', '.join(reserved)} cannot be passed as a generation option: pass the prompt as text "
            "and max_length / max_new_tokens as their own arguments."
        )
    outputs = sorted(set(options) & set(_OUTPUT_FLAGS))
    if outputs:
        raise ValueError(
            f"{', '.join(outputs)} would change what generate() returns, and it always returns text. "
            "For token probabilities use llm.explain(prompt); for every layer's guess, llm.logit_lens(prompt)."
        )
    returns = options.pop("num_return_sequences", 1)
    if returns != 1:
        raise ValueError(
            f"num_return_sequences={short(returns)} is not supported; call generate() several times "
            "with do_sample=True and different seeds instead."
        )
    unknown = sorted(k for k in options if k not in ALLOWED_OPTIONS)
    if unknown:
        raise TypeError(
            f"Unknown generation option(s) {', '.join(map(repr, unknown))}. Supported: {', '.join(ALLOWED_OPTIONS)}."
        )
    _validation.check_sampling(options)
    _check_int(options, "min_new_tokens", low=0)
    _check_int(options, "no_repeat_ngram_size", low=0)
    _check_int(options, "num_beams", low=1)
    if options.get("num_beams", 1) > 1:
        if options.get("do_sample"):
            raise ValueError("num_beams > 1 with do_sample=True is not supported; choose beam search or sampling.")
        if streaming:
            raise ValueError(
                f"num_beams={options['num_beams']} cannot stream: beam search only knows the best sequence "
                "at the end. Use generate() for beam search, or drop num_beams to stream."
            )
    for name in ("length_penalty",):
        if name in options:
            value = options[name]
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or value != value:
                raise TypeError(f"{name} must be a number, not {short(value)}.")
            options[name] = float(value)
    if "early_stopping" in options and not isinstance(options["early_stopping"], bool):
        raise TypeError(f"early_stopping must be True or False, not {short(options['early_stopping'])}.")
    if "stop_strings" in options:
        options["stop_strings"] = _stop_strings(options["stop_strings"])
    if "bad_words_ids" in options:
        options["bad_words_ids"] = _token_lists("bad_words_ids", options["bad_words_ids"])
    for name in HOOK_OPTIONS:
        if name in options:
            options[name] = _hooks(name, options[name])
    return options


def _check_int(options: dict[str, Any], name: str, *, low: int) -> None:
    if name not in options:
        return
    value = options[name]
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, not {type(value).__name__} ({short(value)}).")
    if value < low:
        raise ValueError(f"{name} must be at least {low}, got {value}.")
    options[name] = int(value)


def _stop_strings(value: Any) -> list[str]:
    strings = [value] if isinstance(value, str) else value
    if not isinstance(strings, (list, tuple)) or not strings:
        raise TypeError(f"stop_strings must be a string or a non-empty list of strings, not {short(value)}.")
    for item in strings:
        if not isinstance(item, str) or not item:
            raise TypeError(f"every stop string must be a non-empty str; got {short(item)} in stop_strings.")
    return list(strings)


def _token_lists(name: str, value: Any) -> list[list[int]]:
    if not isinstance(value, (list, tuple)) or not value:
        raise TypeError(f"{name} must be a list of token-id lists such as [[123], [45, 67]], not {short(value)}.")
    result = []
    for item in value:
        if not isinstance(item, (list, tuple)) or not item or not all(_is_token_id(i) for i in item):
            raise TypeError(f"{name} must hold lists of token ids (ints ≥ 0); got {short(item)}.")
        result.append([int(i) for i in item])
    return result


def _is_token_id(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 0


def _hooks(name: str, value: Any) -> list[Any]:
    """stopping_criteria / logits_processor: a list of transformers objects (or plain callables)."""
    if not isinstance(value, Iterable) or isinstance(value, (str, bytes)):
        raise TypeError(
            f"{name} must be a list of callables (transformers {_hook_class(name)} objects), not {short(value)}."
        )
    hooks = list(value)
    for hook in hooks:
        if not callable(hook):
            raise TypeError(
                f"every item of {name} must be callable like a transformers {_hook_class(name)}; got {short(hook)}."
            )
    return hooks


def _hook_class(name: str) -> str:
    return "StoppingCriteria" if name == "stopping_criteria" else "LogitsProcessor"
