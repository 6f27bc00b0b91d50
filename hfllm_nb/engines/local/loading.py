"""Find where a model comes from and load tokenizer + model, turning failures into ModelLoadError."""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from ... import default_model
from ...errors import ModelLoadError

if TYPE_CHECKING:  # the remote engine loads tokenizers through here, also where torch is not installed
    import torch

_HUB_CONNECT_TIMEOUT_S = 3.0
_SECRET_KEYS = ("token", "use_auth_token")


@dataclass
class ModelSource:
    """Where ``from_pretrained`` reads from, and the extra arguments that needs."""

    location: str
    label: str
    extra: dict[str, Any] = field(default_factory=dict)
    is_hub: bool = False

    @property
    def is_gguf(self) -> bool:
        return "gguf_file" in self.extra


def resolve_source(model_id: str | os.PathLike | None) -> ModelSource:
    """Map ``model_id`` (None, a .gguf file, a folder or a hub id) to a ModelSource."""
    if model_id is None:
        label = default_model.DEFAULT_MODEL_NAME + " (embedded default)"
        folder = default_model.prepare_default_model()
        if folder is not None:
            return ModelSource(str(folder), label)
        location, extra = default_model.gguf_load_arguments()
        return ModelSource(location, label, extra)
    if isinstance(model_id, os.PathLike):
        model_id = os.fspath(model_id)
    if not isinstance(model_id, str):
        raise TypeError(
            f"model_id must be a hub id, a local path or None, not {type(model_id).__name__} ({model_id!r})."
        )
    if not model_id.strip():
        raise ValueError(
            "model_id is empty. Pass a hub id such as 'gpt2', a local folder, or None for the default model."
        )
    path = Path(model_id).expanduser()
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ModelLoadError(
                f"Could not load model {model_id!r}: it is a file but not a .gguf model. "
                "Pass the folder that holds config.json and the weights, or a .gguf file."
            )
        return ModelSource(str(path.parent), model_id, {"gguf_file": path.name})
    if path.is_dir():
        if not any((path / name).is_file() for name in ("config.json", "adapter_config.json")):
            ggufs = sorted(p.name for p in path.glob("*.gguf"))
            fix = (
                f"pass the .gguf file itself, e.g. {str(path / ggufs[0])!r}"
                if ggufs
                else "pass a folder written by save_pretrained()"
            )
            raise ModelLoadError(
                f"Could not load model {model_id!r}: the folder has no config.json, so it is not a "
                f"transformers model folder. Check the path, {fix}, or use HuggingFaceLLM() for the "
                "embedded default model."
            )
        return ModelSource(str(path), model_id)
    # A hub id is "name" or "org/name"; anything else that does not exist is a bad path.
    if model_id.startswith((".", "/", "~", "\\")) or model_id.count("/") > 1:
        raise ModelLoadError(
            f"Could not load model {model_id!r}: no such file or folder. Check the path, "
            "or use HuggingFaceLLM() for the embedded default model."
        )
    return ModelSource(model_id, model_id, is_hub=True)


