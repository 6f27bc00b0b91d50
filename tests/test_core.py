"""The facade's contracts: turns and Stop, one options path, why a run ended, lifecycle."""

from __future__ import annotations

import gc
import importlib.resources
import threading
import time
import weakref

import pytest
from _waits import run_with_deadline
from transformers import StoppingCriteria

from hfllm_nb import GenerationError, HuggingFaceLLM

PROMPT = "Once upon a time,"


# ---------------------------------------------------------------- turns and Stop


def test_a_half_read_stream_does_not_block_the_next_call_on_the_same_thread(llm):
    expected = llm.generate(PROMPT, max_new_tokens=6)

    def scenario():
        stream = llm.stream(PROMPT, max_new_tokens=50)
        for _ in stream:
            break  # a notebook keeps `stream` alive
        assert llm.is_busy
        with pytest.warns(RuntimeWarning, match="still open"):
            text = llm.generate(PROMPT, max_new_tokens=6)
        return stream, text

    stream, text = run_with_deadline(scenario)
    assert text == expected
    assert not llm.is_busy
    assert list(stream) == []  # the abandoned stream was ended, not resumed


def test_breaking_out_of_a_stream_loop_frees_the_model_at_once(llm):
    for _ in llm.stream(PROMPT, max_new_tokens=200):
        break  # the iterator is dropped here: no reference cycle may keep it generating
    assert not llm.is_busy
    assert llm.last_stats.stopped and llm.last_stats.new_tokens < 10


def test_generate_inside_a_stream_loop_runs_and_ends_that_stream(llm):
    expected = llm.generate(PROMPT, max_new_tokens=4)

    def scenario():
        inner, pieces = [], 0
        with pytest.warns(RuntimeWarning, match="still open"):
            for _ in llm.stream(PROMPT, max_new_tokens=40):
                pieces += 1
                inner.append(llm.generate(PROMPT, max_new_tokens=4))
        return inner, pieces

    inner, pieces = run_with_deadline(scenario)
    assert inner == [expected] and pieces == 1


