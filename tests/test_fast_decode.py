"""The opt-in fast path (static cache + torch.compile): same float32 greedy text, compiled once."""

from __future__ import annotations

import logging

import pytest
import torch
from torch._dynamo.utils import counters

from hfllm_nb import HuggingFaceLLM
from hfllm_nb.engines.local.fast_decode import (
    DECODE_ATTENTION,
    MIN_CACHE_LENGTH,
    FastDecode,
    _sdpa_with_math_decode_steps,
    compile_config,
    keep_layer_type_guards,
    use_fused_decode_attention,
)

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


def cache_of_the_last_call(llm) -> tuple[int, int]:
    """(batch, length) of the static cache the last generate used: FastDecode keeps the latest last."""
    return next(reversed(llm._engine.fast_decode.caches))


def test_a_short_prompt_after_a_long_one_decodes_over_a_short_cache_again(tiny_model_dir, tmp_path, caplog):
    # transformers alone keeps the longest cache it ever made: every later short call pays for it.
    from hfllm_nb.testing import save_tiny_llama

    folder = save_tiny_llama(tmp_path / "tiny-1k", tiny_model_dir, max_position_embeddings=1024)
    llm = HuggingFaceLLM(str(folder), dtype="float32", compile=True)
    llm.generate(PROMPTS[1], max_new_tokens=4)
    assert cache_of_the_last_call(llm) == (1, MIN_CACHE_LENGTH)
    long_prompt = " ".join(["word"] * 300)
    with caplog.at_level(logging.INFO, logger="hfllm_nb"):
        llm.generate(long_prompt, max_new_tokens=4)
    assert cache_of_the_last_call(llm) == (1, 2 * MIN_CACHE_LENGTH)
    # A new shape compiles once, and says so (a silent 89 s call looked like a hang).
    assert "1 prompt(s) and a 512-token cache: the decode step compiles" in caplog.text
    before = compiled_graphs()
    text = llm.generate(PROMPTS[1], max_new_tokens=6, min_new_tokens=6)
    assert cache_of_the_last_call(llm) == (1, MIN_CACHE_LENGTH)
    assert compiled_graphs() == before, "going back to a size used before must not compile again"
    # Static shapes: the graph of the 256-token cache is the one that ran, not a dynamic one.
    assert compile_config(torch.device("cpu")).dynamic is False
    llm.close()
    plain = HuggingFaceLLM(str(folder), dtype="float32")
    assert text == plain.generate(PROMPTS[1], max_new_tokens=6, min_new_tokens=6)


def test_warm_up_compiles_at_load_and_leaves_no_stats(fast_tiny_llm):
    assert fast_tiny_llm._engine.fast_decode.compile_seconds is not None
    assert fast_tiny_llm.last_stats is None


def test_greedy_text_equals_the_uncompiled_path_for_every_prompt_length(fast_tiny_llm, tiny_llm):
    for prompt in PROMPTS:
        expected = tiny_llm.generate(prompt, max_new_tokens=12, min_new_tokens=12)
        assert fast_tiny_llm.generate(prompt, max_new_tokens=12, min_new_tokens=12) == expected


def test_compile_true_bypasses_prefix_reuse(fast_tiny_llm):
    # Its static caches are reset before every call: a prefix passed in as well would be refused by
    # generate or silently overwritten. Catches prefix reuse switched on for compiled models.
    fast_tiny_llm.generate(PROMPTS[2], max_new_tokens=4)
    fast_tiny_llm.generate(PROMPTS[2] + " king", max_new_tokens=4)
    assert fast_tiny_llm.last_stats.prompt_tokens_reused == 0
    assert fast_tiny_llm._engine.cached_prefix == (0, 0)


def test_prompts_of_other_lengths_reuse_the_warmed_up_graph(fast_tiny_llm):
    fast_tiny_llm.generate(PROMPTS[0], max_new_tokens=4)
    before = compiled_graphs()
    for prompt in PROMPTS:
        fast_tiny_llm.generate(prompt, max_new_tokens=6, min_new_tokens=6)
    assert compiled_graphs() == before


def test_batches_and_streams_match_the_uncompiled_path(fast_tiny_llm, tiny_llm):
    assert fast_tiny_llm.generate(PROMPTS, max_new_tokens=6) == tiny_llm.generate(PROMPTS, max_new_tokens=6)
    assert fast_tiny_llm.generate(PROMPTS[:2], max_new_tokens=6) == tiny_llm.generate(PROMPTS[:2], max_new_tokens=6)
    # Each batch size compiled once (static shapes); the same sizes again compile nothing.
    before = compiled_graphs()
    assert fast_tiny_llm.generate(PROMPTS[::-1], max_new_tokens=6) == tiny_llm.generate(PROMPTS[::-1], max_new_tokens=6)
    assert fast_tiny_llm.generate(PROMPTS[1:], max_new_tokens=6) == tiny_llm.generate(PROMPTS[1:], max_new_tokens=6)
    assert compiled_graphs() == before
    streamed = "".join(fast_tiny_llm.stream(PROMPTS[1], max_new_tokens=8))
    assert streamed == tiny_llm.generate(PROMPTS[1], max_new_tokens=8, return_full_text=False)


