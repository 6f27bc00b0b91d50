"""A tiny fake OpenAI-compatible server for the faults a real one will not produce on demand.

Malformed streams, HTTP 500s, error events, dropped connections, a server that goes quiet,
several listed models. Generation itself is always checked against the real ``transformers
serve`` (tests/_server.py); this one never stands in for it.
"""

from __future__ import annotations

import json
import select
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

HTML_ERROR_PAGE = (
    "<html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad Gateway</h1></center>"
    "<hr><center>nginx</center></body></html>"
)


class FakeServer:
    """Serve on 127.0.0.1 in a thread; set ``mode`` to pick the next replies' behaviour.

    Modes: "ok" (streams ``words`` then finishes), "slow" (one piece, then only SSE comments
    until ``release`` is set or 30 s pass), "silent" (one piece, then nothing at all),
    "malformed", "bad_shape" (valid JSON, wrong shape: ``{"choices": "oops"}``), "error_event",
    "drop" (closes mid-stream), "no_headers" (sends nothing, not even headers, until ``release``,
    30 s, or the client hangs up), "status:NNN" (answers every POST with that HTTP status and
    ``message``), "html:NNN" (that status with a proxy's HTML error page), "forever" (streams
    ``forever_text``, " more": one token, without end, up to 100 000 chunks, until the client
    hangs up), "after_finish" (text
    after the chunk that carries finish_reason), "finish_then_open" (the whole reply with its
    finish chunk, then the connection stays open: no [DONE]), "negative_usage"
    (usage.completion_tokens = -5), "sse_error" (``event: error`` with a ``message``),
    "whole_reply" (a non-streamed JSON completion, status 200). With ``required_key`` set, any
    other key gets 401. ``models_body`` (with ``models_type``) replaces the GET /v1/models reply.
    """

    def __init__(self, models: list[dict[str, Any]] | None = None) -> None:
        self.models = models if models is not None else [{"id": "fake-model", "object": "model", "owned_by": "me"}]
        self.mode = "ok"
        self.message = "fake failure"
        self.required_key: str | None = None
        self.words = ["Hello", " there", "."]
        # With ``logprobs`` in a request: each word's log-probability, and these alternatives too.
        self.logprobs: dict[str, float] | None = None
        self.requests: list[dict[str, Any]] = []  # bodies of POSTs, newest last
        self.auth_headers: list[str] = []
        self.models_body: str | None = None  # GET /v1/models answers this, with status 200
        self.models_type = "application/json"
        self.forever_text = " more"
        self.sent_chunks = 0  # text chunks of the last "forever" stream
        self.release = threading.Event()
        self.disconnected = threading.Event()  # set when a client closed a "slow" stream
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-openai", daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> FakeServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.release.set()
        self._server.shutdown()
        self._server.server_close()


