"""Prefix reuse: a prompt that extends the last call's prefills only its new tokens, with the same text."""

from __future__ import annotations

import threading

import pytest
import torch
from transformers import StoppingCriteria

from hfllm_nb import HuggingFaceLLM
from hfllm_nb.engines.local.prefix_cache import PrefixCache, shared_prefix

# A system prompt long enough that reuse matters (~300 tokens), about something the model knows.
SYSTEM = "You are a helpful assistant. " + "The printing press spread across Europe in the fifteenth century. " * 25
QUESTIONS = ["Who invented the printing press?", "When was that?", "What did it change?"]


def raw_greedy_ids(llm: HuggingFaceLLM, ids: list[int], new_tokens: int) -> list[int]:
    """Plain transformers' greedy continuation of ``ids``, with no cache passed in."""
    inputs = torch.tensor([ids], device=llm.device)
    output = llm.model.generate(
        inputs,
        attention_mask=torch.ones_like(inputs),
        max_new_tokens=new_tokens,
        do_sample=False,
        pad_token_id=llm.tokenizer.pad_token_id,
    )
    return output[0, len(ids) :].tolist()


def raw_reply(llm: HuggingFaceLLM, messages: list[dict[str, str]], new_tokens: int) -> str:
    ids = llm.tokenizer(llm.format_chat(messages), add_special_tokens=False)["input_ids"]
    return llm.tokenizer.decode(raw_greedy_ids(llm, ids, new_tokens), skip_special_tokens=True)


def ids_of(llm: HuggingFaceLLM, text: str) -> list[int]:
    return llm.tokenizer(text)["input_ids"]


@pytest.fixture(scope="module")
def real_fp32(default_model_dir):
    """The default model in float32, its own object, so other tests' calls leave no prefix in it."""
    return HuggingFaceLLM(dtype="float32")


@pytest.fixture()
def tiny(tiny_model_dir):
    """A fresh tiny model per test, for bookkeeping (some tests change its weights). Its random
    weights repeat one token whatever the prompt, so tests of the text itself use the real model."""
    llm = HuggingFaceLLM(str(tiny_model_dir), dtype="float32")
    yield llm
    llm.close()


def _chat_matches_a_model_without_reuse(llm: HuggingFaceLLM) -> None:
    messages = [{"role": "system", "content": SYSTEM}]
    for turn, question in enumerate(QUESTIONS):
        messages.append({"role": "user", "content": question})
        reply = llm.chat(messages, max_new_tokens=16)
        stats = llm.last_stats
        assert reply == raw_reply(llm, messages, 16), f"turn {turn + 1}"
        if turn == 0:
            assert stats.prompt_tokens_reused == 0
        else:
            # The history and most of the last reply (up to where the template re-tokenizes it) are reused.
            assert stats.prompt_tokens > stats.prompt_tokens_reused > stats.prompt_tokens - 40, (turn, stats)
        messages.append({"role": "assistant", "content": reply})


def test_chat_turns_prefill_only_the_new_message_and_reply_as_plain_transformers(real_fp32):
    # Catches a cache not cropped to the shared prefix (stale reply tokens stay in it: other text),
    # ids recorded off by one against the cache's length, or no reuse at all (reused stays 0).
    _chat_matches_a_model_without_reuse(real_fp32)


def test_16_bit_models_do_not_reuse_their_prefix(default_model_dir):
    # Their reused keys and values round differently from a fresh prefill's: a 10-turn bfloat16 chat
    # gave other greedy replies in 4 turns. Catches reuse switched on for 16-bit weights.
    half = HuggingFaceLLM(dtype="bfloat16")
    try:
        half.generate("The capital of France is", max_new_tokens=4)
        half.generate("The capital of France is a", max_new_tokens=4)
        assert half.last_stats.prompt_tokens_reused == 0 and half._engine.cached_prefix == (0, 0)
    finally:
        half.close()


