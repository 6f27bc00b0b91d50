"""vLLM (its CPU build, float32) against in-process float32: what only this server does.

The shared remote suite (tests/test_remote.py, tests/test_chat_remote.py) runs against the same
server, started once per session (tests/conftest.py: ``vllm_server``). Here: greedy text token for
token on four prompts, the "vllm" dialect read from the server itself, explain with the prompt's
probabilities as in-process computes them, its log-probability limit named with the fix, Stop seen
in the server's own token counter, and a small classroom (several clients on one server).
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request

import pytest
from test_chat_remote import check_chat_panel

from hfllm_nb import HuggingFaceLLM
from hfllm_nb.engines import LENGTH, STOPPED
from hfllm_nb.engines.remote.wire import detect_dialect
from hfllm_nb.inside.explain import explain_stream  # torch-free: the facade's explain_stream

pytestmark = pytest.mark.slow

PROMPTS = ["Once upon a time,", "The capital of France is", "def fibonacci(n):", "The best way to learn is"]
NEW_TOKENS = 48
P_TOLERANCE = 1e-3  # the bound; measured: 2.2e-5 at most
GENERATED = "vllm:generation_tokens_total"


@pytest.fixture(scope="module")
def remote(vllm_server):
    with HuggingFaceLLM(endpoint=vllm_server.url, timeout=120) as llm:
        yield llm


@pytest.fixture(scope="module")
def local32(default_model_dir):
    with HuggingFaceLLM(dtype="float32", device="cpu") as llm:
        yield llm


def test_the_server_is_recognised_as_vllm_with_its_context_length(vllm_server, remote):
    with urllib.request.urlopen(vllm_server.url + "/models", timeout=10) as response:
        listed = json.load(response)["data"]
    assert detect_dialect(listed) == "vllm"
    assert remote.context_length == listed[0]["max_model_len"] == 2048


def test_greedy_float32_text_equals_in_process_on_four_prompts(remote, local32):
    for prompt in PROMPTS:
        assert remote.generate(prompt, max_new_tokens=NEW_TOKENS) == local32.generate(prompt, max_new_tokens=NEW_TOKENS)
        assert remote.last_stats.finish_reasons == local32.last_stats.finish_reasons
        assert remote.last_stats.new_tokens == local32.last_stats.new_tokens  # vLLM's usage count


def test_explain_gives_the_prompt_and_new_tokens_as_in_process(remote, local32):
    for prompt in PROMPTS[:2]:
        served = remote.explain(prompt, max_new_tokens=8, top_k=3)
        own = local32.explain(prompt, max_new_tokens=8, top_k=3)
        assert [t.token_id for t in served.tokens] == [t.token_id for t in own.tokens]
        assert [t.is_prompt for t in served.tokens] == [t.is_prompt for t in own.tokens]
        assert served.text == own.text
        assert served.tokens[0].probability is own.tokens[0].probability is None  # nothing comes before it
        for ours, theirs in zip(own.tokens[1:], served.tokens[1:], strict=True):
            assert theirs.probability == pytest.approx(ours.probability, abs=P_TOLERANCE), theirs
            assert theirs.alternative_ids == ours.alternative_ids, theirs
            for (_, p), (_, q) in zip(ours.alternatives, theirs.alternatives, strict=True):
                assert q == pytest.approx(p, abs=P_TOLERANCE)
            assert theirs.from_server and theirs.entropy <= ours.entropy + 1e-6  # a lower bound


def test_a_logprob_limit_is_named_with_the_fix(remote):
    with pytest.raises(ValueError, match=r"at most 20 alternatives.*top_k=25.*top_k=20 or less.*--max-logprobs 25"):
        remote.explain("Hello", max_new_tokens=2, top_k=25)
    with pytest.raises(ValueError, match=r"alternatives=25 asks for more.*alternatives=20 or less"):
        list(explain_stream(remote, "Hello", max_new_tokens=2, alternatives=25))
    assert len(remote.explain("Hello", max_new_tokens=2, top_k=20).generated) == 2  # the same object works


def test_stop_ends_the_request_on_the_server_as_its_counter_shows(remote, vllm_server):
    before = vllm_server.metric(GENERATED)
    pieces = remote.stream("Once upon a time, in a land far away,", max_new_tokens=400)
    read = [next(pieces) for _ in range(5)]
    remote.stop()
    read += list(pieces)
    assert remote.last_stats.finish_reasons == (STOPPED,)
    time.sleep(2)  # had it gone on, the server would have made ~395 more tokens meanwhile (or all 400)
    made = vllm_server.metric(GENERATED) - before
    assert len(read) <= made <= len(read) + 10, (made, len(read))


def test_a_classroom_of_four_clients_each_stop_ends_only_its_own(vllm_server, local32):
    # Four notebooks (own objects, own connections) stream from one server at once; the first stops early.
    prompts = ["The history of the printing press began in", *PROMPTS[:3]]
    expected = [local32.generate(p, max_new_tokens=16, return_full_text=False) for p in prompts]
    results: list[object] = [None] * 4
    started = threading.Barrier(4)

    def client(index: int) -> None:
        try:
            with HuggingFaceLLM(endpoint=vllm_server.url, timeout=120) as llm:
                started.wait(60)
                pieces = llm.stream(prompts[index], max_new_tokens=16)
                text = next(pieces)
                if index == 0:
                    llm.stop()
                text += "".join(pieces)
                results[index] = (text, llm.last_stats.finish_reasons, llm.last_stats.time_to_first_token)
        except BaseException as exc:  # reported below, with the others
            results[index] = exc

    threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    assert not any(isinstance(r, BaseException) for r in results), results
    assert results[0][1] == (STOPPED,) and expected[0].startswith(results[0][0])
    for index in (1, 2, 3):
        text, reasons, ttft = results[index]
        assert (text, reasons) == (expected[index], (LENGTH,)), index
        assert ttft is not None and ttft > 0


def test_the_chat_panel_on_vllm_replies_as_its_chat_and_stops(remote):
    # Here, not as a param of test_chat_remote.py: that module runs first, and the session's vLLM
    # server would then stay up (4 GiB) through every module in between.
    check_chat_panel(remote)
