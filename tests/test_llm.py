"""HuggingFaceLLM on the real default model: exact agreement with transformers, and every error path."""

from __future__ import annotations

import threading

import pytest
import torch
from transformers import LogitsProcessor, StoppingCriteria

from hfllm_nb import GenerationError, HuggingFaceLLM

PROMPTS = ["Once upon a time,", "The future of AI is", "def fibonacci(n):"]


def raw_greedy(llm: HuggingFaceLLM, prompt: str, **lengths) -> str:
    """What plain transformers gives for greedy decoding of the same model."""
    inputs = llm.tokenizer(prompt, return_tensors="pt").to(llm.device)
    output = llm.model.generate(**inputs, do_sample=False, pad_token_id=llm.tokenizer.pad_token_id, **lengths)
    return llm.tokenizer.decode(output[0], skip_special_tokens=True)


@pytest.fixture(scope="session")
def baseline(llm):
    """Greedy output of the untouched object, to prove it still works the same after an error."""
    return llm.generate(PROMPTS[0], max_new_tokens=8)


@pytest.mark.parametrize("prompt", PROMPTS)
def test_greedy_text_equals_raw_transformers_with_max_length(llm, prompt):
    assert llm.generate(prompt, max_length=24) == raw_greedy(llm, prompt, max_length=24)


@pytest.mark.parametrize("prompt", PROMPTS)
def test_greedy_text_equals_raw_transformers_with_max_new_tokens(llm, prompt):
    assert llm.generate(prompt, max_new_tokens=12) == raw_greedy(llm, prompt, max_new_tokens=12)


def test_default_max_length_comes_from_the_object(llm):
    assert llm.max_length == 20
    assert llm(PROMPTS[0]) == raw_greedy(llm, PROMPTS[0], max_length=20)


def test_call_and_generate_are_the_same(llm):
    assert llm(PROMPTS[1], max_length=22) == llm.generate(PROMPTS[1], max_length=22)


def test_max_length_counts_the_prompt_tokens(llm):
    prompt_tokens = llm.count_tokens(PROMPTS[0])
    llm.generate(PROMPTS[0], max_length=prompt_tokens + 7)
    assert llm.last_stats.prompt_tokens == prompt_tokens
    assert llm.last_stats.new_tokens == 7


def test_return_full_text_false_gives_only_the_continuation(llm):
    full = llm.generate(PROMPTS[0], max_new_tokens=10)
    continuation = llm.generate(PROMPTS[0], max_new_tokens=10, return_full_text=False)
    assert full.startswith(PROMPTS[0])
    assert continuation and not continuation.startswith(PROMPTS[0])
    assert full == PROMPTS[0] + continuation


def test_prompt_that_fills_max_length_names_both_numbers(llm, baseline):
    prompt_tokens = llm.count_tokens(PROMPTS[0])
    with pytest.raises(ValueError, match=rf"{prompt_tokens} tokens.*max_length={prompt_tokens}.*max_new_tokens"):
        llm.generate(PROMPTS[0], max_length=prompt_tokens)
    assert llm.generate(PROMPTS[0], max_new_tokens=8) == baseline


# Batches against single prompts, in float32 and bfloat16: tests/test_batch.py.


def test_stream_pieces_join_to_the_generate_continuation(llm):
    pieces = list(llm.stream(PROMPTS[1], max_new_tokens=24))
    assert len(pieces) > 1
    assert "".join(pieces) == llm.generate(PROMPTS[1], max_new_tokens=24, return_full_text=False)


def test_closing_the_stream_early_stops_generation_within_one_step(llm, baseline):
    stream = llm.stream(PROMPTS[0], max_new_tokens=400)
    next(stream)
    stream.close()
    assert llm.last_stats.stopped
    assert llm.last_stats.new_tokens <= 3
    assert not llm.is_busy
    assert llm.generate(PROMPTS[0], max_new_tokens=8) == baseline


def test_an_error_in_the_generation_thread_is_raised_in_the_caller(llm, monkeypatch, baseline):
    def broken_generate(**kwargs):
        raise RuntimeError("boom inside generate")

    with monkeypatch.context() as patch:
        patch.setattr(llm.model, "generate", broken_generate)
        with pytest.raises(RuntimeError, match="boom inside generate"):
            list(llm.stream(PROMPTS[0], max_new_tokens=5))
    assert not llm.is_busy
    assert llm.generate(PROMPTS[0], max_new_tokens=8) == baseline


class _SignalsAt(StoppingCriteria):
    """Sets ``event`` once ``step`` tokens exist, so another thread knows generation is under way."""

    def __init__(self, step: int, event: threading.Event) -> None:
        self.step, self.event, self.calls = step, event, 0

    def __call__(self, input_ids, scores, **kwargs):
        self.calls += 1
        if self.calls == self.step:
            self.event.set()
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