def load_model_and_tokenizer(
    source: ModelSource,
    *,
    dtype: torch.dtype,
    device_map: Any,
    quantization: Any,
    trust_remote_code: bool,
    load_kwargs: dict[str, Any],
) -> tuple[Any, Any]:
    """Load both halves; any failure is logged and raised as ModelLoadError naming the model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .quant_imports import quiet_backend_imports  # imports torch: the remote path loads no weights

    kwargs = dict(load_kwargs)
    if source.is_hub:
        _check_hub_reachable(source, kwargs)
    if not source.is_gguf:
        # safetensors cannot run code on load; pickle checkpoints need use_safetensors=False.
        kwargs.setdefault("use_safetensors", True)
    tokenizer_kwargs = {k: kwargs[k] for k in ("revision", "token", "cache_dir", "local_files_only") if k in kwargs}
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            source.location, trust_remote_code=trust_remote_code, **source.extra, **tokenizer_kwargs
        )
        # transformers imports torchao here when it is installed; its start-up messages say nothing to a user.
        with quiet_backend_imports():
            model = AutoModelForCausalLM.from_pretrained(
                source.location,
                dtype=dtype,
                device_map=device_map,
                quantization_config=quantization,
                trust_remote_code=trust_remote_code,
                **source.extra,
                **kwargs,
            )
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:
        unknown = _unknown_keyword(exc, load_kwargs)
        if unknown is not None:
            raise TypeError(
                f"HuggingFaceLLM() got an unexpected keyword argument {unknown!r}: extra keywords go "
                "to from_pretrained, which does not take it. Check the spelling, or use one of "
                "revision, token, use_safetensors, attn_implementation, cache_dir, local_files_only."
            ) from None
        message = _load_failure_message(source, exc, kwargs)
        raise ModelLoadError(message) from None
    return model, tokenizer


def load_tokenizer(source: ModelSource, *, trust_remote_code: bool, load_kwargs: dict[str, Any]) -> Any:
    """Load only the tokenizer (a remote engine counts tokens locally); failures become ModelLoadError."""
    from transformers import AutoTokenizer

    kwargs = dict(load_kwargs)
    if source.is_hub:
        _check_hub_reachable(source, kwargs)
    tokenizer_kwargs = {k: kwargs[k] for k in ("revision", "token", "cache_dir", "local_files_only") if k in kwargs}
    try:
        return AutoTokenizer.from_pretrained(
            source.location, trust_remote_code=trust_remote_code, **source.extra, **tokenizer_kwargs
        )
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:
        raise ModelLoadError(_load_failure_message(source, exc, kwargs)) from None


def _check_hub_reachable(source: ModelSource, kwargs: dict[str, Any]) -> None:
    """Fail in seconds when offline: huggingface_hub would otherwise retry for ~45 s."""
    if kwargs.get("local_files_only") or _offline_mode():
        kwargs["local_files_only"] = True
        return
    if _in_hub_cache(source.location, kwargs.get("revision")):
        return
    from huggingface_hub import constants

    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        with socket.create_connection((host, 443), timeout=_HUB_CONNECT_TIMEOUT_S):
            pass
    except OSError:
        message = (
            f"Could not load model {source.label!r}: it is not in the local Hugging Face cache and "
            f"the Hub ({host}) cannot be reached. Connect to the internet, pass a local folder or "
            ".gguf file, or use HuggingFaceLLM() for the embedded default model, which works offline."
        )
        raise ModelLoadError(message) from None


def _offline_mode() -> bool:
    return any(
        os.environ.get(v, "").upper() in ("1", "ON", "YES", "TRUE") for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _in_hub_cache(repo_id: str, revision: str | None) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    except Exception:  # a malformed id: let from_pretrained give its own reason
        return False
    return isinstance(found, str)


def _unknown_keyword(exc: Exception, load_kwargs: dict[str, Any]) -> str | None:
    """The user's keyword that a model class rejected ("unexpected keyword argument 'x'"), if any."""
    found = re.search(r"unexpected keyword argument '(\w+)'", str(exc))
    if isinstance(exc, TypeError) and found and found.group(1) in load_kwargs:
        return found.group(1)
    return None


def _load_failure_message(source: ModelSource, exc: Exception, kwargs: dict[str, Any]) -> str:
    reason = " ".join(str(exc).split()) or type(exc).__name__
    for key in _SECRET_KEYS:
        secret = kwargs.get(key)
        if isinstance(secret, str) and secret:
            reason = reason.replace(secret, "***")
    full_reason = reason  # the hints below look at all of it, the message shows the start
    if len(reason) > 300:
        reason = reason[:299] + "…"
    hint = (
        "Check the model id or path, pass a local folder or .gguf file, or use HuggingFaceLLM() "
        "for the embedded default model, which works offline."
    )
    if "safetensors" in full_reason and kwargs.get("use_safetensors"):
        hint = (
            "This model has no safetensors weights. If you trust its source, pass "
            "use_safetensors=False to allow pickle (.bin) checkpoints."
        )
    elif "device_map" in full_reason:
        hint = "Pass device_map='auto', a device name such as 'cpu' or 'cuda:0', or a dict of module: device."
    elif "trust_remote_code" in full_reason or "custom code" in full_reason:
        hint = "This model needs its own Python code; pass trust_remote_code=True only if you trust its source."
    return f"Could not load model {source.label!r} ({type(exc).__name__}: {reason}). {hint}"
