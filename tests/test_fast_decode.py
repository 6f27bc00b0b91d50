"""The opt-in fast path (static cache + torch.compile): same float32 greedy text, compiled once."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

from hfllm_nb import HuggingFaceLLM
from hfllm_nb._fast_decode import MIN_CACHE_LENGTH, FastDecode

PROMPTS = ["Hi", "The capital of France is", "Once upon a time, in a land far far away, there lived a"]


def compiled_graphs() -> int:
    return counters["stats"]["unique_graphs"]


@pytest.fixture(scope="module")
def fast_tiny_llm(tiny_model_dir):
    """The tiny random model with compile=True: compiles in seconds, not minutes."""
    return HuggingFaceLLM(str(tiny_model_dir), dtype="float32", compile=True)


def test_compile_must_be_a_bool(tiny_model_dir):
    with pytest.raises(TypeError, match="compile must be True or False"):
        HuggingFaceLLM(str(tiny_model_dir), compile="yes")


def test_compile_with_quantization_is_refused_before_loading():
    # bitsandbytes layers cannot compile (torch's int8 and torchao's int4 can: test_quantization.py).
    bnb = {"load_in_8bit": True, "backend": "bitsandbytes"}
    with pytest.raises(ValueError, match="compile=True does not work with quantization_config backend 'bitsandbytes'"):
        HuggingFaceLLM("no/such-model", compile=True, quantization_config=bnb)


def test_cache_length_grows_in_powers_of_two_within_the_context():
    fast = FastDecode(torch.device("cpu"), context_length=2048)
    assert fast.cache_length(1) == MIN_CACHE_LENGTH
    assert fast.cache_length(MIN_CACHE_LENGTH) == MIN_CACHE_LENGTH
    assert fast.cache_length(MIN_CACHE_LENGTH + 1) == 2 * MIN_CACHE_LENGTH
    assert fast.cache_length(2048) == 2048
    assert FastDecode(torch.device("cpu"), context_length=100).cache_length(60) == 100


def test_warm_up_compiles_at_load_and_leaves_no_stats(fast_tiny_llm):
    assert fast_tiny_llm._engine._fast.compile_seconds is not None
    assert fast_tiny_llm.last_stats is None


def test_greedy_text_equals_the_uncompiled_path_for_every_prompt_length(fast_tiny_llm, tiny_llm):
    for prompt in PROMPTS:
        expected = tiny_llm.generate(prompt, max_new_tokens=12, min_new_tokens=12)
        assert fast_tiny_llm.generate(prompt, max_new_tokens=12, min_new_tokens=12) == expected


def test_prompts_of_other_lengths_reuse_the_warmed_up_graph(fast_tiny_llm):
    fast_tiny_llm.generate(PROMPTS[0], max_new_tokens=4)
    before = compiled_graphs()
    for prompt in PROMPTS:
        fast_tiny_llm.generate(prompt, max_new_tokens=6, min_new_tokens=6)
    assert compiled_graphs() == before


def test_batches_and_streams_match_the_uncompiled_path(fast_tiny_llm, tiny_llm):
    assert fast_tiny_llm.generate(PROMPTS, max_new_tokens=6) == tiny_llm.generate(PROMPTS, max_new_tokens=6)
    # One more graph serves every batch size (the batch dimension turns dynamic).
    before = compiled_graphs()
    assert fast_tiny_llm.generate(PROMPTS[:2], max_new_tokens=6) == tiny_llm.generate(PROMPTS[:2], max_new_tokens=6)
    assert compiled_graphs() == before
    streamed = "".join(fast_tiny_llm.stream(PROMPTS[1], max_new_tokens=8))
    assert streamed == tiny_llm.generate(PROMPTS[1], max_new_tokens=8, return_full_text=False)


@pytest.mark.slow
def test_default_model_fast_path_gives_the_same_greedy_text_in_float32(default_model_dir):
    """The real model: compiling it takes 1-2 minutes on a 2-core CPU."""
    plain = HuggingFaceLLM(dtype="float32")
    fast = HuggingFaceLLM(dtype="float32", compile=True)
    before = compiled_graphs()
    for prompt in PROMPTS:
        expected = plain.generate(prompt, max_new_tokens=24, min_new_tokens=24)
        assert fast.generate(prompt, max_new_tokens=24, min_new_tokens=24) == expected
    assert compiled_graphs() == before