def test_streamed_turn_reuses_and_streams_the_same_reply(real_fp32):
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTIONS[0]}]
    first = real_fp32.chat(messages, max_new_tokens=12)
    messages += [{"role": "assistant", "content": first}, {"role": "user", "content": QUESTIONS[1]}]
    streamed = "".join(real_fp32.chat(messages, max_new_tokens=12, stream=True))
    assert real_fp32.last_stats.prompt_tokens_reused > 0
    assert streamed == raw_reply(real_fp32, messages, 12)


def test_a_prompt_that_diverges_reuses_only_the_shared_part(real_fp32):
    # Catches reusing the whole kept cache when the new prompt differs part way (no crop).
    first, second = "The capital of France is Paris and the", "The capital of France is a city with"
    real_fp32.generate(first, max_new_tokens=8)
    text = real_fp32.generate(second, max_new_tokens=8, return_full_text=False)
    expected = shared_prefix(ids_of(real_fp32, first), ids_of(real_fp32, second))
    assert 0 < expected < len(ids_of(real_fp32, second))
    assert real_fp32.last_stats.prompt_tokens_reused == expected
    assert text == real_fp32.tokenizer.decode(
        raw_greedy_ids(real_fp32, ids_of(real_fp32, second), 8), skip_special_tokens=True
    )


def test_the_same_prompt_twice_runs_its_last_token_again(real_fp32):
    # Catches reusing every prompt token: generate then has nothing to run for the first logits.
    prompt = "Once upon a time, in a land far far away"
    first = real_fp32.generate(prompt, max_new_tokens=8)
    again = real_fp32.generate(prompt, max_new_tokens=8)
    assert again == first
    assert real_fp32.last_stats.prompt_tokens_reused == len(ids_of(real_fp32, prompt)) - 1


def test_a_prompt_extending_the_last_prompt_and_its_reply_reuses_both(real_fp32):
    text = real_fp32.generate("Once upon a time", max_new_tokens=6)
    longer = text + " and then"
    again = real_fp32.generate(longer, max_new_tokens=6, return_full_text=False)
    assert real_fp32.last_stats.prompt_tokens_reused >= len(ids_of(real_fp32, "Once upon a time")) + 4
    assert again == real_fp32.tokenizer.decode(
        raw_greedy_ids(real_fp32, ids_of(real_fp32, longer), 6), skip_special_tokens=True
    )


def test_changed_weights_drop_the_kept_prefix(tiny):
    # Catches a cache kept across an in-place change of the weights (its keys and values are stale).
    prompt = "The capital of France is"
    tiny.generate(prompt, max_new_tokens=4)
    with torch.no_grad():
        tiny.model.model.layers[0].self_attn.k_proj.weight.add_(0.05)
    text = tiny.generate(prompt, max_new_tokens=8, return_full_text=False)
    assert tiny.last_stats.prompt_tokens_reused == 0
    assert text == tiny.tokenizer.decode(raw_greedy_ids(tiny, ids_of(tiny, prompt), 8), skip_special_tokens=True)


class _Raises(StoppingCriteria):
    def __call__(self, input_ids, scores, **kwargs):
        raise RuntimeError("boom")


def test_an_error_mid_generation_drops_the_prefix(tiny):
    # Catches keeping (or reusing) a cache that a failed call left half written.
    prompt = "The capital of France is"
    tiny.generate(prompt, max_new_tokens=4)
    with pytest.raises(RuntimeError, match="boom"):
        tiny.generate(prompt + " a city", max_new_tokens=4, stopping_criteria=[_Raises()])
    assert tiny._engine.cached_prefix == (0, 0)
    text = tiny.generate(prompt + " a city", max_new_tokens=8, return_full_text=False)
    assert tiny.last_stats.prompt_tokens_reused == 0
    expected = raw_greedy_ids(tiny, ids_of(tiny, prompt + " a city"), 8)
    assert text == tiny.tokenizer.decode(expected, skip_special_tokens=True)


