"""The remote engine: any OpenAI-compatible server (vLLM, SGLang, llama.cpp, TGI, ``transformers serve``).

The tokenizer stays here, so token budgets, ``count_tokens`` and ``format_chat`` are exact; the
server only generates. Every request streams, so Stop can close the connection, which makes
the server stop generating.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Generator
from typing import Any

from ...core.requests import LENGTH, STOPPED, Completion, EitherStop, EngineRequest, EngineResult
from ...core.tokens import ExplainedToken, token_text
from ...errors import GenerationError, ModelLoadError
from ..local import loading as _loading
from . import errors as _openai_errors
from . import logprobs as _openai_logprobs
from . import server_tokenizer, wire
from .local_files import TOKENIZER_KWARGS, TRANSFORMERS_SAMPLING, local_settings
from .stream import Budget, ErrorEvent, NotAStream, Reply, StreamReader, http_client, take_chunk

logger = logging.getLogger("hfllm_nb")

DEFAULT_TIMEOUT_S = 120.0  # the longest wait for the server's next bytes (a CPU server can be slow)
CONNECT_CHECK_S = 10.0  # construction reports an unreachable or refusing server within this
FALLBACK_CONTEXT = 2048  # when neither the server, the config nor the tokenizer says
_PLACEHOLDER_KEY = "EMPTY"  # the openai client insists on a key; servers without --api-key ignore it


class RemoteEngine:
    """Generates on an OpenAI-compatible server; tokenizes here.

    Args:
        endpoint: the server's base URL, e.g. "http://127.0.0.1:8000/v1" ("/v1" is added to a bare host).
        model_id: the model whose tokenizer to load here (hub id, folder, .gguf, or None for the default).
        api_key: else HFLLM_NB_API_KEY, else OPENAI_API_KEY; never shown in repr or messages.
        served_model: the name requests carry; default: the one model the server lists, or the one
            matching ``model_id``.
        timeout: seconds to wait for the server's next bytes before giving up (default 120).
        trust_remote_code, load_kwargs: for the tokenizer (revision, token, cache_dir, local_files_only).

    Context length: what the server reports (vLLM, SGLang, llama.cpp), else the model's config,
    else the tokenizer's ``model_max_length``, else 2048.

    >>> engine = RemoteEngine("http://127.0.0.1:8000/v1", model_id=None)   # doctest: +SKIP
    """

    def __init__(
        self,
        endpoint: str,
        *,
        model_id: str | os.PathLike | None,
        api_key: str | None = None,
        served_model: str | None = None,
        timeout: float | None = None,
        trust_remote_code: bool = False,
        load_kwargs: dict[str, Any] | None = None,
    ) -> None:
        self.endpoint = wire.check_endpoint(endpoint)
        self._shown_url = wire.display_url(self.endpoint)  # for messages: no user:password@
        self.timeout = wire.check_timeout(timeout, DEFAULT_TIMEOUT_S)
        for name, value in (("api_key", api_key), ("served_model", served_model)):
            if value is not None and not isinstance(value, str):
                raise TypeError(f"{name} must be a str or None, not {type(value).__name__}.")
            if value is not None and not value.strip():
                raise ValueError(f"{name} is empty; pass a non-empty string, or None.")
        load_kwargs = dict(load_kwargs or {})
        weights_only = sorted(k for k in load_kwargs if k not in TOKENIZER_KWARGS)
        if weights_only:
            raise ValueError(
                f"{', '.join(weights_only)} configure loading weights; with endpoint= the server holds them, so "
                "set them in its launch flags. Here only the tokenizer loads: " + ", ".join(TOKENIZER_KWARGS) + "."
            )
        self._openai = _openai_errors.import_openai()
        key = api_key or os.environ.get("HFLLM_NB_API_KEY") or os.environ.get("OPENAI_API_KEY")
        self._secret = key
        source = _loading.resolve_source(model_id)
        timeouts = self._openai.Timeout(self.timeout, connect=min(self.timeout, CONNECT_CHECK_S / 2))
        self._http = http_client(self._openai, timeouts)  # Stop can hang up before the headers come
        self._client = self._openai.OpenAI(
            base_url=self.endpoint,
            api_key=key or _PLACEHOLDER_KEY,
            timeout=timeouts,
            max_retries=0,  # a retry would hide a dead server for seconds; we report at once instead
            http_client=self._http,
        )
        self._closed = False
        self._vocabulary: _openai_logprobs.VocabularyText | None = None  # built on the first explain
        try:
            hints = [str(model_id) if model_id is not None else "", source.location]
            entry = self._check_server(served_model, hints, key)
            self.served_model: str = entry["id"]
            self._dialect = wire.detect_dialect([entry])
            try:
                self.tokenizer = _loading.load_tokenizer(
                    source, trust_remote_code=trust_remote_code, load_kwargs=load_kwargs
                )
                local = local_settings(source, trust_remote_code, load_kwargs)
            except ModelLoadError as exc:  # no tokenizer here: the server's own, where it has one
                self.tokenizer = self._server_tokenizer(exc, key)
                local = {"sampling": dict(TRANSFORMERS_SAMPLING)}
        except BaseException:
            self.close()
            raise
        self.context_length = wire.reported_context(entry) or local.get("context") or self._tokenizer_context()
        self._sampling_defaults = local["sampling"]
        logger.info("Connected to %s (%s, %s).", self._shown_url, self.served_model, self._dialect)

    def __repr__(self) -> str:
        return f"RemoteEngine({self.description!r})"

    # ----------------------------------------------------------------- Engine protocol

    @property
    def description(self) -> str:
        return f"remote · {self._shown_url} · {self.served_model}"

    @property
    def sampling_defaults(self) -> dict[str, float | int]:
        return dict(self._sampling_defaults)

    def check_options(self, options: dict[str, Any]) -> None:
        wire.refuse_in_process_only(options)
        wire.sampling_body(options, self._sampling_defaults, self._dialect)  # names unmappable ones

    def generate(self, request: EngineRequest) -> EngineResult:
        started = time.perf_counter()
        first: float | None = None
        completions = []
        for index in range(len(request.prompts)):  # one request each: not every server takes a list
            reply = Reply(time.perf_counter())
            for _ in self._pieces(request, index, reply):
                pass
            if reply.first_at is not None and first is None:
                first = reply.first_at - started
            completions.append(self._completion(request, reply))
        return EngineResult(completions, time.perf_counter() - started, first)

    def stream(self, request: EngineRequest) -> Generator[str, None, EngineResult]:
        if len(request.prompts) != 1:
            raise TypeError("stream() takes one prompt string; use generate() for a batch.")
        reply = Reply(time.perf_counter())
        yield from self._pieces(request, 0, reply)
        first = reply.first_at - reply.started if reply.first_at is not None else None
        return EngineResult([self._completion(request, reply)], time.perf_counter() - reply.started, first)

    def explain_stream(
        self,
        request: EngineRequest,
        alternatives: int,
        stop_event: Any = None,
        *,
        include_prompt: bool = False,
        name: str = "alternatives",
    ) -> Generator[ExplainedToken, None, EngineResult]:
        """Yield each new token as an ``ExplainedToken`` from the server's log-probabilities (completions).

        A server that ignores ``logprobs`` (``transformers serve``) raises GenerationError naming
        the servers that return them. ``stop_event`` (anything with ``is_set()``) stops it like Stop.
        ``include_prompt``: the prompt's tokens first, with the server's probabilities where they were
        checked right (vLLM, see ``explain_prompt``), else none. ``name``: the caller's name for
        ``alternatives``, for messages (explain calls it top_k).
        """
        if len(request.prompts) != 1 or request.messages is not None:
            raise TypeError("explain takes one prompt string (format a chat with llm.format_chat first).")
        if isinstance(self.tokenizer, server_tokenizer.ServerTokenizer):
            raise GenerationError(
                "explain maps the server's tokens to ids with the model's tokenizer, and none loads here; "
                "pass model_id= naming the model's hub id or folder."
            )
        if self._vocabulary is None:
            self._vocabulary = _openai_logprobs.VocabularyText(self.tokenizer)
        if include_prompt:
            prompt_ids = request.token_ids[0]
            explained = self.explain_prompt(prompt_ids, alternatives)
            yield from explained or [self._unexplained(i) for i in prompt_ids]
        reply = Reply(time.perf_counter())
        stop = EitherStop(request.stop, stop_event)
        yield from self._pieces(request, 0, reply, logprobs=alternatives, stop=stop, logprobs_name=name)
        first = reply.first_at - reply.started if reply.first_at is not None else None
        return EngineResult([self._completion(request, reply)], time.perf_counter() - reply.started, first)

    def _unexplained(self, token_id: int) -> ExplainedToken:
        text, partial = token_text(self.tokenizer, token_id)
        return ExplainedToken(text, token_id, True, None, None, partial_bytes=partial, from_server=True)

    def explain_prompt(self, token_ids: list[int], alternatives: int) -> list[Any] | None:
        """The prompt's tokens explained by the server, where its numbers were checked right (vLLM); else None.

        One short request (the prompt as token ids, so the positions are ours; one new token).
        """
        if self._dialect not in _openai_logprobs.PROMPT_LOGPROBS_RIGHT or not token_ids:
            return None
        sent = {"prompt_logprobs": "top_k"}
        try:
            reply = self._client.completions.create(
                model=self.served_model, prompt=token_ids, max_tokens=1, temperature=0.0,
                extra_body={"prompt_logprobs": alternatives},
            )  # fmt: skip
            entries = (reply.choices[0].model_extra or {}).get("prompt_logprobs")
            return _openai_logprobs.prompt_tokens(entries, token_ids, self.tokenizer, alternatives)
        except self._openai.APIError as exc:
            raise self._failure(exc, sent) from None
        except (AttributeError, IndexError, TypeError, ValueError, KeyError) as exc:
            raise GenerationError(
                f"The server at {self._shown_url} sent prompt log-probabilities this client cannot read ({exc})."
            ) from None

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._client.close()

    # ----------------------------------------------------------------- internals

    def _server_tokenizer(self, failure: ModelLoadError, key: str | None) -> Any:
        """The server's tokenizer over HTTP (llama.cpp, vLLM), or ``failure`` raised when it has none."""
        found = server_tokenizer.connect(self._http, self.endpoint, self.served_model, self._dialect, key)
        if found is None:
            raise failure
        logger.warning(
            "No tokenizer for this model loads here (%s); counting tokens with the server's own (%s).",
            " ".join(str(failure).split())[:200],
            found,
        )
        return found

    def _check_server(self, served_model: str | None, hints: list[str], key: str | None) -> dict[str, Any]:
        """List the served models (within CONNECT_CHECK_S) and pick ours; ModelLoadError saying why not."""
        wait = min(self.timeout, CONNECT_CHECK_S)
        try:  # the raw body: the client's own parsing turns an HTML page or a bad shape into AttributeErrors
            raw = self._client.with_options(timeout=wait).models.with_raw_response.list()
            entries = wire.models_listed(raw.http_response.text)
        except self._openai.APIError as exc:
            raise _openai_errors.connect_failure(
                self._openai, exc, self._shown_url, self._secret, key is not None, wait
            ) from None
        except ValueError as exc:
            raise ModelLoadError(
                f"The server at {self._shown_url} {exc}, so it is not an OpenAI-compatible server's base URL "
                "(or a proxy answered for it). Check the URL: it usually ends in /v1, e.g. http://127.0.0.1:8000/v1."
            ) from None
        listed = [e["id"] for e in entries if isinstance(e.get("id"), str)]
        chosen = wire.pick_served_model(listed, served_model, hints)
        if chosen is None:
            names = ", ".join(repr(m) for m in listed) or "none"
            if served_model is not None:
                problem = f"does not serve {served_model!r}"
            elif listed:
                problem = "serves several models and none matches model_id"
            else:
                problem = "lists no models"
            raise ModelLoadError(
                f"The server at {self._shown_url} {problem}. It serves: {names}. "
                "Pass served_model= with one of these names."
            )
        return next(e for e in entries if e.get("id") == chosen)

    def _pieces(
        self,
        request: EngineRequest,
        index: int,
        reply: Reply,
        logprobs: int | None = None,
        stop: Any = None,
        logprobs_name: str = "alternatives",
    ) -> Generator[Any, None, None]:
        """Stream one prompt's reply into ``reply``, yielding text (with ``logprobs``: explained tokens).

        A thread reads the HTTP stream; this side waits on a queue and checks Stop every 50 ms,
        so Stop ends the reply even while the server sends nothing (a long prompt, a queue on a
        busy server). Stop, ``close()`` and errors all close the connection, and a server sees
        the closed connection and stops generating.
        """
        if self._closed:
            raise GenerationError(f"This remote engine ({self.description}) was closed; create a new one.")
        stop = stop if stop is not None else request.stop
        if stop.is_set():
            reply.stopped = True
            return
        standard, extra, sent = wire.sampling_body(request.options, self._sampling_defaults, self._dialect)
        kwargs = {
            "model": self.served_model,
            "max_tokens": request.budgets[index],  # always: vLLM and SGLang default to 16
            "stream": True,
            "stream_options": {"include_usage": True},
            "extra_body": extra or None,
            **standard,
        }
        chat = request.messages is not None
        if chat:
            kwargs["messages"] = request.messages
        else:
            kwargs["prompt"] = request.prompts[index]
        if logprobs is not None:
            kwargs["logprobs"] = logprobs
            sent["logprobs"] = logprobs_name
        reader = StreamReader(self._client.chat.completions if chat else self._client.completions, kwargs)
        remote_tokenizer = isinstance(self.tokenizer, server_tokenizer.ServerTokenizer)
        bound = Budget(self.tokenizer, request.budgets[index], count_here=not remote_tokenizer)
        try:
            for chunk in reader.chunks(stop, reply):
                text = bound.take(take_chunk(chunk, reply, chat), reply)
                if logprobs is not None:
                    explained = bound.take_tokens(self._explained(chunk, text, logprobs), reply)
                    if explained and reply.first_at is None:
                        reply.first_at = time.perf_counter()
                    reply.pieces.append(text)
                    yield from explained
                elif text:
                    if reply.first_at is None:
                        reply.first_at = time.perf_counter()
                    reply.pieces.append(text)
                    yield text
                if reply.cut:
                    break
            if not reply.stopped and not reader.stopped:
                text = self._named_stop(request, reply)
                if text:  # the stop string the server cut and named: put back, as generate() has it
                    reply.pieces.append(text)
                    if logprobs is None:
                        yield text
        except self._openai.APIError as exc:
            raise self._failure(exc, sent) from None
        except (NotAStream, ErrorEvent) as exc:
            raise _openai_errors.not_a_reply(exc, self._shown_url, self._secret) from None
        except ValueError as exc:  # a data line that is not JSON, from the SSE decoder
            raise GenerationError(
                f"The server at {self._shown_url} sent a malformed stream ({type(exc).__name__}: "
                f"{_openai_errors.scrub(str(exc), self._secret)[:300]})."
            ) from None
        finally:
            reader.close()
        reply.stopped = reader.stopped

    def _explained(self, chunk: Any, text: str, top_k: int) -> list[Any]:
        """The explained tokens in one completions chunk; GenerationError if the server sent none."""
        choices = getattr(chunk, "choices", None) or []
        found = getattr(choices[0], "logprobs", None) if choices else None
        if found is None:
            if text:
                raise GenerationError(
                    f"The server at {self._shown_url} returned no token log-probabilities (it ignores "
                    f"`logprobs`), so explain cannot run on it. Servers that return them: "
                    f"{_openai_logprobs.SERVERS_WITH_LOGPROBS}; transformers serve does not."
                )
            return []
        return _openai_logprobs.generated_tokens(found, self._vocabulary, top_k)

    def _named_stop(self, request: EngineRequest, reply: Reply) -> str:
        """The stop string to put back at the end of the text: the one the server cut and named."""
        stop_strings = request.options.get("stop_strings") or []
        text = "".join(reply.pieces)
        _, full = wire.finish_reason(reply.finish, text, stop_strings, reply.matched)
        return full[len(text) :] if full.startswith(text) else ""

    def _completion(self, request: EngineRequest, reply: Reply) -> Completion:
        text = "".join(reply.pieces)
        if reply.stopped:
            return Completion(text, self._count(text), STOPPED)
        if reply.cut:
            return Completion(text, reply.usage_tokens or self._count(text), LENGTH)
        stop_strings = request.options.get("stop_strings") or []
        reason, text = wire.finish_reason(reply.finish, text, stop_strings, reply.matched)
        if reason is None:
            raise GenerationError(
                f"The server at {self._shown_url} ended the reply without finishing it "
                f"(finish_reason={reply.finish!r}). Check its log."
            )
        tokens = reply.usage_tokens if reply.usage_tokens is not None else self._count(text)
        return Completion(text, tokens, reason)

    def _count(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else 0

    def _failure(self, exc: Exception, sent: dict[str, str]) -> Exception:
        return _openai_errors.request_failure(self._openai, exc, self._shown_url, self._secret, sent, self.timeout)

    def _tokenizer_context(self) -> int:
        value = getattr(self.tokenizer, "model_max_length", None)
        return value if isinstance(value, int) and 0 < value < 10**7 else FALLBACK_CONTEXT
