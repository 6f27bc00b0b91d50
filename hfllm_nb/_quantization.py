"""Turn a plain ``quantization_config`` dict into a bitsandbytes config."""

from __future__ import annotations

import importlib.util
import inspect
from typing import Any

import torch

INSTALL_COMMAND = "pip install bitsandbytes"


def build_quantization_config(config: Any, compute_dtype: torch.dtype) -> Any:
    """Validate ``config`` and return a ``BitsAndBytesConfig`` (or ``None`` for ``None``).

    >>> build_quantization_config({"load_in_4bit": True}, torch.bfloat16).load_in_4bit
    True
    """
    from transformers import BitsAndBytesConfig

    if config is None:
        return None
    if isinstance(config, BitsAndBytesConfig):
        options = config.to_dict()
        options = {k: v for k, v in options.items() if k in _valid_keys()}
    elif isinstance(config, dict):
        options = dict(config)
    else:
        raise TypeError(
            f"quantization_config must be a dict such as {{'load_in_4bit': True}}, not {type(config).__name__}."
        )
    valid = _valid_keys()
    unknown = sorted(str(k) for k in options if k not in valid)
    if unknown:
        raise ValueError(
            f"Unknown quantization_config key(s): {', '.join(unknown)}. Valid keys: {', '.join(sorted(valid))}."
        )
    four, eight = options.get("load_in_4bit", False), options.get("load_in_8bit", False)
    for name, flag in (("load_in_4bit", four), ("load_in_8bit", eight)):
        if not isinstance(flag, bool):
            raise TypeError(f"quantization_config[{name!r}] must be True or False, not {flag!r}.")
    if four and eight:
        raise ValueError(
            "quantization_config asks for both 4-bit and 8-bit; choose one of load_in_4bit or load_in_8bit."
        )
    if not (four or eight):
        raise ValueError("quantization_config needs load_in_4bit=True or load_in_8bit=True.")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ImportError(f"Quantization needs the bitsandbytes package. Install it with: {INSTALL_COMMAND}")
    if four:
        options.setdefault("bnb_4bit_compute_dtype", compute_dtype)
    return BitsAndBytesConfig(**options)


def _valid_keys() -> set[str]:
    from transformers import BitsAndBytesConfig

    params = inspect.signature(BitsAndBytesConfig.__init__).parameters
    return {name for name, p in params.items() if name != "self" and p.kind is p.POSITIONAL_OR_KEYWORD}
