"""What the model's own files here say about it: context length and sampling defaults, for a remote engine.

The server holds the weights; the config and generation config, where they load here, still tell
the context length and the sampling defaults transformers would use.
"""

from __future__ import annotations

import logging
from typing import Any

from ..local import loading

logger = logging.getLogger("hfllm_nb")

# load_kwargs that mean something for a tokenizer; the others configure weights the server holds.
TOKENIZER_KWARGS = ("revision", "token", "cache_dir", "local_files_only")
TRANSFORMERS_SAMPLING = {"temperature": 1.0, "top_p": 1.0, "top_k": 50}  # transformers' own defaults


def local_settings(source: loading.ModelSource, trust_remote_code: bool, load_kwargs: dict[str, Any]) -> dict:
    """Context length and sampling defaults from the model's files here, where they can be read."""
    from transformers import AutoConfig, GenerationConfig

    kwargs = {k: load_kwargs[k] for k in TOKENIZER_KWARGS if k in load_kwargs}
    if source.is_hub and loading._offline_mode():
        kwargs["local_files_only"] = True
    settings: dict[str, Any] = {"sampling": dict(TRANSFORMERS_SAMPLING)}
    try:
        config = AutoConfig.from_pretrained(
            source.location, trust_remote_code=trust_remote_code, **source.extra, **kwargs
        )
        for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
            value = getattr(config, name, None)
            if isinstance(value, int) and value > 0:
                settings["context"] = value
                break
        if source.is_gguf:
            generation = GenerationConfig.from_model_config(config)
        else:
            generation = GenerationConfig.from_pretrained(source.location, **kwargs)
        for name in settings["sampling"]:
            value = getattr(generation, name, None)
            if value is not None:
                settings["sampling"][name] = value
    except Exception as exc:  # a tokenizer-only repo, say: fall back, and say so in the log
        logger.info("No model config for %s here (%s); using fallbacks.", source.label, type(exc).__name__)
    return settings
