"""What the remote engine makes of replies no real server sends on demand (tests/_fake_server.py).

The client bounds a reply itself (issue 26 #5): the budget holds although the server streams
forever, text after the finish chunk is no part of the reply, and a finished reply whose
connection stays open is returned. A /v1/models reply that is not a model list is a
ModelLoadError (#10). Each error says what it is, and the same object keeps working after it.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from _fake_server import FakeServer

from hfllm_nb import GenerationError, HuggingFaceLLM, ModelLoadError
from hfllm_nb.engines import END_OF_TEXT, LENGTH


@pytest.fixture
def fake():
    with FakeServer() as server:
        yield server


@pytest.fixture
def llm(fake):
    with HuggingFaceLLM(endpoint=fake.url, timeout=5) as model:
        yield model


def still_works(llm, fake) -> None:
    fake.mode = "ok"
    assert llm.generate("Hi", max_new_tokens=3, return_full_text=False) == "Hello there."


# ----------------------------------------------------------------- the client bounds a reply (#5)


@pytest.mark.parametrize("surface", ["generate", "stream", "chat", "explain"])
def test_a_server_that_streams_forever_is_cut_at_the_budget(llm, fake, surface):
    fake.mode = "forever"  # " more" without end, no finish_reason (old code: thousands of tokens, minutes)
    fake.logprobs = {" AND": -0.1}
    started = time.perf_counter()
    if surface == "generate":
        text = llm.generate("Hi", max_new_tokens=5, return_full_text=False)
    elif surface == "stream":
        text = "".join(llm.stream("Hi", max_new_tokens=5))
    elif surface == "chat":
        text = llm.chat("Hi", max_new_tokens=5)
    else:
        text = "".join(t.text for t in llm.explain("Hi", max_new_tokens=5).generated)
    assert time.perf_counter() - started < 5
    assert len(llm.tokenizer(text, add_special_tokens=False)["input_ids"]) <= 5
    assert text == " more" * 5
    assert llm.last_stats.new_tokens == 5
    assert llm.last_stats.finish_reasons == (LENGTH,)
    still_works(llm, fake)


def test_several_tokens_a_chunk_forever_are_cut_at_the_budget_too(llm, fake):
    fake.mode, fake.forever_text = "forever", " AND MORE"  # two tokens a chunk
    # Cut once past the budget's slack (2 + 5 // 16 = 2 tokens): three chunks, six tokens, let through.
    assert llm.generate("Hi", max_new_tokens=5, return_full_text=False) == " AND MORE" * 3
    assert llm.last_stats.finish_reasons == (LENGTH,)
    assert llm.last_stats.new_tokens == 6
    assert fake.disconnected.wait(5)  # the client hung up: the server stops writing
    still_works(llm, fake)


def test_text_after_the_finish_chunk_is_dropped(llm, fake):
    fake.mode = "after_finish"  # old code: "Hello there. AND MORE AFTER THE FINISH"
    assert llm.generate("Hi", max_new_tokens=20, return_full_text=False) == "Hello there."
    assert "".join(llm.stream("Hi", max_new_tokens=20)) == "Hello there."
    assert llm.last_stats.finish_reasons == (END_OF_TEXT,)
    assert llm.last_stats.new_tokens == 3  # the usage chunk after it still counts


def test_a_finished_reply_whose_connection_stays_open_is_returned(llm, fake):
    fake.mode = "finish_then_open"  # old code: "sent nothing for 5 s" after 5 s, the reply thrown away
    started = time.perf_counter()
    assert llm.generate("Hi", max_new_tokens=20, return_full_text=False) == "Hello there."
    assert "".join(llm.stream("Hi", max_new_tokens=20)) == "Hello there."
    assert time.perf_counter() - started < 4
    assert llm.last_stats.finish_reasons == (END_OF_TEXT,)
    still_works(llm, fake)


def test_a_negative_usage_count_is_not_believed(llm, fake):
    fake.mode = "negative_usage"  # old code: new_tokens == -5
    assert llm.generate("Hi", max_new_tokens=20, return_full_text=False) == "Hello there."
    assert llm.last_stats.new_tokens == llm.count_tokens("Hello there.")


# ----------------------------------------------------------------- replies reported for what they are


def test_an_html_error_page_is_named_not_quoted(llm, fake):
    fake.mode = "html:502"  # old code: the page's markup in the message
    with pytest.raises(GenerationError, match="HTTP 502.*HTML page titled '502 Bad Gateway'") as caught:
        llm.generate("Hi", max_new_tokens=3)
    assert "<" not in str(caught.value)
    still_works(llm, fake)


def test_an_sse_error_event_is_reported_as_the_servers_error(llm, fake):
    fake.mode = "sse_error"  # old code: "ended the reply without finishing it"
    with pytest.raises(GenerationError, match="reported an error while generating: the model fell over"):
        llm.generate("Hi", max_new_tokens=3)
    with pytest.raises(GenerationError, match="the model fell over"):
        list(llm.stream("Hi", max_new_tokens=3))
    still_works(llm, fake)


def test_a_whole_reply_to_a_streamed_request_is_named(llm, fake):
    fake.mode = "whole_reply"  # old code: "ended the reply without finishing it"
    with pytest.raises(GenerationError, match="application/json instead of an event stream.*stream=true"):
        llm.generate("Hi", max_new_tokens=3)
    still_works(llm, fake)


# ----------------------------------------------------------------- /v1/models garbage (#10)


@pytest.mark.parametrize(
    ("body", "kind", "words"),
    [
        ("<html><body>Welcome to nginx!</body></html>", "text/html", "an HTML page"),  # old: AttributeError
        ("{not json", "application/json", "not JSON"),  # old: JSONDecodeError
        ('{"object": "list", "data": {"id": "x"}}', "application/json", "no list of models"),  # old: AttributeError
        ('{"object": "list", "data": null}', "application/json", "'data' = None"),  # old: AttributeError
        ("[1, 2]", "application/json", "no 'data'"),
    ],
    ids=["html-200", "invalid-json", "data-not-a-list", "data-null", "not-an-object"],
)
def test_a_models_list_that_is_not_one_is_a_load_error(fake, body, kind, words):
    fake.models_body, fake.models_type = body, kind
    with pytest.raises(ModelLoadError, match=words) as caught:
        HuggingFaceLLM(endpoint=fake.url)
    assert "ends in /v1" in str(caught.value) and fake.url in str(caught.value)
    fake.models_body = None
    still_works(HuggingFaceLLM(endpoint=fake.url), fake)


def test_the_cli_exits_with_its_load_error_code_on_a_bad_models_list(fake):
    from hfllm_nb.cli import EXIT_FAILED, EXIT_USAGE

    fake.models_body = "{not json"  # old code: a ValueError (JSONDecodeError), exit 2 "bad arguments"
    command = [sys.executable, "-m", "hfllm_nb", "generate", "Hi", "--max-new-tokens", "2", "--endpoint", fake.url]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == EXIT_FAILED != EXIT_USAGE, result.stderr
    assert "not JSON" in result.stderr
