"""Engines behind ``HuggingFaceLLM``: ``LocalEngine`` (transformers in-process) and ``RemoteEngine``
(any OpenAI-compatible server). Each implements ``base.Engine``."""

from typing import Any

from ..core.requests import (
    END_OF_TEXT,
    LENGTH,
    STOP_STRING,
    STOPPED,
    Completion,
    EngineRequest,
    EngineResult,
    StopSignal,
)
from .base import Engine

__all__ = [
    "END_OF_TEXT",
    "LENGTH",
    "STOPPED",
    "STOP_STRING",
    "Completion",
    "Engine",
    "EngineRequest",
    "EngineResult",
    "StopSignal",
]


def open_engine(
    model_id: Any,
    *,
    endpoint: str | None,
    device: Any,
    quantization_config: Any,
    dtype: Any,
    device_map: Any,
    trust_remote_code: bool,
    compile: bool,
    api_key: str | None,
    served_model: str | None,
    timeout: float | None,
    load_kwargs: dict[str, Any],
) -> tuple[Engine, str]:
    """Check which engine the arguments ask for, then start it; returns it and the model's label.

    Arguments of the other engine are refused rather than ignored, naming where they belong.
    """
    if endpoint is not None:
        given = {"device": device, "quantization_config": quantization_config, "device_map": device_map}
        wrong = [name for name, value in given.items() if value is not None]
        wrong += ["compile"] * compile + ["dtype"] * (dtype != "auto")
        if wrong:
            raise ValueError(
                f"{', '.join(wrong)} configure an in-process model; with endpoint= the server runs the "
                "model, so set them in its launch flags (e.g. vllm serve MODEL --dtype bfloat16 "
                "--quantization awq --tensor-parallel-size 2) and drop them here."
            )
        from .remote.engine import RemoteEngine

        remote = RemoteEngine(
            endpoint,
            model_id=model_id,
            api_key=api_key,
            served_model=served_model,
            timeout=timeout,
            trust_remote_code=trust_remote_code,
            load_kwargs=load_kwargs,
        )
        return remote, str(getattr(remote, "served_model", None) or model_id)
    for name, value in (("api_key", api_key), ("served_model", served_model), ("timeout", timeout)):
        if value is not None:
            raise ValueError(f"{name} only applies with endpoint=; pass endpoint='http://host:port/v1' too.")
    if device is not None and device_map is not None:
        raise ValueError("Pass either device or device_map, not both (device_map='auto' places the model itself).")
    if device_map is not None and not isinstance(device_map, (str, dict)):
        raise TypeError(f"device_map must be a string such as 'auto' or a dict, not {type(device_map).__name__}.")
    from .local import device as device_rules
    from .local import loading
    from .local.engine import LocalEngine, LocalSettings

    target = device_rules.resolve_device(device)
    device_rules.resolve_dtype(dtype, target)  # a bad dtype fails here, before any loading
    source = loading.resolve_source(model_id)
    settings = LocalSettings(target, dtype, quantization_config, device_map, trust_remote_code, compile, load_kwargs)
    local = LocalEngine(source, settings)
    return local, source.label if model_id is None else str(model_id)
