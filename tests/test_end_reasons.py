"""Why a run ended and what it counts, on the real default model: Stop, close, seeds, beams, batches, criteria."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time

import pytest
from _waits import run_with_deadline

from hfllm_nb import GenerationError, HuggingFaceLLM, LLMPanel
from hfllm_nb.core.requests import CRITERION, END_OF_TEXT, LENGTH, STOP_STRING, STOPPED

PROMPT = "Once upon a time,"


def stop_after(llm, seconds: float) -> threading.Timer:
    timer = threading.Timer(seconds, llm.stop)
    timer.start()
    return timer


def test_stop_ends_explain_within_a_few_steps(llm):
    timer = stop_after(llm, 0.3)
    explanation = run_with_deadline(lambda: llm.explain(PROMPT, max_new_tokens=200, min_new_tokens=200))
    timer.join()
    new = [token for token in explanation.tokens if not token.is_prompt]
    assert 0 < len(new) < 200
    assert llm.generate(PROMPT, max_new_tokens=5, min_new_tokens=5, return_full_text=False)


def test_stop_ends_the_panels_probabilities_run(llm):
    panel = llm.panel(prompt=PROMPT, max_length=200, probabilities=True)
    try:
        assert panel.generate()
        time.sleep(0.3)
        llm.stop()
        assert panel.wait(30)
        assert panel.last_stats.finish_reasons == ("stopped",)
        assert panel.last_stats.new_tokens < 200 - llm.count_tokens(PROMPT)
    finally:
        panel.close()


def test_close_stops_and_closes_a_directly_built_panel(default_model_dir):
    llm = HuggingFaceLLM()
    panel = LLMPanel(llm, prompt=PROMPT, max_length=400)
    assert panel.generate()
    time.sleep(0.3)
    started = time.perf_counter()
    llm.close()
    assert time.perf_counter() - started < 5
    assert not panel.is_busy
    assert not [t for t in threading.enumerate() if t.name == "hfllm_nb-memory" and t.is_alive()]


def test_a_stream_made_before_close_and_read_after_says_closed(default_model_dir):
    llm = HuggingFaceLLM()
    stream = llm.stream(PROMPT, max_new_tokens=5)
    llm.close()
    with pytest.raises(GenerationError, match="was closed"):
        next(stream)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_explain_samples_what_generate_samples_with_the_same_seed(llm, seed):
    # transformers applies top-k 50 when the config leaves it unset; explain must sample alike.
    options = {"do_sample": True, "seed": seed}
    expected = llm.generate(PROMPT, max_new_tokens=12, **options)
    assert llm.explain(PROMPT, max_new_tokens=12, **options).text == expected


def test_explain_takes_samplings_top_k_by_its_own_name(llm):
    options = {"do_sample": True, "seed": 5, "temperature": 1.5}
    expected = llm.generate(PROMPT, max_new_tokens=12, top_k=3, **options)
    explanation = llm.explain(PROMPT, max_new_tokens=12, top_k=2, sampling_top_k=3, **options)
    assert explanation.text == expected
    new = [token for token in explanation.tokens if not token.is_prompt]
    assert all(len(token.alternatives) == 2 for token in new)
    assert all(token.sampled_probability > 0 for token in new)  # drawn from the 3 kept


def test_explain_refuses_beam_search_in_its_own_words(llm):
    with pytest.raises(ValueError, match="cannot be explained token by token") as error:
        llm.explain(PROMPT, num_beams=2)
    assert "stream" not in str(error.value)


def test_the_logit_lens_of_200_tokens_grows_memory_by_less_than_300_mb(default_model_dir):
    # Full-vocabulary logits of every layer at once took ~6 MB per prompt token (1.7 GB here).
    code = """
        import resource
        from hfllm_nb import HuggingFaceLLM
        llm = HuggingFaceLLM(dtype="float32")
        llm.logit_lens("Hello there")  # warm: first-call allocations are not the lens's growth
        prompt = " ".join(["token"] * 400)
        ids = llm.tokenizer(prompt)["input_ids"][:200]
        prompt = llm.tokenizer.decode(ids)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        lens = llm.logit_lens(prompt)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        assert lens.probabilities.shape == (31, len(lens.prompt_tokens)), lens.probabilities.shape
        assert len(lens.prompt_tokens) >= 190, len(lens.prompt_tokens)
        print((after - before) / 1024)
    """
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    growth_mib = float(result.stdout.strip().splitlines()[-1])
    assert growth_mib < 300, growth_mib


def test_each_batch_item_ends_and_counts_as_it_does_alone(llm):
    prompts = ["The capital of France is", "Once upon a time, in a land far, far away, there lived"]
    options = {"max_new_tokens": 25, "stop_strings": ["."], "return_full_text": False}
    texts = llm.generate(prompts, **options)
    batch = llm.last_stats
    singles = []
    for prompt in prompts:
        singles.append((llm.generate(prompt, **options), llm.last_stats))
    assert batch.finish_reasons == tuple(stats.finish_reasons[0] for _, stats in singles)
    assert batch.finish_reasons == (STOP_STRING, STOP_STRING)
    assert batch.new_tokens == sum(stats.new_tokens for _, stats in singles)
    assert texts == [text for text, _ in singles]


def test_a_stop_string_across_the_prompt_edge_is_a_stop_string_not_a_stop(llm):
    text = llm.generate("List:\n", max_new_tokens=10, stop_strings=["\n\n"], return_full_text=False)
    stats = llm.last_stats
    assert text.startswith("\n"), repr(text)  # the model's first token completes the "\n\n"
    assert stats.finish_reasons == (STOP_STRING,)
    assert not stats.stopped
    assert stats.new_tokens == 1


def test_a_batch_item_that_ends_its_text_early_keeps_its_own_count(llm):
    # The first item's reply ends (end token) long before the second's budget: padding follows it.
    question = llm.format_chat("What is the capital of France?")
    alone = llm.generate(question, max_new_tokens=60, return_full_text=False)
    alone_stats = llm.last_stats
    texts = llm.generate([question, PROMPT], max_new_tokens=60, min_new_tokens=0, return_full_text=False)
    assert alone_stats.finish_reasons == (END_OF_TEXT,)
    assert llm.last_stats.finish_reasons == (END_OF_TEXT, LENGTH)
    assert texts[0] == alone
    assert llm.last_stats.new_tokens == alone_stats.new_tokens + 60


ANSWER = [{"role": "user", "content": "What is the capital of France? One word."}]


def test_beam_search_that_ends_its_text_reports_end_of_text(llm):
    # Break caught: beams fell back to length-or-stopped and an ended beam search read "stopped".
    llm.chat(ANSWER, max_new_tokens=60, num_beams=2)
    assert llm.last_stats.finish_reasons == (END_OF_TEXT,)
    assert llm.last_stats.new_tokens < 60


def test_a_beam_batch_item_that_ended_counts_its_own_tokens(llm):
    # Break caught: the item that ended was reported "length" with its padding counted.
    prompt = llm.format_chat(ANSWER)
    alone = llm.generate(prompt, max_new_tokens=50, num_beams=2, return_full_text=False)
    alone_tokens = llm.last_stats.new_tokens
    batch = llm.generate([prompt, "Once upon a time,"], max_new_tokens=50, num_beams=2, return_full_text=False)
    assert batch[0] == alone
    assert llm.last_stats.finish_reasons[0] == END_OF_TEXT
    assert llm.last_stats.new_tokens == alone_tokens + 50


def test_a_run_ended_by_its_own_criterion_says_so_and_compare_runs_every_lane(llm):
    # Break caught: a lane ended by its own stopping_criteria read as the user's Stop ("stopped"), and
    # compare skipped the lanes after it.
    import torch

    def after_three(input_ids, scores, **kwargs):
        return torch.full((input_ids.shape[0],), input_ids.shape[1] >= 3 + after_three.width, dtype=torch.bool)

    after_three.width = llm.count_tokens(PROMPT)
    llm.generate(PROMPT, max_new_tokens=30, stopping_criteria=[after_three])
    assert llm.last_stats.finish_reasons == (CRITERION,) and not llm.last_stats.stopped
    lanes = {"cut": {"stopping_criteria": [after_three]}, "beam 2": {"num_beams": 2}, "greedy": {}}
    comparison = llm.compare(PROMPT, lanes, max_new_tokens=8)
    assert list(comparison.lanes) == ["cut", "beam 2", "greedy"]
    assert not any("not run" in note for note in comparison.notes)
    assert STOPPED not in llm.last_stats.finish_reasons