def _handler(fake: FakeServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:  # keep pytest output clean
            pass

        def _refused(self) -> bool:
            fake.auth_headers.append(self.headers.get("Authorization", ""))
            if fake.required_key is None or self.headers.get("Authorization") == f"Bearer {fake.required_key}":
                return False
            self._json(401, {"error": {"message": "Unauthorized", "code": 401}})
            return True

        def do_GET(self) -> None:
            if self._refused():
                return
            if self.path.rstrip("/") == "/v1/models" and fake.models_body is not None:
                self._raw(200, fake.models_type, fake.models_body.encode())
            elif self.path.rstrip("/") == "/v1/models":
                self._json(200, {"object": "list", "data": fake.models})
            else:
                self._json(404, {"detail": "Not Found"})

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            if self._refused():
                return
            fake.requests.append(body)
            if fake.mode == "no_headers":
                self._wait_silently()
                return
            if fake.mode.startswith("status:"):
                status = int(fake.mode.split(":")[1])
                self._json(status, {"error": {"message": fake.message, "code": status}})
                return
            if fake.mode.startswith("html:"):
                page = HTML_ERROR_PAGE
                self._raw(int(fake.mode.split(":")[1]), "text/html", page.encode())
                return
            if fake.mode == "whole_reply":
                choice = {"index": 0, "text": "Hello there.", "finish_reason": "stop"}
                self._json(200, {"id": "fake", "object": "text_completion", "model": "fake-model", "choices": [choice]})
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Connection", "close")
            self.end_headers()
            try:
                self._stream(body)
            except (BrokenPipeError, ConnectionResetError):
                fake.disconnected.set()

        def _wait_silently(self) -> None:
            """Answer nothing; notice a client that hangs up (its socket reads as closed)."""
            deadline = time.monotonic() + 30
            while not fake.release.is_set() and time.monotonic() < deadline:
                readable, _, _ = select.select([self.connection], [], [], 0.05)
                if readable and self.connection.recv(1, socket.MSG_PEEK) == b"":
                    fake.disconnected.set()
                    break
            self.close_connection = True

        def _stream(self, body: dict[str, Any]) -> None:
            chat = "messages" in body
            if fake.mode == "malformed":
                self._send("data: {this is not json\n\n")
                return
            if fake.mode == "bad_shape":
                self._send('data: {"choices": "oops"}\n\n')
                return
            if fake.mode == "error_event":
                self._send(_chunk(chat, "Hel"))
                self._send('data: {"error": {"message": "the model fell over"}}\n\n')
                return
            if fake.mode == "drop":
                self._send(_chunk(chat, "Hel"))
                self.close_connection = True
                return
            if fake.mode in ("slow", "silent"):
                self._send(_chunk(chat, "Hel"))
                deadline = time.monotonic() + 30
                while not fake.release.is_set() and time.monotonic() < deadline:
                    time.sleep(0.05)
                    if fake.mode == "slow":
                        self._send(": keep-alive\n\n")  # an SSE comment: no event, but finds a closed client
                return
            if fake.mode == "sse_error":
                self._send(_chunk(chat, "Hel"))
                self._send('event: error\ndata: {"message": "the model fell over"}\n\n')
                return
            if fake.mode == "forever":
                fake.sent_chunks = 0
                for _ in range(100_000):
                    self._send(
                        _chunk(chat, fake.forever_text, logprobs=fake.logprobs if body.get("logprobs") else None)
                    )
                    fake.sent_chunks += 1
                return
            for word in fake.words:
                self._send(_chunk(chat, word, logprobs=fake.logprobs if body.get("logprobs") else None))
            if fake.mode == "after_finish":
                self._send(_chunk(chat, "", finish="stop"))
                self._send(_chunk(chat, " AND MORE AFTER THE FINISH"))
                self._send(_chunk(chat, "", usage=len(fake.words)))
            elif fake.mode == "finish_then_open":
                self._send(_chunk(chat, "", finish="stop", usage=len(fake.words)))
                deadline = time.monotonic() + 30
                while not fake.release.is_set() and time.monotonic() < deadline:
                    time.sleep(0.05)
                return
            elif fake.mode == "negative_usage":
                self._send(_chunk(chat, "", finish="stop", usage=-5))
            else:
                self._send(_chunk(chat, "", finish="stop", usage=len(fake.words)))
            self._send("data: [DONE]\n\n")

        def _send(self, text: str) -> None:
            self.wfile.write(text.encode())
            self.wfile.flush()

        def _json(self, status: int, payload: dict[str, Any]) -> None:
            self._raw(status, "application/json", json.dumps(payload).encode())

        def _raw(self, status: int, content_type: str, data: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler


def _chunk(
    chat: bool, text: str, finish: str | None = None, usage: int | None = None, logprobs: dict | None = None
) -> str:
    choice: dict[str, Any] = {"index": 0, "finish_reason": finish}
    if logprobs is not None:
        top = {**logprobs, text: logprobs.get(text, -0.5)}
        choice["logprobs"] = {
            "tokens": [text],
            "token_logprobs": [top[text]],
            "top_logprobs": [top],
            "text_offset": [0],
        }
    if chat:
        choice["delta"] = {"content": text}
    else:
        choice["text"] = text
    payload: dict[str, Any] = {
        "id": "fake",
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": 0,
        "model": "fake-model",
        "choices": [choice] if text or finish or usage is None else [],
    }
    if usage is not None:
        payload["usage"] = {"prompt_tokens": 1, "completion_tokens": usage, "total_tokens": usage + 1}
    return f"data: {json.dumps(payload)}\n\n"
