"""Read one streamed OpenAI-compatible reply in a thread, so Stop never waits on the network.

Stop must hang up even before the server has sent its response headers (a long prompt, a busy
server), when the ``openai`` client has not yet handed back anything that holds the socket. So
the HTTP client reports each new TCP connection through httpx's ``trace`` extension to the reader
that opened it (``http_client``), and connections are never pooled: each request has its own.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import socket
import threading
import time
import warnings
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger("hfllm_nb")
_opening = threading.local()  # .reader: the StreamReader whose request this thread is sending


def http_client(openai: Any, timeout: Any) -> Any:
    """The ``openai`` client's own HTTP client, with one connection per request, reported to its reader."""
    limits = type(openai.DEFAULT_CONNECTION_LIMITS)(max_connections=1000, max_keepalive_connections=0)
    return openai.DefaultHttpxClient(timeout=timeout, limits=limits, event_hooks={"request": [_trace_request]})


def _trace_request(request: Any) -> None:
    request.extensions["trace"] = _on_trace


def _on_trace(event: str, info: dict[str, Any]) -> None:
    if event == "connection.connect_tcp.complete":
        reader = getattr(_opening, "reader", None)
        network = info.get("return_value")
        if reader is not None and network is not None:
            with contextlib.suppress(Exception):
                reader._connected(network.get_extra_info("socket"))


@dataclass
class Reply:
    """One streamed reply as it arrives."""

    started: float
    pieces: list[str] = field(default_factory=list)
    first_at: float | None = None
    finish: str | None = None
    matched: Any = None  # the stop string vLLM (stop_reason) or SGLang (matched_stop) names
    usage_tokens: int | None = None
    stopped: bool = False
    cut: bool = False  # ended here: the server sent more than the budget (see RemoteEngine._pieces)


class NotAStream(Exception):
    """The server answered a streamed request with something else (a whole JSON reply, an HTML page)."""

    def __init__(self, content_type: str, start: str) -> None:
        super().__init__(content_type)
        self.content_type = content_type
        self.start = start


class ErrorEvent(Exception):
    """The server sent an error as an event of the stream (``event: error``, or an error object)."""


class StreamReader:
    """Open and read one streamed request in a daemon thread; hand chunks over through a queue.

    Only the reader thread closes the response: closing a socket that another thread is reading
    does not wake that thread, and its descriptor may be reused meanwhile. To hang up at once,
    ``close`` shuts the socket down instead, which wakes the reader and tells the server.
    """

    _POLL_S = 0.05
    AFTER_FINISH_S = 1.0  # after the finish chunk, how long to wait for the usage chunk and the end

    def __init__(self, resource: Any, kwargs: dict[str, Any]) -> None:
        self.stopped = False
        self._queue: queue.Queue = queue.Queue()
        self._quit = threading.Event()
        self._lock = threading.Lock()  # guards _stream, _socket and _done against the two threads
        self._stream: Any = None
        self._socket: socket.socket | None = None
        self._done = False
        self._thread = threading.Thread(target=self._read, args=(resource, kwargs), name="hfllm_nb-remote", daemon=True)
        self._thread.start()

    def _read(self, resource: Any, kwargs: dict[str, Any]) -> None:
        _opening.reader = self
        try:
            stream = resource.create(**kwargs)
            _opening.reader = None
            with self._lock:
                self._stream = stream
                self._socket = self._socket or _socket_of(stream)
            if self._quit.is_set():
                return
            kind = _content_type(stream)
            if kind and not kind.startswith("text/event-stream"):
                raise NotAStream(kind, _body_start(stream))
            for chunk in stream:
                if self._quit.is_set():
                    return
                self._queue.put(("chunk", chunk))
            self._queue.put(("end", None))
        except BaseException as exc:  # handed to the consumer, which raises it
            self._queue.put(("error", exc))
        finally:
            _opening.reader = None
            with self._lock:
                self._done = True
                if self._stream is not None:
                    self._stream.close()

    def _connected(self, sock: Any) -> None:
        """Called in the reader thread once the request's TCP connection is open; hangs up if already closed."""
        if not isinstance(sock, socket.socket):
            return
        with self._lock:
            self._socket = sock
            if self._quit.is_set():
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def chunks(self, stop: Any, reply: Reply) -> Generator[Any, None, None]:
        """Yield chunks until the stream ends or ``stop`` is set; raise the reader's error.

        Once ``reply`` holds a finish reason the reply is complete: what is left (a usage chunk,
        ``[DONE]``) gets AFTER_FINISH_S, and a server that then keeps the connection open, or drops
        it, or times out, still has its reply returned.
        """
        finished_at: float | None = None
        while True:
            if finished_at is None and (reply.finish is not None or reply.cut):
                finished_at = time.monotonic()
            try:
                kind, item = self._queue.get(timeout=self._POLL_S)
            except queue.Empty:
                kind, item = "wait", None
            if stop.is_set():
                self.stopped = True
                return
            if kind == "end":
                return
            if kind == "error":
                if finished_at is not None:
                    logger.info("The server failed after finishing the reply (%s); the reply stands.", item)
                    return
                raise item
            if kind == "chunk":
                yield item
            elif finished_at is not None and time.monotonic() - finished_at > self.AFTER_FINISH_S:
                logger.info("The server kept the connection open after finishing the reply; hanging up.")
                return

    def close(self) -> None:
        """Hang up: the server sees the connection close, and the reader thread ends on its own."""
        self._quit.set()
        with self._lock:
            if self._done or self._socket is None:
                return  # finished, or not connected yet (``_connected`` then hangs up at once)
            with contextlib.suppress(OSError):  # the peer may have closed it already
                self._socket.shutdown(socket.SHUT_RDWR)