def test_a_stop_during_the_prefill_drops_the_prefix(tiny):
    # Catches a kept cache after a Stop that came before the first token (the prompt was abandoned).
    prompt = "The capital of France is"

    def press_stop_once(module, args):  # Stop from another thread while the prompt is being read
        handle.remove()
        presser = threading.Thread(target=tiny.stop)
        presser.start()
        presser.join()

    handle = tiny.model.register_forward_pre_hook(press_stop_once)
    tiny.generate(prompt, max_new_tokens=40)
    assert tiny.last_stats.stopped and tiny.last_stats.new_tokens == 1
    assert tiny._engine.cached_prefix == (0, 0)
    tiny.generate(prompt, max_new_tokens=6)
    assert tiny.last_stats.prompt_tokens_reused == 0 and tiny._engine.cached_prefix[0] > 0


def test_batches_and_beam_search_neither_use_nor_replace_the_kept_prefix(tiny):
    prompt = "The capital of France is"
    tiny.generate(prompt, max_new_tokens=4)
    kept = tiny._engine.cached_prefix
    tiny.generate([prompt, prompt + " not"], max_new_tokens=4)
    assert tiny.last_stats.prompt_tokens_reused == 0 and tiny._engine.cached_prefix == kept
    beams = tiny.generate(prompt, max_new_tokens=4, num_beams=2)
    assert tiny.last_stats.prompt_tokens_reused == 0 and tiny._engine.cached_prefix == kept
    assert beams == tiny.tokenizer.decode(
        tiny.model.generate(
            torch.tensor([ids_of(tiny, prompt)]),
            max_new_tokens=4,
            num_beams=2,
            do_sample=False,
            pad_token_id=tiny.tokenizer.pad_token_id,
        )[0],
        skip_special_tokens=True,
    )


def test_a_view_running_its_own_forward_passes_drops_the_prefix(tiny):
    # Catches a prefix surviving a look-inside view, which may hook or change the model.
    tiny.generate("The capital of France is", max_new_tokens=4)
    tiny._engine.run(lambda model, tokenizer: None)
    assert tiny._engine.cached_prefix == (0, 0)


def test_close_frees_the_kept_prefix(tiny_model_dir):
    llm = HuggingFaceLLM(str(tiny_model_dir), dtype="float32")
    llm.generate("The capital of France is", max_new_tokens=4)
    assert llm._engine.cached_prefix[0] > 0
    llm.close()
    assert llm._engine.cached_prefix == (0, 0)


def test_one_prefix_is_kept_and_its_bytes_match_the_config(tiny):
    # Catches a cache kept per prompt (memory grows with every call) or one larger than its tokens need.
    for prompt in ("The capital of France is", "Once upon a time", "Hello there, how are you"):
        tiny.generate(prompt, max_new_tokens=5)
    tokens, nbytes = tiny._engine.cached_prefix
    config = tiny.model.config
    per_token = (
        2
        * config.num_hidden_layers
        * config.num_key_value_heads
        * (config.hidden_size // config.num_attention_heads)
        * 4
    )  # keys and values, float32
    assert tokens == len(ids_of(tiny, "Hello there, how are you")) + 4
    assert nbytes == tokens * per_token


def test_a_cache_over_the_byte_limit_is_not_kept(tiny):
    tiny._engine._prefix.max_bytes = 1
    tiny.generate("The capital of France is", max_new_tokens=4)
    assert tiny._engine.cached_prefix == (0, 0)
    tiny.generate("The capital of France is a", max_new_tokens=4)
    assert tiny.last_stats.prompt_tokens_reused == 0


def test_a_quantized_model_reuses_its_prefix_with_the_same_text(default_model_dir):
    eight = HuggingFaceLLM(device="cpu", dtype="float32", quantization_config={"load_in_8bit": True})
    try:
        eight.generate("The capital of France is", max_new_tokens=6)
        text = eight.generate("The capital of France is a city", max_new_tokens=8, return_full_text=False)
        assert eight.last_stats.prompt_tokens_reused > 0
        expected = raw_greedy_ids(eight, ids_of(eight, "The capital of France is a city"), 8)
        assert text == eight.tokenizer.decode(expected, skip_special_tokens=True)
    finally:
        eight.close()


def test_models_whose_generation_config_names_a_cache_are_left_alone(tiny):
    config = tiny.model.generation_config
    assert PrefixCache.supported(tiny.model)
    config.cache_implementation = "static"
    try:
        assert not PrefixCache.supported(tiny.model)
    finally:
        config.cache_implementation = None
