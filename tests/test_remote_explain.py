"""llm.explain on a remote engine, against the fake server's log-probabilities (no real server needed).

The real server's numbers (llama.cpp against in-process float32) are checked in tests/test_llama_cpp.py.
"""

from __future__ import annotations

import math

import pytest
from _fake_server import FakeServer

from hfllm_nb import GenerationError, HuggingFaceLLM
from hfllm_nb.inside.explain import explain_stream


@pytest.fixture
def fake():
    with FakeServer() as server:
        yield server


def test_explain_on_a_server_shows_exactly_its_logprobs_on_our_tokens(fake):
    llm = HuggingFaceLLM(endpoint=fake.url)
    fake.logprobs = {"Hello": -1.2, " there": -1.6, ".": -1.4, " world": -3.0}  # 0.8 of the mass
    explanation = llm.explain("Hi", max_new_tokens=3, top_k=2)
    assert fake.requests[-1]["logprobs"] == 2 and fake.requests[-1]["temperature"] == 0
    assert [t.text for t in explanation.generated] == ["Hello", " there", "."]
    assert [t.probability for t in explanation.generated] == [math.exp(-1.2), math.exp(-1.6), math.exp(-1.4)]
    best = [("Hello", math.exp(-1.2)), (".", math.exp(-1.4))]  # the two most likely the server listed
    for token in explanation.generated:
        assert token.alternatives == tuple(best)
        assert token.alternative_ids == tuple(
            llm.tokenizer(t, add_special_tokens=False)["input_ids"][0] for t, _ in best
        )
        assert token.token_id == llm.tokenizer(token.text, add_special_tokens=False)["input_ids"][0]
        listed = [math.exp(v) for v in fake.logprobs.values()]  # entropy over all that the server listed
        rest = 1 - sum(listed)
        assert token.entropy == pytest.approx(-sum(p * math.log(p) for p in listed) - rest * math.log(rest))
        assert token.from_server
    prompt = [t for t in explanation.tokens if t.is_prompt]
    assert [t.token_id for t in prompt] == llm.tokenizer("Hi")["input_ids"]
    assert all(t.probability is None and t.entropy is None for t in prompt)
    assert explanation.text == "HiHello there."
    assert llm.last_stats.new_tokens == 3
    assert "entropy ≥" in explanation._repr_html_()


def test_explain_on_a_server_without_logprobs_names_the_servers_that_have_them(fake):
    llm = HuggingFaceLLM(endpoint=fake.url)
    with pytest.raises(GenerationError, match="llama.cpp.*vLLM"):
        llm.explain("Hi", max_new_tokens=3)
    assert llm.generate("Hi", max_new_tokens=3, return_full_text=False) == "Hello there."


def test_an_explain_stream_made_before_close_and_read_after_it_refuses_and_asks_nothing(fake):
    # Catches the remote explain taking its turn without the facade's open check (every surface gives
    # the same error then; the engine's own check words it differently).
    llm = HuggingFaceLLM(endpoint=fake.url)
    fake.logprobs = {"Hello": -1.2, " there": -1.6}
    tokens = explain_stream(llm, "Hi", max_new_tokens=3)
    asked = len(fake.requests)
    llm.close()
    with pytest.raises(GenerationError, match="was closed; load it again"):
        next(tokens)
    assert len(fake.requests) == asked