def test_stop_from_another_thread_ends_generate_early(llm):
    running = threading.Event()
    stopper = threading.Thread(target=lambda: running.wait(60) and llm.stop())
    stopper.start()
    text = llm.generate(PROMPTS[0], max_new_tokens=500, min_new_tokens=500, stopping_criteria=[_SignalsAt(3, running)])
    stopper.join()
    assert llm.last_stats.stopped and llm.last_stats.ended_because == "stopped"
    assert 3 <= llm.last_stats.new_tokens < 500
    assert text.startswith(PROMPTS[0])


def test_chat_applies_the_template_and_returns_the_reply(llm):
    prompt = llm.format_chat("What is the capital of France?")
    assert "<|im_start|>user\nWhat is the capital of France?" in prompt
    assert prompt.endswith("<|im_start|>assistant\n")
    reply = llm.chat("What is the capital of France?", max_new_tokens=20)
    assert "Paris" in reply
    assert "<|im_start|>" not in reply and "user" not in reply


def test_chat_accepts_a_multi_turn_conversation_and_streams(llm):
    messages = [
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": "Nice to meet you, Ada!"},
        {"role": "user", "content": "What is my name?"},
    ]
    reply = llm.chat(messages, max_new_tokens=16)
    assert "Ada" in reply
    assert "".join(llm.chat(messages, max_new_tokens=16, stream=True)) == reply


class _Script(LogitsProcessor):
    """Makes the model write ``token_ids``, in order, whatever it would have chosen."""

    def __init__(self, token_ids: list[int]) -> None:
        self.token_ids, self.start = token_ids, None

    def __call__(self, input_ids, scores):
        self.start = input_ids.shape[1] if self.start is None else self.start
        forced = torch.full_like(scores, float("-inf"))
        forced[:, self.token_ids[input_ids.shape[1] - self.start]] = 0.0
        return forced


def test_chat_returns_the_reply_as_written_whitespace_and_all(tiny_llm):
    written = "  Paris.\n\n"  # a reply that starts and ends with whitespace
    ids = tiny_llm.tokenizer(written, add_special_tokens=False)["input_ids"]
    assert tiny_llm.tokenizer.decode(ids) == written
    script = {"max_new_tokens": len(ids)}
    reply = tiny_llm.chat("Capital of France?", logits_processor=[_Script(ids)], **script)
    streamed = "".join(tiny_llm.chat("Capital of France?", stream=True, logits_processor=[_Script(ids)], **script))
    assert reply == streamed == written


def test_chat_without_a_template_says_what_to_do(tiny_llm, monkeypatch):
    monkeypatch.setattr(tiny_llm.tokenizer, "chat_template", None)
    with pytest.raises(ValueError, match="no chat template.*generate"):
        tiny_llm.chat("hello")


@pytest.mark.parametrize(
    "messages, error",
    [
        ([], TypeError),
        ([{"role": "user"}], TypeError),
        (["hello"], TypeError),
        ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}], ValueError),
    ],
)
def test_chat_rejects_malformed_conversations(llm, messages, error):
    with pytest.raises(error, match="messages|user"):
        llm.chat(messages)


def test_sampling_with_a_seed_is_reproducible_and_differs_from_greedy(llm):
    options = {"do_sample": True, "temperature": 1.5, "top_k": 0, "max_new_tokens": 16}
    first = llm.generate(PROMPTS[0], seed=7, **options)
    assert llm.generate(PROMPTS[0], seed=7, **options) == first
    others = {llm.generate(PROMPTS[0], seed=s, **options) for s in (8, 9, 10)}
    assert others - {first}, "different seeds should give a different sample"
    assert llm.generate(PROMPTS[0], max_new_tokens=16) not in others | {first}


def test_a_seed_leaves_the_global_rng_alone(llm):
    torch.manual_seed(1234)
    expected = torch.rand(3)
    torch.manual_seed(1234)
    llm.generate(PROMPTS[0], max_new_tokens=4, do_sample=True, seed=99)
    assert torch.equal(torch.rand(3), expected)


def test_passthrough_generation_keywords_match_transformers(llm):
    ours = llm.generate(PROMPTS[0], max_new_tokens=20, no_repeat_ngram_size=2, repetition_penalty=1.3)
    theirs = raw_greedy(llm, PROMPTS[0], max_new_tokens=20, no_repeat_ngram_size=2, repetition_penalty=1.3)
    assert ours == theirs


@pytest.mark.parametrize(
    "options, error, words",
    [
        ({"temperature": 0.7}, ValueError, "do_sample=True"),
        ({"do_sample": True, "temperature": 0}, ValueError, "temperature"),
        ({"do_sample": True, "temperature": -1.0}, ValueError, "temperature"),
        ({"do_sample": True, "top_p": 1.5}, ValueError, "top_p"),
        ({"do_sample": True, "top_p": 0.0}, ValueError, "top_p"),
        ({"do_sample": True, "top_k": -3}, ValueError, "top_k"),
        ({"do_sample": True, "seed": -1}, ValueError, "seed"),
        ({"repetition_penalty": 0}, ValueError, "repetition_penalty"),
        ({"do_sample": "yes"}, TypeError, "do_sample"),
        ({"temprature": 0.5}, TypeError, "'temprature'"),
        ({"input_ids": [1, 2]}, TypeError, "input_ids"),
        ({"num_return_sequences": 3}, ValueError, "num_return_sequences"),
    ],
)
def test_bad_generation_options_raise_and_the_object_keeps_working(llm, baseline, options, error, words):
    with pytest.raises(error, match=words):
        llm.generate(PROMPTS[0], **options)
    assert llm.generate(PROMPTS[0], max_new_tokens=8) == baseline


