"""Checks on user input, done once where it enters, with messages that name the fix."""

from __future__ import annotations

import numbers
from typing import Any

# Sampling settings that only mean something when do_sample=True (the panel's sampling row).
SAMPLING_KEYWORDS = ("temperature", "top_p", "top_k", "seed")


def check_prompt(prompt: Any) -> list[str]:
    """Return the prompt as a non-empty list of strings, or raise with a precise message."""
    if isinstance(prompt, str):
        _check_one_prompt(prompt, where="prompt")
        return [prompt]
    if isinstance(prompt, (list, tuple)):
        if not prompt:
            raise ValueError("The prompt list is empty. Pass at least one non-empty string.")
        for i, item in enumerate(prompt):
            if not isinstance(item, str):
                raise TypeError(
                    f"prompt[{i}] is {type(item).__name__} ({short(item)}); every item of a prompt list must be a str."
                )
            _check_one_prompt(item, where=f"prompt[{i}]")
        return list(prompt)
    if isinstance(prompt, (bytes, bytearray)):
        raise TypeError(
            f"prompt is {type(prompt).__name__} ({short(prompt)}); pass text, for example prompt.decode('utf-8')."
        )
    raise TypeError(f"prompt must be a str or a list of str, not {type(prompt).__name__} ({short(prompt)}).")


def _check_one_prompt(text: str, where: str) -> None:
    if not text.strip():
        raise ValueError(f"{where} is empty or only whitespace ({text!r}); pass some text to continue.")


def check_length(name: str, value: Any, *, limit: int, allow_none: bool = True) -> int | None:
    """Check a token count: a positive int no larger than ``limit`` (the model's context)."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(
            f"{name} must be a positive int (a number of tokens), not {type(value).__name__} ({short(value)})."
        )
    value = int(value)
    if value <= 0:
        raise ValueError(f"{name} must be at least 1, got {value}.")
    if value > limit:
        raise ValueError(
            f"{name}={value} is larger than the model's context of {limit} tokens; pass a value of at most {limit}."
        )
    return value


def check_sampling(options: dict[str, Any]) -> None:
    """Validate sampling settings in place; raise for out-of-range or contradictory values."""
    do_sample = options.get("do_sample", False)
    if not isinstance(do_sample, bool):
        raise TypeError(f"do_sample must be True or False, not {short(do_sample)}.")
    if not do_sample:
        given = [k for k in (*SAMPLING_KEYWORDS, "min_p") if options.get(k) is not None]
        if given:
            verb = "applies" if len(given) == 1 else "apply"
            raise ValueError(
                f"{', '.join(given)} only {verb} when sampling; pass do_sample=True as well "
                "(greedy decoding is the default)."
            )
    # Below 0.01 the scaled logits can overflow to inf and sampling fails; it is greedy by then anyway.
    _check_number(options, "temperature", low=0.01, high=100.0, low_open=False)
    _check_number(options, "top_p", low=0.0, high=1.0, low_open=True)
    _check_number(options, "min_p", low=0.0, high=1.0, low_open=True)
    _check_number(options, "repetition_penalty", low=0.01, high=100.0, low_open=False)
    top_k = options.get("top_k")
    if top_k is not None:
        _check_int_type("top_k", top_k)
        if top_k < 0:
            raise ValueError(f"top_k must be an int ≥ 0 (0 turns it off), got {short(top_k)}.")
        options["top_k"] = int(top_k)  # transformers wants a Python int, not numpy's
    seed = options.get("seed")
    if seed is not None:
        _check_int_type("seed", seed)
        if not 0 <= seed < 2**63:
            raise ValueError(f"seed must be an int between 0 and 2**63 - 1, got {short(seed)}.")
        options["seed"] = int(seed)


def _check_int_type(name: str, value: Any) -> None:
    # A wrong type is a TypeError, like check_length's, so callers can tell it from a bad value.
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, not {type(value).__name__} ({short(value)}).")


def _check_number(options: dict, name: str, *, low: float, high: float, low_open: bool) -> None:
    value = options.get(name)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, not {type(value).__name__} ({short(value)}).")
    too_low = value <= low if low_open else value < low
    if too_low or value > high or value != value:  # value != value catches NaN
        bound = f"> {low}" if low_open else f"≥ {low}"
        raise ValueError(f"{name} must be {bound} and ≤ {high}, got {value!r}.")
    # transformers' logits processors insist on a float: temperature=2 would fail deep inside generate.
    options[name] = float(value)


def short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def check_messages(messages: Any) -> list[dict[str, str]]:
    """Return a chat conversation as a list of role/content dicts, or raise saying what is wrong."""
    if isinstance(messages, str):
        _check_one_prompt(messages, where="message")
        return [{"role": "user", "content": messages}]
    if not isinstance(messages, (list, tuple)) or not messages:
        raise TypeError(
            "messages must be a str or a non-empty list of {'role': ..., 'content': ...} dicts, "
            f"not {short(messages)}."
        )
    conversation = []
    for i, message in enumerate(messages):
        if (
            not isinstance(message, dict)
            or not isinstance(message.get("role"), str)
            or not isinstance(message.get("content"), str)
        ):
            raise TypeError(
                f"messages[{i}] is {short(message)}; each message must be a dict with str "
                "'role' ('system', 'user' or 'assistant') and str 'content'."
            )
        conversation.append({"role": message["role"], "content": message["content"]})
    if conversation[-1]["role"] != "user":
        raise ValueError("The last message must come from the 'user' role: the model answers it.")
    return conversation


def check_top_k(top_k: Any, vocab_size: int, name: str = "top_k") -> int:
    """How many alternatives to keep: an int from 1 to the vocabulary size."""
    if isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral):
        raise TypeError(f"{name} must be an int (how many likely tokens to show), not {type(top_k).__name__}.")
    if not 1 <= top_k <= vocab_size:
        raise ValueError(f"{name} must be between 1 and the vocabulary size {vocab_size}, got {top_k}.")
    return int(top_k)