def test_a_compiled_cpu_model_switches_to_the_fused_decode_attention(fast_tiny_llm, tiny_llm):
    # Applies to the compiled model only; the equality tests above run through it.
    assert fast_tiny_llm.model.config._attn_implementation == DECODE_ATTENTION
    assert tiny_llm.model.config._attn_implementation == "sdpa"


def test_the_fused_attention_is_not_forced_on_a_user_choice_or_an_accelerator(tiny_llm):
    model = tiny_llm.model
    assert not use_fused_decode_attention(model, torch.device("cpu"), requested="sdpa")
    assert not use_fused_decode_attention(model, torch.device("cuda"), requested=None)
    assert model.config._attn_implementation == "sdpa"


@pytest.mark.parametrize("query_tokens", [1, 5])
def test_only_one_token_steps_take_the_math_form_and_results_match_sdpa(monkeypatch, query_tokens):
    from torch.nn import attention
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    backends = []
    real = attention.sdpa_kernel

    def recording(backend, *args, **kwargs):
        backends.append(backend)
        return real(backend, *args, **kwargs)

    monkeypatch.setattr(attention, "sdpa_kernel", recording)
    torch.manual_seed(0)
    module = torch.nn.Module()
    module.is_causal, module.num_key_value_groups, module.training = True, 2, False
    query = torch.randn(1, 4, query_tokens, 8)
    key, value = torch.randn(1, 2, 7, 8), torch.randn(1, 2, 7, 8)
    mask = torch.ones(1, 1, query_tokens, 7, dtype=torch.bool)
    ours, _ = _sdpa_with_math_decode_steps(module, query, key, value, mask, scaling=0.3)
    expected, _ = sdpa_attention_forward(module, query, key, value, mask, scaling=0.3)
    torch.testing.assert_close(ours, expected)
    assert backends == ([attention.SDPBackend.MATH] if query_tokens == 1 else [])


def test_a_second_compiled_model_with_other_layer_types_gets_its_own_graph(tiny_model_dir):
    # Same class and dtype, int8 layers instead of nn.Linear: reusing the first graph would fail.
    first = HuggingFaceLLM(str(tiny_model_dir), dtype="bfloat16", compile=True)
    eight_bit = {"load_in_8bit": True}
    plain = HuggingFaceLLM(str(tiny_model_dir), quantization_config=eight_bit)
    fast = HuggingFaceLLM(str(tiny_model_dir), quantization_config=eight_bit, compile=True)
    for prompt in PROMPTS:
        expected = plain.generate(prompt, max_new_tokens=8, min_new_tokens=8)
        assert fast.generate(prompt, max_new_tokens=8, min_new_tokens=8) == expected
    bf16 = HuggingFaceLLM(str(tiny_model_dir), dtype="bfloat16")
    assert first.generate(PROMPTS[1], max_new_tokens=8) == bf16.generate(PROMPTS[1], max_new_tokens=8)


def test_cpu_compile_skips_guards_on_torchs_own_modules():
    # Without it every compiled decode step re-checks one guard per parameter (~3 ms of ~17).
    config = compile_config(torch.device("cpu"))
    assert config.mode is None and config.dynamic is False
    assert config.options["guard_filter_fn"] is keep_layer_type_guards


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


def test_explain_on_a_compiled_model_gives_generates_text_and_probabilities(fast_tiny_llm, tiny_llm):
    # Explaining the uncompiled graph could pick another token where two were all but tied.
    for prompt in PROMPTS:
        expected = fast_tiny_llm.generate(prompt, max_new_tokens=10, min_new_tokens=10)
        explanation = fast_tiny_llm.explain(prompt, max_new_tokens=10, min_new_tokens=10)
        assert explanation.text == expected
        new = [token for token in explanation.tokens if not token.is_prompt]
        eager = [token for token in tiny_llm.explain(prompt, max_new_tokens=10, min_new_tokens=10).tokens]
        assert len(new) == 10
        for ours, reference in zip(new, [t for t in eager if not t.is_prompt], strict=True):
            if ours.token_id == reference.token_id:
                assert abs(ours.probability - reference.probability) < 1e-4


@pytest.mark.slow
def test_explain_on_the_compiled_8_bit_model_gives_generates_text(default_model_dir):
    # The case: ' answer' 3.82 % against ' United' 3.59 %, a tie that eager attention flipped.
    fast = HuggingFaceLLM(quantization_config={"load_in_8bit": True}, compile=True)
    asked = []
    real = fast._engine.decode_options
    fast._engine.decode_options = lambda *args: asked.append(args) or real(*args)
    for prompt in ["The capital of France is", PROMPTS[2]]:
        expected = fast.generate(prompt, max_new_tokens=10)
        assert fast.explain(prompt, max_new_tokens=10).text == expected
    assert asked, "explain must run the engine's own (compiled) generate settings"
    fast.close()
