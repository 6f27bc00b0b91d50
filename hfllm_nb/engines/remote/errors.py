"""Turn the ``openai`` client's exceptions into ours, with messages that say what to check.

Bad input (HTTP 4xx) is a ``ValueError`` (``RequestRejected``); a server that fails or vanishes is a
``GenerationError``; at connection time everything is a ``ModelLoadError``. No message ever carries the API key.
"""

from __future__ import annotations

import re
from typing import Any

from ...errors import GenerationError, ModelLoadError

_MESSAGE_LIMIT = 300
_HTML = re.compile(r"^\s*<(!doctype|html|head|body|title|h1|center)\b", re.IGNORECASE)
_TITLE = re.compile(r"<(title|h1)[^>]*>(.*?)</\1>", re.IGNORECASE | re.DOTALL)
# vLLM: "Requested sample logprobs of 25, which is greater than max allowed: 20" (and "prompt logprobs").
_LOGPROB_LIMIT = re.compile(r"logprobs of (\d+), which is greater than max allowed: (\d+)")


class RequestRejected(ValueError):
    """The server refused a request as bad input (HTTP 4xx): fix the call, the server is fine."""


def import_openai() -> Any:
    """The openai module, or an ImportError that names the extra to install."""
    try:
        import openai
    except ImportError:
        raise ImportError(
            "HuggingFaceLLM(endpoint=...) talks to the server with the openai package, which is not "
            "installed: pip install 'hfllm-nb[remote]'"
        ) from None
    return openai


def scrub(text: str, secret: str | None) -> str:
    """``text`` with the API key blanked out, wherever a server or library echoed it."""
    return text.replace(secret, "***") if secret else text


def server_message(exc: Any, secret: str | None) -> str:
    """The server's own words from an openai APIError: FastAPI's ``detail``, OpenAI's ``error.message``…"""
    body = getattr(exc, "body", None)
    message: Any = None
    if isinstance(body, dict):
        error = body.get("error")
        message = (
            body.get("detail") or body.get("message") or (error.get("message") if isinstance(error, dict) else error)
        )
    elif isinstance(body, str):
        message = body
    if isinstance(message, str) and _HTML.match(message):
        return html_summary(message)
    if not message:
        message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    text = " ".join(str(message).split())
    if len(text) > _MESSAGE_LIMIT:
        text = text[: _MESSAGE_LIMIT - 1] + "…"
    return scrub(text, secret)


def html_summary(page: str) -> str:
    """An HTML page, as a message: its title, never its markup (a proxy's or web server's error page)."""
    found = _TITLE.search(page)
    title = " ".join(re.sub(r"<[^>]*>", "", found.group(2)).split())[:120] if found else ""
    return f"an HTML page{f' titled {title!r}' if title else ''}, not an API reply (a proxy or web server answered)"


def not_a_reply(exc: Exception, url: str, secret: str | None) -> GenerationError:
    """A streamed request answered with something other than a stream (stream.NotAStream / ErrorEvent)."""
    content_type = getattr(exc, "content_type", None)
    if content_type is None:
        return GenerationError(f"The server at {url} reported an error while generating: {scrub(str(exc), secret)}")
    start = getattr(exc, "start", "")
    if _HTML.match(start):
        shown = html_summary(start)
    else:
        shown = repr(scrub(start, secret)[:120]) if start else "an empty body"
    return GenerationError(
        f"The server at {url} answered a streamed request with {content_type} instead of an event stream "
        f"({shown}). This client needs stream=true to honour Stop: check that the server supports streaming, "
        "and that no proxy in front of it buffers or rewrites the reply."
    )


def _transport_reason(exc: BaseException) -> str:
    """The socket-level cause ("Connection refused", "Name or service not known") under an openai error."""
    cause = exc.__cause__ or exc.__context__
    while cause is not None and (cause.__cause__ or cause.__context__) is not None:
        cause = cause.__cause__ or cause.__context__
    reason = str(cause) if cause is not None and str(cause) else type(exc).__name__
    return " ".join(reason.split())[:_MESSAGE_LIMIT]


def connect_failure(
    openai: Any, exc: Exception, url: str, secret: str | None, key_given: bool, wait: float
) -> ModelLoadError:
    """Why constructing against ``url`` failed, as a ModelLoadError naming what to check."""
    if isinstance(exc, openai.APITimeoutError):
        return ModelLoadError(
            f"The server at {url} did not answer within {wait:g} s. Check that it has finished starting "
            "(large models take minutes), and that the host and port are right."
        )
    if isinstance(exc, openai.APIConnectionError):
        return ModelLoadError(
            f"Could not connect to {url} ({scrub(_transport_reason(exc), secret)}). Check that the server is "
            "running, that the host and port are right, and that the URL ends in /v1 "
            "(e.g. http://127.0.0.1:8000/v1)."
        )
    status = getattr(exc, "status_code", None)
    if status in (401, 403):
        fix = (
            "Check api_key= (or HFLLM_NB_API_KEY / OPENAI_API_KEY): it must match the server's --api-key."
            if key_given
            else "No API key was given: pass api_key=... or set HFLLM_NB_API_KEY."
        )
        return ModelLoadError(f"The server at {url} refused the API key (HTTP {status}). {fix}")
    if status == 404:
        return ModelLoadError(
            f"{url}/models does not exist (HTTP 404), so this is not the base URL of an OpenAI-compatible "
            "server. Check the path: it usually ends in /v1."
        )
    return ModelLoadError(
        f"The server at {url} could not list its models (HTTP {status}: {server_message(exc, secret)})."
    )


def request_failure(
    openai: Any, exc: Exception, url: str, secret: str | None, sent: dict[str, str], timeout: float
) -> Exception:
    """The exception to raise for a failed generation request (``sent``: wire name -> our option)."""
    if isinstance(exc, openai.APITimeoutError):
        return GenerationError(
            f"The server at {url} sent nothing for {timeout:g} s, so the request was abandoned. Check that it "
            "is not overloaded or stuck, or pass a larger timeout= if it is just slow."
        )
    if isinstance(exc, openai.APIConnectionError):
        return GenerationError(
            f"Lost the connection to {url} ({scrub(_transport_reason(exc), secret)}). Check that the server "
            "is running; this object works again once it is back."
        )
    message = server_message(exc, secret)
    limit = _LOGPROB_LIMIT.search(message)
    if limit:
        asked, most = limit.groups()
        name = sent.get("logprobs", "top_k")
        return RequestRejected(
            f"The server at {url} returns at most {most} alternatives per token, and {name}={asked} asks for more. "
            f"Pass {name}={most} or less, or start the server with a higher limit (vLLM: --max-logprobs {asked})."
        )
    status = getattr(exc, "status_code", None)
    if status is None:  # an error event inside a stream
        return GenerationError(f"The server at {url} failed while generating: {message}")
    if status in (401, 403):
        return GenerationError(f"The server at {url} refused the API key (HTTP {status}): {message}")
    if status in (408, 429) or status >= 500:
        return GenerationError(f"The server at {url} failed (HTTP {status}: {message}). Try again, or check its log.")
    named = sorted({ours for wire, ours in sent.items() if wire in message})
    if named:
        return RequestRejected(
            f"The server at {url} does not accept {', '.join(named)} (HTTP {status}: {message}). "
            "Drop the option, or see which server takes it (README: Remote engines)."
        )
    return RequestRejected(f"The server at {url} rejected the request (HTTP {status}: {message}).")