def _socket_of(stream: Any) -> socket.socket | None:
    """The TCP socket under an openai Stream (httpx / httpcore expose it), or None."""
    try:
        network = stream.response.extensions["network_stream"]
        sock = network.get_extra_info("socket")
    except Exception:  # another transport: the reader still closes after its next chunk
        return None
    return sock if isinstance(sock, socket.socket) else None


def take_chunk(chunk: Any, reply: Reply, chat: bool) -> str:
    """Record one chunk's finish reason and usage in ``reply``; return its text.

    The ``openai`` client does not check a chunk's shape, so a reply such as ``{"choices": "oops"}``
    arrives as is: it raises ValueError quoting the chunk, never an AttributeError from deep inside.
    An error sent as an event (no ``choices`` at all, an error or message instead) raises ErrorEvent.
    Text after the chunk that carried the finish reason is not part of the reply: it is dropped.
    """
    try:
        fields = getattr(chunk, "model_fields_set", None)
        if fields is not None and "choices" not in fields and "usage" not in fields:
            raise ErrorEvent(_error_text(chunk))
        finished = reply.finish is not None
        text = _read_chunk(chunk, reply, chat)
    except (AttributeError, TypeError, IndexError, KeyError):
        raise ValueError(f"a chunk this client cannot read: {_shown(chunk)}") from None
    if finished and text:
        logger.info("The server sent text after finishing the reply; dropped: %r", text[:80])
        return ""
    return text


def _read_chunk(chunk: Any, reply: Reply, chat: bool) -> str:
    usage = getattr(chunk, "usage", None)
    count = getattr(usage, "completion_tokens", None) if usage is not None else None
    if count is not None:
        if isinstance(count, int) and not isinstance(count, bool) and count >= 0:
            reply.usage_tokens = count
        else:  # a count nobody can have generated: the tokens are counted here instead
            logger.info("Ignoring the server's usage.completion_tokens=%r.", count)
    choices = chunk.choices
    if not choices:  # vLLM sends usage in a last chunk of its own
        return ""
    if not isinstance(choices, list):
        raise TypeError(choices)
    choice = choices[0]
    if choice.finish_reason is not None and reply.finish is None:
        reply.finish = str(choice.finish_reason)
        reply.matched = getattr(choice, "stop_reason", None) or getattr(choice, "matched_stop", None)
    if chat:
        delta = getattr(choice, "delta", None)
        text = (getattr(delta, "content", None) or "") if delta is not None else ""
    else:
        text = getattr(choice, "text", None) or ""
    if not isinstance(text, str):
        raise TypeError(text)
    return text