@pytest.mark.parametrize(
    "prompt, error, words",
    [
        (None, TypeError, "NoneType"),
        (42, TypeError, "int"),
        ("", ValueError, "empty"),
        ("   \n\t", ValueError, "whitespace"),
        (b"bytes", TypeError, "decode"),
        ({"text": "hi"}, TypeError, "dict"),
        (["ok", 3], TypeError, r"prompt\[1\]"),
        (["ok", " "], ValueError, r"prompt\[1\]"),
        ([], ValueError, "empty"),
    ],
)
def test_bad_prompts_raise_and_the_object_keeps_working(llm, baseline, prompt, error, words):
    with pytest.raises(error, match=words):
        llm.generate(prompt)
    assert llm.generate(PROMPTS[0], max_new_tokens=8) == baseline


@pytest.mark.parametrize(
    "lengths, error, words",
    [
        ({"max_length": 0}, ValueError, "at least 1"),
        ({"max_length": -5}, ValueError, "at least 1"),
        ({"max_length": True}, TypeError, "bool"),
        ({"max_length": 20.5}, TypeError, "float"),
        ({"max_length": "20"}, TypeError, "str"),
        ({"max_length": 10**12}, ValueError, "context of 8192"),
        ({"max_new_tokens": 0}, ValueError, "at least 1"),
        ({"max_new_tokens": 9000}, ValueError, "context"),
        ({"max_length": 30, "max_new_tokens": 5}, ValueError, "not both"),
    ],
)
def test_bad_lengths_raise_and_the_object_keeps_working(llm, baseline, lengths, error, words):
    with pytest.raises(error, match=words):
        llm.generate(PROMPTS[0], **lengths)
    assert llm.generate(PROMPTS[0], max_new_tokens=8) == baseline


def test_a_prompt_longer_than_the_context_is_refused(tiny_llm):
    long_prompt = "word " * (tiny_llm.context_length + 10)
    with pytest.raises(ValueError, match="context"):
        tiny_llm.generate(long_prompt, max_new_tokens=1)


def test_concurrent_calls_from_threads_each_get_their_own_greedy_text(llm):
    # That the calls never overlap in the model is counted in test_core.py; this checks the results.
    expected = {p: llm.generate(p, max_new_tokens=10) for p in PROMPTS}
    results: dict[str, str] = {}
    errors: list[BaseException] = []

    def worker(prompt: str) -> None:
        try:
            results[prompt] = llm.generate(prompt, max_new_tokens=10)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(p,)) for p in PROMPTS]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors
    assert results == expected


def test_out_of_memory_becomes_a_friendly_error(tiny_llm, monkeypatch):
    def out_of_memory(**kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    expected = tiny_llm.generate("Hello", max_new_tokens=3)
    with monkeypatch.context() as patch:
        patch.setattr(tiny_llm.model, "generate", out_of_memory)
        with pytest.raises(GenerationError, match="Out of memory.*max_length.*load_in_4bit"):
            tiny_llm.generate("Hello", max_new_tokens=3)
    assert tiny_llm.generate("Hello", max_new_tokens=3) == expected


def test_stats_describe_the_last_generation(llm):
    llm.generate(PROMPTS[1], max_new_tokens=5, min_new_tokens=5)
    stats = llm.last_stats
    assert stats.prompt_tokens == llm.count_tokens(PROMPTS[1])
    assert stats.new_tokens == 5
    assert stats.seconds > 0 and stats.tokens_per_second == pytest.approx(5 / stats.seconds)
    assert 0 < stats.time_to_first_token <= stats.seconds
    assert stats.stopped is False and stats.finish_reasons == ("length",)
    assert stats.budget == "max_new_tokens=5"
    # torch's exact peak where there is one (CUDA), None elsewhere: whatever device runs this.
    if llm.device.type == "cuda":
        assert stats.peak_gpu_memory >= torch.cuda.memory_allocated(llm.device) > 0
    else:
        assert stats.peak_gpu_memory is None


def test_repr_names_the_model_device_dtype_and_length(llm):
    dtype = str(llm.dtype).removeprefix("torch.")
    assert "SmolLM2-135M-Instruct" in llm.model_id
    assert repr(llm) == f"HuggingFaceLLM(model_id={llm.model_id!r}, {llm.device} · {dtype}, max_length=20)"
