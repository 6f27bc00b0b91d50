"""ChatPanel against a real ``transformers serve``: the same panel, only ``endpoint=`` differs."""

from __future__ import annotations

import time

import pytest

from hfllm_nb import ChatPanel, HuggingFaceLLM

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def remote(default_model_dir):
    from _server import ServeProcess

    server = ServeProcess(default_model_dir).start()
    try:
        with HuggingFaceLLM(endpoint=server.url, timeout=60) as llm:
            yield llm
    finally:
        server.stop()


def test_chat_panel_on_a_server_replies_as_its_chat_and_stops(remote):
    check_chat_panel(remote)


def check_chat_panel(remote) -> None:
    """Two questions answered as chat() answers them, then a long reply stopped (also run on vLLM: test_vllm.py)."""
    panel = remote.chat_panel("Answer briefly.", max_length=16)
    try:
        assert isinstance(panel, ChatPanel) and remote.engine_description in panel.memory.text
        for text in ("What is the capital of France?", "And of Germany?"):
            panel.send(text)
            assert panel.wait(120)
        assert panel.error.value == "" and len(panel.messages) == 5
        assert panel.messages[-1]["content"] == remote.chat(panel.messages[:-1], max_length=16)
        assert panel.status.value.endswith("</b>") and "tokens/s" in panel.status.value
        panel.max_length.value = 400
        panel.send("Count from 1 to 300, separated by commas.")
        deadline = time.monotonic() + 120
        while not panel.reply_text and panel.is_busy and time.monotonic() < deadline:
            time.sleep(0.01)
        assert panel.is_busy, "the reply ended before Stop; ask for a longer one"
        panel.stop()
        assert panel.wait(30)
        assert panel.conversation.notes[-1] == "stopped" and panel.error.value == ""
    finally:
        panel.close()