def _content_type(stream: Any) -> str:
    try:
        return str(stream.response.headers.get("content-type", "")).lower()
    except Exception:  # another transport: take it for a stream
        return ""


def _body_start(stream: Any) -> str:
    try:
        return " ".join(stream.response.read()[:2000].decode(errors="replace").split())
    except Exception:
        return ""


def _error_text(chunk: Any) -> str:
    """What an error event says: its ``error.message``, ``message`` or ``detail``, else the event itself."""
    try:
        data = chunk.to_dict()
    except Exception:
        return _shown(chunk)
    error = data.get("error")
    for value in (error.get("message") if isinstance(error, dict) else error, data.get("message"), data.get("detail")):
        if isinstance(value, str) and value.strip():
            return " ".join(value.split())[:300]
    return _shown(chunk)


def _shown(chunk: Any) -> str:
    """The chunk as the server sent it (its JSON), cut short."""
    try:
        with warnings.catch_warnings():  # pydantic warns that the shape is wrong: we know
            warnings.simplefilter("ignore")
            text = chunk.to_json(indent=None)
    except Exception:
        text = repr(chunk)
    return text if len(text) <= 200 else text[:199] + "…"


class Budget:
    """The token budget, enforced here too: a server that sends more than max_tokens is cut off there.

    An honest server sends at most ``budget`` tokens, at least one per text chunk. So the reply is
    cut once its text holds more than ``budget`` tokens and either more text chunks than that have
    come or the count is past a small slack (re-tokenizing a text can give a token more than the
    model generated): then at ``budget`` tokens where that is still ahead, else (several tokens a
    chunk) where it is, at most the slack past. Counting costs a tokenizer call, made only once
    the text's UTF-8 bytes since the last count (each byte is at most one token) could have taken
    it past the budget.
    """

    def __init__(self, tokenizer: Any, budget: int, count_here: bool = True) -> None:
        self.tokenizer = tokenizer
        self.budget = budget
        # False for the server's own tokenizer (ServerTokenizer): a tokenize request in the middle of a
        # stream would interrupt it on llama-cpp-python's server. Only the chunk count bounds it then.
        self.count_here = count_here
        self.slack = 2 + budget // 16
        self.chunks = 0
        self.counted = 0  # tokens in the text at the last count
        self.since = 0  # UTF-8 bytes added since
        self.tokens = 0  # explained tokens let through so far

    def take(self, text: str, reply: Reply) -> str:
        """``text``, or its part within the budget (then ``reply.cut`` is set)."""
        if not text:
            return text
        self.chunks += 1
        if not self.count_here:
            if self.chunks <= self.budget:
                return text
            self._cut(reply, self.budget)
            return ""
        self.since += len(text.encode("utf-8", "surrogatepass"))
        if self.counted + self.since <= self.budget:
            return text
        before = "".join(reply.pieces)
        ids = self.tokenizer(before + text, add_special_tokens=False)["input_ids"]
        self.counted, self.since = len(ids), 0
        if len(ids) <= self.budget or (self.chunks <= self.budget and len(ids) <= self.budget + self.slack):
            return text
        allowed = self.tokenizer.decode(ids[: self.budget])
        if allowed.startswith(before):
            self._cut(reply, self.budget)
            return allowed[len(before) :]
        # Past the budget already (within the slack): what was let through stands, nothing more.
        self._cut(reply, len(self.tokenizer(before, add_special_tokens=False)["input_ids"]))
        return ""

    def take_tokens(self, explained: list[Any], reply: Reply) -> list[Any]:
        """The explained tokens within the budget (each is one token)."""
        left = max(0, self.budget - self.tokens)
        if len(explained) > left:
            self._cut(reply, self.budget)
            explained = explained[:left]
        self.tokens += len(explained)
        return explained

    def _cut(self, reply: Reply, tokens: int) -> None:
        if not reply.cut:
            logger.warning("The server sent more than max_tokens=%d tokens; the reply is cut there.", self.budget)
        reply.cut = True
        reply.usage_tokens = tokens