def test_a_call_from_inside_a_running_generation_raises_at_once(tiny_llm):
    class CallsBack(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            tiny_llm.generate("Hello", max_new_tokens=1)
            return False

    with pytest.raises(GenerationError, match="inside a running generation"):
        run_with_deadline(lambda: tiny_llm.generate("Hello", max_new_tokens=3, stopping_criteria=[CallsBack()]))
    assert tiny_llm.generate("Hello", max_new_tokens=2)


def test_a_stop_sent_before_the_stream_starts_is_not_lost(llm):
    stream = llm.stream(PROMPT, max_new_tokens=60)
    llm.stop()  # between the call and the start of generation
    "".join(stream)
    assert llm.last_stats.stopped
    assert llm.last_stats.new_tokens <= 2


def test_a_stop_meant_for_one_request_does_not_leak_into_the_next(llm):
    stream = llm.stream(PROMPT, max_new_tokens=5)
    "".join(stream)
    llm.stop()  # nothing runs now: must not stop the next call
    llm.generate(PROMPT, max_new_tokens=5, min_new_tokens=5)
    assert not llm.last_stats.stopped and llm.last_stats.new_tokens == 5


def test_calls_from_several_threads_never_overlap_in_the_model(tiny_llm, monkeypatch):
    model = tiny_llm.model
    original = model.generate
    active, most = [0], [0]
    guard = threading.Lock()

    def counting_generate(**kwargs):
        with guard:
            active[0] += 1
            most[0] = max(most[0], active[0])
        try:
            time.sleep(0.05)  # widen the window in which an overlap would show
            return original(**kwargs)
        finally:
            with guard:
                active[0] -= 1

    monkeypatch.setattr(model, "generate", counting_generate)
    call = {"target": tiny_llm.generate, "args": ("Hello",), "kwargs": {"max_new_tokens": 3}}
    threads = [threading.Thread(**call) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert most[0] == 1


# ---------------------------------------------------------------- one options path


def test_stop_strings_end_generation_and_say_so(llm):
    text = llm.generate("Hello. My name is", max_new_tokens=40, stop_strings=["."], return_full_text=False)
    assert text.endswith(".") and text.count(".") == 1
    assert llm.last_stats.finish_reasons == ("stop string",)


@pytest.mark.parametrize(
    "options, error, words",
    [
        ({"return_dict_in_generate": True}, ValueError, "llm.explain"),
        ({"output_scores": True}, ValueError, "llm.explain"),
        ({"stopping_criteria": 5}, TypeError, "stopping_criteria"),
        ({"logits_processor": ["x"]}, TypeError, "logits_processor"),
        ({"stop_strings": [""]}, TypeError, "stop string"),
        ({"num_beams": 0}, ValueError, "num_beams"),
        ({"bad_words_ids": [[-1]]}, TypeError, "bad_words_ids"),
        ({"use_cache": False}, TypeError, "Supported"),
    ],
)
def test_bad_options_fail_before_the_model_runs(tiny_llm, monkeypatch, options, error, words):
    calls = []
    original = tiny_llm.model.generate
    monkeypatch.setattr(tiny_llm.model, "generate", lambda **kw: calls.append(kw) or original(**kw))
    with pytest.raises(error, match=words):
        tiny_llm.generate("Hello", max_new_tokens=3, **options)
    assert calls == []


def test_beam_search_works_in_generate_and_is_refused_in_stream(tiny_llm):
    assert tiny_llm.generate("Hello", max_new_tokens=3, num_beams=2)
    with pytest.raises(ValueError, match="cannot stream"):
        tiny_llm.stream("Hello", max_new_tokens=3, num_beams=2)
    with pytest.raises(ValueError, match="cannot stream"):
        tiny_llm.chat("Hello", max_new_tokens=3, num_beams=2, stream=True)


def test_count_tokens_gives_one_count_per_prompt(llm):
    assert llm.count_tokens(["a b c d e f", "g"]) == [llm.count_tokens("a b c d e f"), llm.count_tokens("g")]
    assert llm.count_tokens("a b c d e f") == 6


def test_chat_and_streamed_chat_give_the_same_text_unstripped(llm):
    reply = llm.chat("What is the capital of France?", max_new_tokens=12)
    assert "".join(llm.chat("What is the capital of France?", max_new_tokens=12, stream=True)) == reply


def test_chat_max_length_bounds_the_reply_alone(llm):
    llm.chat("What is the capital of France? Answer in a long essay.", max_length=12)
    assert llm.last_stats.new_tokens <= 12
    assert llm.last_stats.prompt_tokens > 12  # the template alone is longer than max_length


# ---------------------------------------------------------------- why a run ended


def test_stats_say_the_budget_ran_out_and_name_it(llm):
    llm.generate(PROMPT, max_new_tokens=5, min_new_tokens=5)
    assert llm.last_stats.finish_reasons == ("length",)
    assert llm.last_stats.ended_because == "max_new_tokens=5 reached"
    llm.generate(PROMPT, max_length=9)
    assert llm.last_stats.ended_because == "max_length=9 reached"


def test_stats_say_end_of_text_when_the_model_ends_its_reply(llm):
    llm.chat("What is the capital of France?", max_new_tokens=60)
    assert llm.last_stats.finish_reasons == ("end of text",)
    assert llm.last_stats.new_tokens < 60


def test_stats_say_stopped_after_stop(llm):
    stream = llm.stream(PROMPT, max_new_tokens=100)
    next(stream)
    stream.close()
    assert llm.last_stats.ended_because == "stopped"


def test_a_batch_has_one_reason_per_prompt(llm):
    llm.generate(["What is 2+2?", PROMPT], max_new_tokens=4, min_new_tokens=4)
    assert llm.last_stats.finish_reasons == ("length", "length")


# ---------------------------------------------------------------- lifecycle and packaging


def test_close_frees_the_model_panels_and_monitor_threads(tiny_model_dir):
    before = set(threading.enumerate())
    with HuggingFaceLLM(str(tiny_model_dir), dtype="float32") as llm:
        model_ref = weakref.ref(llm.model)
        panels = [llm.panel(), llm.panel()]
        panel_refs = [weakref.ref(p) for p in panels]
        assert llm.generate("Hello", max_new_tokens=2)
    with pytest.raises(GenerationError, match="closed"):
        llm.generate("Hello", max_new_tokens=2)
    del llm, panels
    gc.collect()
    assert model_ref() is None
    assert all(ref() is None for ref in panel_refs)
    deadline = time.monotonic() + 5
    while set(threading.enumerate()) - before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not {t.name for t in set(threading.enumerate()) - before}


def test_the_package_ships_type_information():
    assert importlib.resources.files("hfllm_nb").joinpath("py.typed").is_file()


# ---------------------------------------------------------------- the panel says why a run ended


def _panel_run(llm, **settings):
    panel = llm.panel(memory_interval=60.0, **settings)
    try:
        assert panel.generate()
        assert panel.wait(timeout=120)
        return panel.status.value, panel.last_stats
    finally:
        panel.close()


def test_panel_says_end_of_text_when_the_model_ends_at_once(llm):
    # SmolLM2 answers this raw prompt with its end-of-text token straight away.
    status, stats = _panel_run(llm, prompt="Write a very long story about a dragon who learns to fly.", max_length=60)
    assert stats.finish_reasons == ("end of text",)
    assert "ended: <b>end of text</b>" in status


def test_panel_chat_mode_works_with_the_default_settings_and_names_the_limit(llm):
    status, stats = _panel_run(llm, prompt="Tell me a long story about the sea.", chat_mode=True)
    assert stats.new_tokens == llm.max_length
    assert f"ended: <b>max_length={llm.max_length} (reply) reached</b>" in status


def test_panel_probabilities_colour_the_same_greedy_text_and_say_why_it_ended(llm):
    panel = llm.panel(prompt=PROMPT, max_length=16, probabilities=True, memory_interval=60.0)
    try:
        assert panel.generate() and panel.wait(timeout=120)
        assert panel.last_error is None
        assert len(panel.tokens) == panel.last_stats.new_tokens
        assert panel.result_text == llm.generate(PROMPT, max_length=16, return_full_text=False)
        assert all(0 < token.probability <= 1 for token in panel.tokens)
        assert 'title="' in panel.output.value  # hovering a token shows its alternatives
        assert "ended: <b>max_length=16 reached</b>" in panel.status.value
    finally:
        panel.close()
