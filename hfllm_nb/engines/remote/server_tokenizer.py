"""Count tokens with the server's own tokenizer, where no tokenizer for the model loads here.

llama.cpp's ``llama-server`` (``/tokenize``, ``/detokenize``), llama-cpp-python's server
(``/extras/tokenize``, ``/extras/detokenize``) and vLLM (``/tokenize``, ``/detokenize``) expose
their tokenizer over HTTP, next to ``/v1``. ``ServerTokenizer`` answers the few calls the remote
engine and the facade make of a tokenizer (encode for budgets and ``count_tokens``, decode), one
HTTP request each. Chat templates stay unavailable: ``chat`` sends messages and lets the server
apply its template, but ``format_chat`` needs a real tokenizer.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlsplit, urlunsplit

logger = logging.getLogger("hfllm_nb")

# (tokenize path, its text field, detokenize path, its text field in the answer), per server family.
_ROUTES = {
    "llama-cpp-python": ("/extras/tokenize", "input", "/extras/detokenize", "text"),
    "llama.cpp": ("/tokenize", "content", "/detokenize", "content"),
    "openai": ("/tokenize", "prompt", "/detokenize", "prompt"),  # vLLM's (SGLang has no /detokenize)
}
_ROUTES["vllm"] = _ROUTES["openai"]


class ServerTokenizer:
    """The served model's tokenizer, reached over HTTP (see module doc). Not a transformers tokenizer."""

    def __init__(self, http: Any, endpoint: str, served_model: str, dialect: str, headers: dict[str, str]) -> None:
        parts = urlsplit(endpoint)
        self._root = urlunsplit((parts.scheme, parts.netloc, "", "", ""))
        self._http = http
        self._model = served_model
        self._headers = headers
        self._tokenize, self._field, self._detokenize, self._answer = _ROUTES.get(dialect, _ROUTES["openai"])
        self.name_or_path = f"{served_model} (the server's tokenizer)"
        self.model_max_length = None
        self.pad_token_id = None
        self.eos_token_id = None
        self.chat_template = None  # format_chat says so; chat() on the server needs no template here
        self.encode("probe")  # raises where the server has no such route

    def __repr__(self) -> str:
        return f"ServerTokenizer({self._root}{self._tokenize})"

    def __call__(self, text: str | list[str], add_special_tokens: bool = True, **_: Any) -> dict[str, Any]:
        if isinstance(text, str):
            return {"input_ids": self.encode(text, add_special_tokens)}
        return {"input_ids": [self.encode(t, add_special_tokens) for t in text]}

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        body = {self._field: text, "model": self._model}
        if self._field == "content":
            body["add_special"] = add_special_tokens
        elif self._field == "prompt":
            body["add_special_tokens"] = add_special_tokens
        return [int(i) for i in self._post(self._tokenize, body)["tokens"]]

    def decode(self, ids: list[int], skip_special_tokens: bool = False, **_: Any) -> str:
        if not ids:
            return ""
        return str(self._post(self._detokenize, {"tokens": [int(i) for i in ids], "model": self._model})[self._answer])

    def apply_chat_template(self, *args: Any, **kwargs: Any) -> Any:
        raise ValueError(
            "format_chat needs the model's chat template, and no tokenizer for this model loads here (the "
            "server's tokenizer only counts tokens). Pass model_id= naming the model's hub id or folder."
        )

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        response = self._http.post(self._root + path, json=body, headers=self._headers)
        response.raise_for_status()
        return response.json()


def connect(http: Any, endpoint: str, served_model: str, dialect: str, key: str | None) -> ServerTokenizer | None:
    """The server's tokenizer, or None where the server exposes none."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        return ServerTokenizer(http, endpoint, served_model, dialect, headers)
    except Exception as exc:  # no route (404), another reply shape: there is no fallback then
        logger.info("The server has no tokenizer endpoint (%s).", type(exc).__name__)
        return None
