"""Read one streamed OpenAI-compatible reply in a thread, so Stop never waits on the network.

Stop must hang up even before the server has sent its response headers (a long prompt, a busy
server), when the ``openai`` client has not yet handed back anything that holds the socket. So
the HTTP client reports each new TCP connection through httpx's ``trace`` extension to the reader
that opened it (``http_client``), and connections are never pooled: each request has its own.
"""

from __future__ import annotations

import contextlib
import queue
import socket
import threading
import warnings
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

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


class StreamReader:
    """Open and read one streamed request in a daemon thread; hand chunks over through a queue.

    Only the reader thread closes the response: closing a socket that another thread is reading
    does not wake that thread, and its descriptor may be reused meanwhile. To hang up at once,
    ``close`` shuts the socket down instead, which wakes the reader and tells the server.
    """

    _POLL_S = 0.05

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

    def chunks(self, stop: Any) -> Generator[Any, None, None]:
        """Yield chunks until the stream ends or ``stop`` is set; raise the reader's error."""
        while True:
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
                raise item
            if kind == "chunk":
                yield item

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
    """
    try:
        return _read_chunk(chunk, reply, chat)
    except (AttributeError, TypeError, IndexError, KeyError):
        raise ValueError(f"a chunk this client cannot read: {_shown(chunk)}") from None


def _read_chunk(chunk: Any, reply: Reply, chat: bool) -> str:
    usage = getattr(chunk, "usage", None)
    if usage is not None and getattr(usage, "completion_tokens", None) is not None:
        reply.usage_tokens = int(usage.completion_tokens)
    choices = chunk.choices
    if not choices:  # vLLM sends usage in a last chunk of its own
        return ""
    if not isinstance(choices, list):
        raise TypeError(choices)
    choice = choices[0]
    if choice.finish_reason is not None:
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


def _shown(chunk: Any) -> str:
    """The chunk as the server sent it (its JSON), cut short."""
    try:
        with warnings.catch_warnings():  # pydantic warns that the shape is wrong: we know
            warnings.simplefilter("ignore")
            text = chunk.to_json(indent=None)
    except Exception:
        text = repr(chunk)
    return text if len(text) <= 200 else text[:199] + "…"
