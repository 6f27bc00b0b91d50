"""The panel's settings: merged over the model's defaults and validated once, before any widget exists."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..core import validation
from ..core.memory import check_interval

if TYPE_CHECKING:
    from ..llm import HuggingFaceLLM

SAMPLING = validation.SAMPLING_KEYWORDS  # temperature, top_p, top_k, seed
SETTINGS = ("prompt", "max_length", "do_sample", *SAMPLING, "chat_mode", "probabilities", "memory_interval")
CHAT_SETTINGS = ("max_length", "do_sample", *SAMPLING, "memory_interval")  # ChatPanel's
NO_SEED = -1  # the seed box shows this for "no seed": a fresh sample every run


def _model_default(llm: HuggingFaceLLM, name: str) -> Any:
    """A sampling default as ``generate`` would use it (one source: the model object)."""
    return llm.sampling_defaults[name]


def check_panel_settings(
    llm: HuggingFaceLLM, given: dict[str, Any], *, names: tuple[str, ...] = SETTINGS, owner: str = "LLMPanel"
) -> dict[str, Any]:
    """Merge ``given`` over the model's defaults, validating each value once (``names``: those ``owner`` takes)."""
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise TypeError(f"{owner} got unknown setting(s) {', '.join(map(repr, unknown))}; use {', '.join(names)}.")
    start = {
        "prompt": "",
        "max_length": llm.max_length,
        "do_sample": False,
        "seed": None,
        "chat_mode": False,
        "probabilities": False,
        "memory_interval": 1.0,
        **{name: _model_default(llm, name) for name in ("temperature", "top_p", "top_k")},
    }
    start.update(given)
    if not isinstance(start["prompt"], str):
        raise TypeError(f"prompt must be a str, not {type(start['prompt']).__name__}.")
    validation.check_length("max_length", start["max_length"], limit=llm.context_length, allow_none=False)
    for flag in ("do_sample", "chat_mode", "probabilities"):
        if not isinstance(start[flag], bool):
            raise TypeError(f"{flag} must be True or False, not {start[flag]!r}.")
    # The sliders hold these even while sampling is off, so check them as if it were on.
    sampling = {k: start[k] for k in SAMPLING if start[k] is not None}
    validation.check_sampling({**sampling, "do_sample": True})
    if start["chat_mode"] and not getattr(llm.tokenizer, "chat_template", None):
        raise ValueError(f"chat_mode=True needs a chat template, and {llm.model_id!r} has none.")
    check_interval(start["memory_interval"], "memory_interval")
    start["seed"] = NO_SEED if start["seed"] is None else start["seed"]
    start["temperature"], start["top_p"] = float(start["temperature"]), float(start["top_p"])
    return start
