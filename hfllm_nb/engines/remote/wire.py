"""What goes into an OpenAI-compatible request, and what a reply's finish reason means to us.

Plain functions, no HTTP: ``RemoteEngine`` calls them, tests can check them on their own.
Servers differ in the non-standard options they take; the differences live here, in one place.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ...core.requests import END_OF_TEXT, LENGTH, STOP_STRING

# Options a server can honour; the rest of _options.ALLOWED_OPTIONS need the model in-process.
REMOTE_OPTIONS = frozenset(
    {
        "do_sample",
        "temperature",
        "top_p",
        "top_k",
        "min_p",
        "repetition_penalty",
        "seed",
        "stop_strings",
        "min_new_tokens",
    }
)
# Options outside the OpenAI API: their name on the wire, per server family (see detect_dialect).
_EXTRA_NAMES = {
    "openai": {
        "top_k": "top_k",
        "min_p": "min_p",
        "repetition_penalty": "repetition_penalty",
        "min_new_tokens": "min_tokens",
    },
    "llama.cpp": {"top_k": "top_k", "min_p": "min_p", "repetition_penalty": "repeat_penalty"},
}
TRANSFORMERS = "transformers serve"
VLLM = "vllm"  # vLLM's names are the "openai" ones; what differs is what it reports (see detect_dialect)
_EXTRA_NAMES[VLLM] = _EXTRA_NAMES["openai"]
LLAMA_CPP_PYTHON = "llama-cpp-python"  # llama.cpp's wire names, its own tokenizer routes
_EXTRA_NAMES[LLAMA_CPP_PYTHON] = _EXTRA_NAMES["llama.cpp"]
# Server defaults that differ from transformers' and would change the text unless sent. Both llama.cpp
# servers apply min_p 0.05, top_k 40 and top_p 0.95 to every request; llama-cpp-python's server also
# repeat_penalty 1.1 (llama-server: 1.0 now, 1.1 in older builds). Greedy text changes only through
# the penalty (temperature 0 picks the most likely token after it); sampling through all of them.
_LLAMA_NEUTRAL = {"min_p": 0.0, "repetition_penalty": 1.0}
_NEUTRAL = {"llama.cpp": _LLAMA_NEUTRAL, LLAMA_CPP_PYTHON: _LLAMA_NEUTRAL}
# Where a top_k of 0 means "off" on the wire as in transformers (elsewhere it is left out).
_TOP_K_ZERO_IS_OFF = frozenset({"llama.cpp", LLAMA_CPP_PYTHON})


def refuse_in_process_only(options: dict[str, Any]) -> None:
    """Raise ValueError naming options that only a model in this process can honour."""
    refused = sorted(k for k in options if k not in REMOTE_OPTIONS)
    if refused:
        raise ValueError(
            f"{', '.join(refused)} only work with the model in this process: an OpenAI-compatible server has "
            "no beam search, n-gram blocking or Python hooks. Drop them, or load the model here with "
            "HuggingFaceLLM(model_id) (no endpoint=). A server takes: " + ", ".join(sorted(REMOTE_OPTIONS)) + "."
        )


def detect_dialect(models: list[dict[str, Any]]) -> str:
    """Which family of server lists these models (GET /v1/models), for its non-standard options.

    ``transformers serve`` marks each entry with ``status`` (loaded / unloaded); llama.cpp's
    ``llama-server`` says ``owned_by: llamacpp``; llama-cpp-python's server ``owned_by: me`` with a
    ``permissions`` list; vLLM ``owned_by: vllm`` (its prompt log-probabilities were checked right,
    and it names the stop string it cut). Everything else gets vLLM's names, which SGLang shares.
    """
    for entry in models:
        if entry.get("owned_by") == VLLM:
            return VLLM
        status = entry.get("status")
        if isinstance(status, dict) and status.get("value") in ("loaded", "unloaded"):
            return TRANSFORMERS
        if entry.get("owned_by") == "llamacpp":
            return "llama.cpp"
        if entry.get("owned_by") == "me" and isinstance(entry.get("permissions"), list):
            return LLAMA_CPP_PYTHON
    return "openai"


def sampling_body(options: dict[str, Any], defaults: dict[str, Any], dialect: str) -> tuple[dict, dict, dict]:
    """(standard keyword arguments, extra body fields, {wire name: our option name}) for one request.

    Greedy is ``temperature=0``. With ``do_sample=True``, temperature, top_p and top_k are always
    sent (the user's, else ``defaults``), so every server samples as ``sampling_defaults`` says.
    """
    sampling = bool(options.get("do_sample"))
    chosen: dict[str, Any] = {}
    if sampling:
        chosen = {name: options.get(name, defaults[name]) for name in ("temperature", "top_p", "top_k")}
        if chosen["top_k"] == 0 and dialect not in _TOP_K_ZERO_IS_OFF:
            del chosen["top_k"]  # 0 turns top-k off in transformers; other servers spell "off" differently
    for name in ("min_p", "repetition_penalty", "min_new_tokens"):
        if options.get(name) is not None:
            chosen[name] = options[name]
    for name, value in _NEUTRAL.get(dialect, {}).items():
        chosen.setdefault(name, value)
    standard: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    names: dict[str, str] = {}
    if options.get("seed") is not None:
        standard["seed"] = options["seed"]
    if options.get("stop_strings"):
        standard["stop"] = list(options["stop_strings"])
    if dialect == TRANSFORMERS and (sampling or chosen):
        # transformers serve samples only when its generation config says do_sample; temperature > 0
        # alone is greedy there. Its `generation_config` field (a JSON string) carries all of it.
        # GenerationConfig fields have our option names already.
        extra["generation_config"] = json.dumps({"do_sample": sampling, **chosen})
        names["generation_config"] = ", ".join(sorted(chosen)) or "do_sample"
        return standard, extra, names
    if not sampling:
        standard["temperature"] = 0.0
    for name in ("temperature", "top_p"):
        if name in chosen:
            standard[name] = chosen.pop(name)
    wire_names = _EXTRA_NAMES.get(dialect, _EXTRA_NAMES["openai"])
    for name, value in chosen.items():
        wire = wire_names.get(name)
        if wire is None:
            raise ValueError(
                f"{name} has no equivalent on this server ({dialect}); drop it, or use a server that has one "
                "(vLLM and SGLang take min_tokens)."
            )
        extra[wire] = value
        names[wire] = name
    return standard, extra, names


def finish_reason(raw: str | None, text: str, stop_strings: list[str], matched: Any) -> tuple[str | None, str]:
    """Map the server's finish reason to ours; return (reason, text), reason None when unknown.

    Servers end a stop-string match with "stop", like an end-of-text token, and differ on whether
    the text keeps the stop string: transformers keeps it (as in-process generate does), vLLM and
    SGLang cut it and name it (``stop_reason`` / ``matched_stop``). We put a named one back, so the
    text is the same whichever server produced it.
    """
    if raw == "length":
        return LENGTH, text
    if raw != "stop":
        return None, text
    if isinstance(matched, str) and matched in stop_strings:
        return STOP_STRING, text if text.endswith(matched) else text + matched
    if any(s in text for s in stop_strings):
        return STOP_STRING, text
    return END_OF_TEXT, text


def models_listed(body: str) -> list[dict[str, Any]]:
    """The model entries of a GET /v1/models reply body; ValueError saying what is wrong with it.

    An OpenAI-compatible server answers ``{"object": "list", "data": [{"id": ...}, ...]}``. A web
    server or proxy at the wrong URL answers HTML, even with status 200.
    """
    try:
        reply = json.loads(body)
    except ValueError:
        start = " ".join(body.split())[:80]
        what = "an HTML page" if start.startswith("<") else f"text that is not JSON ({start!r})" if start else "nothing"
        raise ValueError(f"answered GET /models with {what}, not a list of models") from None
    data = reply.get("data") if isinstance(reply, dict) else None
    if not isinstance(data, list):
        shown = "no 'data'" if not isinstance(reply, dict) or "data" not in reply else f"'data' = {data!r:.60}"
        raise ValueError(f"answered GET /models with JSON that holds no list of models ({shown})")
    return [entry for entry in data if isinstance(entry, dict)]


def pick_served_model(listed: list[str], wanted: str | None, hints: list[str]) -> str | None:
    """The served model to use, or None when it cannot be decided (the caller names the choices).

    ``wanted`` (served_model=) must be listed. Otherwise a single listed model is it; with several,
    the one whose name or last path part equals one of ``hints`` (model_id and its folder name).
    """
    if wanted is not None:
        return wanted if wanted in listed else None
    if len(listed) == 1:
        return listed[0]
    keys = {h.rstrip("/").lower() for h in hints if h} | {h.rstrip("/").rsplit("/", 1)[-1].lower() for h in hints if h}
    matches = [m for m in listed if m.lower() in keys or m.rstrip("/").rsplit("/", 1)[-1].lower() in keys]
    return matches[0] if len(matches) == 1 else None


def reported_context(entry: dict[str, Any]) -> int | None:
    """The context length a server reports for a model, if it does (vLLM, SGLang, llama.cpp)."""
    meta = entry.get("meta")
    for value in (entry.get("max_model_len"), meta.get("n_ctx_train") if isinstance(meta, dict) else None):
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def check_endpoint(endpoint: Any) -> str:
    """The base URL to use: an http(s) URL with a host; a bare host gets the usual /v1."""
    if not isinstance(endpoint, str):
        raise TypeError(
            f"endpoint must be a URL string such as 'http://127.0.0.1:8000/v1', not {type(endpoint).__name__}."
        )
    parts = urlsplit(endpoint.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(
            "endpoint must be an http(s) URL with a host, such as 'http://127.0.0.1:8000/v1', "
            f"not {display_url(endpoint)!r}."
        )
    path = parts.path.rstrip("/") or "/v1"  # a bare host means the usual /v1 base
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


def check_timeout(timeout: Any, default: float) -> float:
    if timeout is None:
        return default
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number of seconds or None, not {type(timeout).__name__}.")
    if not timeout > 0:
        raise ValueError(f"timeout must be more than 0 seconds, got {timeout!r}.")
    return float(timeout)


def display_url(url: str) -> str:
    """The URL without user:password@ or a query, which may hold secrets."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:  # IPv6
        host = f"[{host}]"
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))
