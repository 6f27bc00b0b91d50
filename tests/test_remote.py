"""HuggingFaceLLM(endpoint=...): against three real servers on this machine, plus a fake for faults.

``transformers serve`` and vLLM run the default model in float32 on the CPU, so their greedy text
must equal the in-process float32 text token for token (vLLM: one server per session, shared with
tests/test_vllm.py, which checks what only vLLM does). llama.cpp (llama-cpp-python's server) runs the GGUF
file as shipped, Q4_1 weights with 8-bit activations: its greedy text is checked where the model is
sure (tests/test_llama_cpp.py measures how far it goes). The fake server (tests/_fake_server.py)
only adds the faults a real one will not produce on demand.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback

import pytest
from _fake_server import FakeServer
from _server import LlamaCppProcess, ServeProcess, free_port, require_llama_cpp

from hfllm_nb import GenerationError, HuggingFaceLLM, ModelLoadError
from hfllm_nb.default_model import find_default_gguf
from hfllm_nb.engines import END_OF_TEXT, LENGTH, STOP_STRING, STOPPED
from hfllm_nb.engines.remote.wire import finish_reason, pick_served_model

SECRET = "sk-test-3f9a1c-never-shown"


@pytest.fixture(scope="module", params=["transformers serve", "llama.cpp", "vllm"])
def server(request, default_model_dir):
    if request.param == "vllm":  # session-wide: starting it takes a minute or more
        yield request.getfixturevalue("vllm_server")
        return
    if request.param == "llama.cpp":
        require_llama_cpp()
        process = LlamaCppProcess(find_default_gguf()).start()
    else:
        process = ServeProcess(default_model_dir).start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def remote(server):
    with HuggingFaceLLM(endpoint=server.url, timeout=60) as llm:
        yield llm


@pytest.fixture(scope="module")
def local32(default_model_dir):
    with HuggingFaceLLM(dtype="float32", device="cpu") as llm:  # the server runs on the CPU too
        yield llm


@pytest.fixture
def fake():
    with FakeServer() as server:
        yield server


# ----------------------------------------------------------------- the real server: same text as in-process


@pytest.mark.parametrize(
    ("prompt", "lengths"),
    [
        ("The best way to learn is", {"max_new_tokens": 10}),  # llama.cpp agrees with float32 here too
        ("Once upon a time,", {"max_length": 14}),
        (["The future of AI is", "def fibonacci(n):"], {"max_new_tokens": 8, "return_full_text": False}),
    ],
    ids=["max_new_tokens", "max_length", "batch-continuation"],
)
def test_remote_greedy_text_equals_in_process_float32(remote, local32, prompt, lengths):
    expected = local32.generate(prompt, **lengths)
    local_stats = local32.last_stats
    assert remote.generate(prompt, **lengths) == expected
    assert remote.last_stats.finish_reasons == local_stats.finish_reasons
    assert remote.last_stats.new_tokens == local_stats.new_tokens


def test_stream_joined_equals_the_continuation(remote, local32):
    pieces = list(remote.stream("The first rule of programming is", max_new_tokens=10))
    assert len(pieces) > 1  # it really streamed
    assert "".join(pieces) == local32.generate(
        "The first rule of programming is", max_new_tokens=10, return_full_text=False
    )
    assert remote.last_stats.finish_reasons == (LENGTH,)
    assert 0 < remote.last_stats.time_to_first_token < remote.last_stats.seconds


def test_chat_reply_equals_in_process_reply(remote, local32, server):
    question = [{"role": "user", "content": "What is the capital of France?"}]
    reply = remote.chat(question, max_new_tokens=20)
    if server.exact:
        assert reply == local32.chat(question, max_new_tokens=20)
        assert remote.last_stats.finish_reasons == local32.last_stats.finish_reasons == (END_OF_TEXT,)
    else:  # llama.cpp parts from float32 at the first token here ("L'" against "The"), so: its template is ours
        formatted = remote.generate(remote.format_chat(question), max_new_tokens=20, return_full_text=False)
        assert reply == formatted
    assert "".join(remote.chat(question, max_new_tokens=20, stream=True)) == reply
    # repetition_penalty travels in transformers serve's generation_config: the end token must still end it.
    ending = remote.last_stats.finish_reasons
    assert remote.chat(question, max_new_tokens=20, repetition_penalty=1.0) == reply
    assert remote.last_stats.finish_reasons == ending


def test_stop_strings_end_the_text_as_in_process(remote, local32, server):
    options = {"max_new_tokens": 20, "stop_strings": ["."]}
    expected = local32.generate("The capital of France is", **options)  # "… Paris."
    if server.exact:  # transformers serve keeps the stop string; vLLM cuts and names it, and it is put back
        assert remote.generate("The capital of France is", **options) == expected
        assert remote.last_stats.finish_reasons == (STOP_STRING,)
    else:  # llama.cpp cuts the stop string without naming it (README: What each server supports)
        assert remote.generate("The capital of France is", **options) == expected.removesuffix(".")
        assert remote.last_stats.finish_reasons == (END_OF_TEXT,)
    # The stream gives the same text and reason as generate, on every server (vLLM once lost the ".").
    reason = remote.last_stats.finish_reasons
    continuation = remote.generate("The capital of France is", return_full_text=False, **options)
    assert "".join(remote.stream("The capital of France is", **options)) == continuation
    assert remote.last_stats.finish_reasons == reason


def test_seeded_sampling_equals_in_process_sampling(remote, local32, server):
    # transformers serve samples only through its generation_config field: temperature alone stays greedy.
    options = {"max_new_tokens": 8, "do_sample": True, "seed": 3, "temperature": 0.9, "top_k": 20}
    sampled = remote.generate("Once upon a time", **options)
    greedy = local32.generate("Once upon a time", max_new_tokens=8)
    if server.name == "transformers serve":  # torch's generator, seeded as in-process
        assert sampled == local32.generate("Once upon a time", **options)
    else:  # vLLM, llama.cpp: their own random generators; the seed repeats the text, top_k=1 is greedy
        assert sampled == remote.generate("Once upon a time", **options)
        assert remote.generate("Once upon a time", **{**options, "top_k": 1}) == greedy
    assert sampled != greedy


def test_stop_mid_stream_ends_it_quickly_and_frees_the_server(remote):
    pieces = remote.stream("Once upon a time, in a land far away,", max_new_tokens=400)
    started = time.perf_counter()
    for _ in range(3):
        next(pieces)
    per_token = (time.perf_counter() - started) / 3
    threading.Timer(0.05, remote.stop).start()
    stop_asked = time.perf_counter()
    rest = list(pieces)
    assert time.perf_counter() - stop_asked < 3
    assert len(rest) < 100
    assert remote.last_stats.finish_reasons == (STOPPED,)
    # Had the server kept generating, the next request would wait for ~390 more tokens.
    asked = time.perf_counter()
    assert remote.generate("Hi", max_new_tokens=1)
    assert time.perf_counter() - asked < max(2.0, 390 * per_token / 4)


def test_closing_the_stream_frees_the_server(remote):
    pieces = remote.stream("Once upon a time, in a small village,", max_new_tokens=400)
    started = time.perf_counter()
    next(pieces)
    next(pieces)
    per_token = (time.perf_counter() - started) / 2
    pieces.close()
    asked = time.perf_counter()
    assert remote.generate("Hi", max_new_tokens=1)
    assert time.perf_counter() - asked < max(2.0, 390 * per_token / 4)


def test_in_process_only_options_are_refused_before_any_request(remote, server):
    for options in ({"num_beams": 2}, {"no_repeat_ngram_size": 3}, {"stopping_criteria": [lambda ids, scores: False]}):
        with pytest.raises(ValueError, match=next(iter(options))):
            remote.generate("Hello", max_new_tokens=2, **options)
    with pytest.raises(ValueError, match="dtype"):
        HuggingFaceLLM(endpoint=server.url, dtype="float16")
    with pytest.raises(ValueError, match="use_safetensors"):
        HuggingFaceLLM(endpoint=server.url, use_safetensors=False)
    assert remote.generate("Hello", max_new_tokens=2)  # still works


def test_the_cli_generates_on_the_server_like_in_process(server, local32):
    import subprocess
    import sys

    command = [sys.executable, "-m", "hfllm_nb", "generate", "Once upon a time,", "--max-new-tokens", "6"]
    result = subprocess.run([*command, "--endpoint", server.url], capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    assert result.stdout == local32.generate("Once upon a time,", max_new_tokens=6) + "\n"


def test_the_panel_drives_the_server_unchanged(remote, server):
    panel = remote.panel(prompt="The capital of France is", max_length=14, memory_interval=60.0)
    try:
        assert panel.generate() and panel.wait(timeout=120)
        assert panel.last_error is None
        assert panel.result_text == remote.generate("The capital of France is", max_length=14, return_full_text=False)
        assert server.url in panel.memory.text  # the readout names where the model runs
    finally:
        panel.close()


def test_a_server_killed_mid_stream_raises_then_the_same_object_works_after_restart(remote, local32, server):
    # Last of the real-server tests: it restarts the module's server on the same port.
    pieces = remote.stream("Once upon a time, a young wizard", max_new_tokens=400)
    next(pieces)
    killed = time.perf_counter()
    server.kill()
    with pytest.raises(GenerationError, match="running"):
        list(pieces)
    assert time.perf_counter() - killed < 5
    with pytest.raises(GenerationError):
        remote.generate("Hi", max_new_tokens=1)
    server.start()
    assert remote.generate("The capital of France is", max_new_tokens=3) == local32.generate(
        "The capital of France is", max_new_tokens=3
    )


# ----------------------------------------------------------------- connecting


def test_connection_refused_fails_fast_naming_the_url():
    url = f"http://127.0.0.1:{free_port()}/v1"
    started = time.perf_counter()
    with pytest.raises(ModelLoadError, match="Connection refused") as caught:
        HuggingFaceLLM(endpoint=url)
    assert time.perf_counter() - started < 10
    assert url in str(caught.value)
    assert isinstance(caught.value, OSError)


def test_a_bare_host_gets_v1_and_bad_endpoints_are_refused(fake):
    llm = HuggingFaceLLM(endpoint=fake.url.removesuffix("/v1"))
    assert fake.url in llm.engine_description
    with pytest.raises(ValueError, match="http"):
        HuggingFaceLLM(endpoint="localhost:8000")
    with pytest.raises(TypeError, match="endpoint"):
        HuggingFaceLLM(endpoint=8000)


def test_api_key_is_sent_but_never_shown(fake, caplog, monkeypatch):
    monkeypatch.delenv("HFLLM_NB_API_KEY", raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-openai-env")
    fake.required_key = "the-right-key"
    caplog.set_level(logging.DEBUG)
    with pytest.raises(ModelLoadError, match="refused the API key") as caught:
        HuggingFaceLLM(endpoint=fake.url, api_key=SECRET)
    shown = "".join(traceback.format_exception(caught.value)) + caplog.text
    assert SECRET not in shown
    assert fake.auth_headers[-1] == f"Bearer {SECRET}"

    fake.required_key = SECRET
    llm = HuggingFaceLLM(endpoint=fake.url, api_key=SECRET)
    assert llm.generate("Hi", max_new_tokens=3, return_full_text=False) == "Hello there."
    assert SECRET not in repr(llm) + llm.engine_description + repr(llm._engine) + caplog.text

    fake.required_key = "sk-from-hfllm-env"  # HFLLM_NB_API_KEY wins over OPENAI_API_KEY
    monkeypatch.setenv("HFLLM_NB_API_KEY", "sk-from-hfllm-env")
    HuggingFaceLLM(endpoint=fake.url)
    assert fake.auth_headers[-1] == "Bearer sk-from-hfllm-env"


def test_served_model_is_picked_or_the_choices_are_listed(default_model_dir):
    with FakeServer(models=[{"id": "alpha", "object": "model"}, {"id": "beta", "object": "model"}]) as fake:
        with pytest.raises(ModelLoadError, match="'alpha', 'beta'"):
            HuggingFaceLLM(endpoint=fake.url)
        with pytest.raises(ModelLoadError, match="does not serve 'gamma'.*'alpha', 'beta'"):
            HuggingFaceLLM(endpoint=fake.url, served_model="gamma")
        llm = HuggingFaceLLM(endpoint=fake.url, served_model="beta")
        llm.generate("Hi", max_new_tokens=2)
        assert fake.requests[-1]["model"] == "beta"
    # Several models, one of them the model_id's folder: that one.
    models = [{"id": "other", "object": "model"}, {"id": str(default_model_dir), "object": "model"}]
    with FakeServer(models=models) as fake:
        llm = HuggingFaceLLM(str(default_model_dir), endpoint=fake.url)
        assert llm._engine.served_model == str(default_model_dir)
    assert pick_served_model(["org/SmolLM2-135M-Instruct", "x"], None, ["HuggingFaceTB/SmolLM2-135M-Instruct"]) == (
        "org/SmolLM2-135M-Instruct"
    )


# ----------------------------------------------------------------- what goes on the wire


def test_every_request_carries_max_tokens_and_the_options(fake):
    llm = HuggingFaceLLM(endpoint=fake.url, max_length=20)
    llm.generate("The capital of France is")  # max_length 20, 5 prompt tokens
    assert fake.requests[-1]["max_tokens"] == 20 - llm.count_tokens("The capital of France is")
    assert fake.requests[-1]["temperature"] == 0
    llm.generate("Hi", max_new_tokens=4, do_sample=True, seed=7, top_p=0.9, stop_strings=["\n"], repetition_penalty=1.2)
    body = fake.requests[-1]
    expected = {"max_tokens": 4, "seed": 7, "top_p": 0.9, "stop": ["\n"], "repetition_penalty": 1.2}
    assert {k: body[k] for k in expected} == expected
    assert (body["temperature"], body["top_k"]) == (
        llm.sampling_defaults["temperature"],
        llm.sampling_defaults["top_k"],
    )
    llm.chat("Hi", max_new_tokens=5)
    assert fake.requests[-1]["messages"] == [{"role": "user", "content": "Hi"}]
    assert fake.requests[-1]["max_tokens"] == 5


def test_a_named_stop_string_is_put_back_as_in_process():
    # vLLM and SGLang cut the stop string and name it; transformers keeps it, like generate() here.
    assert finish_reason("stop", "Paris", ["."], ".") == (STOP_STRING, "Paris.")
    assert finish_reason("stop", "Paris.", ["."], None) == (STOP_STRING, "Paris.")
    assert finish_reason("stop", "Paris", ["."], None) == (END_OF_TEXT, "Paris")
    assert finish_reason("length", "Par", ["."], None) == (LENGTH, "Par")


# ----------------------------------------------------------------- faults (fake server)


@pytest.mark.parametrize(
    ("mode", "error", "words"),
    [
        ("status:500", GenerationError, "HTTP 500"),
        ("status:429", GenerationError, "HTTP 429"),
        ("status:400", ValueError, "HTTP 400: fake failure"),
        ("malformed", GenerationError, "malformed"),
        ("bad_shape", GenerationError, r"malformed.*\{.choices.: ?.oops.\}"),
        ("error_event", GenerationError, "the model fell over"),
        ("drop", GenerationError, "without finishing|connection"),
    ],
)
def test_server_faults_raise_clear_errors_and_the_object_keeps_working(fake, mode, error, words):
    llm = HuggingFaceLLM(endpoint=fake.url)
    fake.mode = mode
    with pytest.raises(error, match=words):
        llm.generate("Hi", max_new_tokens=3)
    with pytest.raises(error, match=words):
        list(llm.stream("Hi", max_new_tokens=3))
    fake.mode = "ok"
    assert llm.generate("Hi", max_new_tokens=3, return_full_text=False) == "Hello there."


def test_an_option_the_server_refuses_is_named(fake):
    llm = HuggingFaceLLM(endpoint=fake.url)
    fake.mode = "status:422"
    fake.message = "Unexpected fields in the request: {'min_p'}"
    with pytest.raises(ValueError, match="does not accept min_p.*Unexpected fields"):
        llm.generate("Hi", max_new_tokens=3, do_sample=True, min_p=0.1)


def test_stop_while_the_server_is_silent_returns_at_once_and_hangs_up(fake):
    llm = HuggingFaceLLM(endpoint=fake.url)
    fake.mode = "slow"  # one piece, then only keep-alive comments: no chunk to wake a reader
    threading.Timer(0.5, llm.stop).start()
    started = time.perf_counter()
    assert llm.generate("Hi", max_new_tokens=50, return_full_text=False) == "Hel"
    assert time.perf_counter() - started < 2
    assert llm.last_stats.finish_reasons == (STOPPED,)
    assert fake.disconnected.wait(3)  # the server saw the connection close


def test_stop_before_the_response_headers_hangs_up_and_leaves_no_thread(fake):
    llm = HuggingFaceLLM(endpoint=fake.url)
    fake.mode = "no_headers"  # the server holds the request: no status line, no headers, nothing
    readers_before = _readers()
    for _ in range(3):
        fake.disconnected.clear()
        threading.Timer(0.3, llm.stop).start()
        started = time.perf_counter()
        assert llm.generate("Hi", max_new_tokens=5, return_full_text=False) == ""
        assert time.perf_counter() - started < 2
        assert llm.last_stats.finish_reasons == (STOPPED,)
        assert fake.disconnected.wait(3)  # the server saw the connection close
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and _readers() - readers_before:
        time.sleep(0.05)
    assert not _readers() - readers_before  # every reader thread ended
    fake.mode = "ok"
    assert llm.generate("Hi", max_new_tokens=3, return_full_text=False) == "Hello there."


def _readers() -> set[threading.Thread]:
    return {thread for thread in threading.enumerate() if thread.name == "hfllm_nb-remote"}


def test_a_server_gone_quiet_times_out_with_a_clear_error(fake):
    llm = HuggingFaceLLM(endpoint=fake.url, timeout=1)
    fake.mode = "silent"
    started = time.perf_counter()
    with pytest.raises(GenerationError, match="sent nothing for 1 s"):
        llm.generate("Hi", max_new_tokens=5)
    assert time.perf_counter() - started < 4
