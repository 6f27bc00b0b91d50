"""LLMPanel: same text as the core, one run at a time, Stop, errors, escaping, no leaked threads."""

from __future__ import annotations

import threading
import time

import pytest
from _waits import wait_until

from hfllm_nb import GenerationError, LLMPanel
from hfllm_nb.widgets.panel import render_output


@pytest.fixture
def make_panel():
    """Build panels that are always closed afterwards, so no test leaks a thread."""
    panels = []

    def make(llm, **settings):
        panels.append(LLMPanel(llm, **settings))
        return panels[-1]

    yield make
    for panel in panels:
        panel.close()


def run(panel, timeout=60):
    """Click Generate and wait for the run to end, as a notebook user would."""
    panel.generate_button.click()
    assert panel.wait(timeout), "the run did not finish"
    return panel.result_text


def fake_stream(*pieces, delay=0.0, fail=None):
    """A stand-in for llm.stream/llm.chat(stream=True) that yields ``pieces``."""

    def stream(prompt, **kwargs):
        def chunks():
            for piece in pieces:
                time.sleep(delay)
                yield piece
            if fail is not None:
                raise fail

        return chunks()

    return stream




# ---------------------------------------------------------------- layout and settings


def test_panel_widgets_take_their_defaults_from_the_model(tiny_llm, make_panel):
    panel = make_panel(tiny_llm)
    assert (panel.generate_button.description, panel.generate_button.button_style) == (
        "Generate",
        "primary",
    )
    assert panel.stop_button.description == "Stop" and panel.stop_button.disabled
    assert panel.max_length.description == "max_length"
    assert (panel.max_length.min, panel.max_length.max) == (1, min(tiny_llm.context_length, 2048))
    assert panel.max_length.value == tiny_llm.max_length
    assert panel.prompt.placeholder
    assert panel.do_sample.description == "sample" and not panel.do_sample.value
    assert panel.settings() == {"max_length": tiny_llm.max_length, "do_sample": False}
    assert not panel.chat_mode.disabled  # the tiny model has SmolLM2's chat template
    assert panel.memory.running


def test_llm_panel_method_builds_a_panel_with_overrides(tiny_llm, make_panel):
    panel = tiny_llm.panel(prompt="Hi", max_length=50, do_sample=True, temperature=0.7, seed=3)
    try:
        assert isinstance(panel, LLMPanel)
        assert (panel.prompt.value, panel.max_length.value, panel.seed.value) == ("Hi", 50, 3)
        assert panel.settings() == {
            "max_length": 50,
            "do_sample": True,
            "temperature": 0.7,
            "top_p": 1.0,
            "top_k": 50,
            "seed": 3,
        }
    finally:
        panel.close()


@pytest.mark.parametrize(
    ("settings", "error", "match"),
    [
        ({"max_len": 10}, TypeError, "unknown setting"),
        ({"max_length": 0}, ValueError, "at least 1"),
        ({"max_length": 10**6}, ValueError, "context"),
        ({"max_length": 12.5}, TypeError, "max_length"),
        ({"do_sample": "yes"}, TypeError, "do_sample"),
        ({"temperature": -1.0}, ValueError, "temperature"),
        ({"top_p": 1.5}, ValueError, "top_p"),
        ({"prompt": 42}, TypeError, "prompt"),
        ({"memory_interval": 0}, ValueError, "memory_interval"),
    ],
)
def test_bad_initial_settings_are_rejected_with_the_setting_named(tiny_llm, settings, error, match):
    before = threading.active_count()
    with pytest.raises(error, match=match):
        LLMPanel(tiny_llm, **settings)
    assert threading.active_count() == before


def test_sampling_sliders_are_disabled_unless_sampling(tiny_llm, make_panel):
    model = tiny_llm.model
    panel = make_panel(tiny_llm)
    sliders = [panel.temperature, panel.top_p, panel.top_k, panel.seed]
    assert all(w.disabled for w in sliders)
    panel.do_sample.value = True
    assert not any(w.disabled for w in sliders)
    panel.temperature.value, panel.max_length.value = 0.5, 40
    assert tiny_llm.model is model  # changing a slider never reloads the model


def test_prompt_token_count_follows_the_prompt(tiny_llm, make_panel):
    panel = make_panel(tiny_llm, max_length=30)
    prompt = "The quick brown fox jumps over the lazy dog"
    panel.prompt.value = prompt
    count = tiny_llm.count_tokens(prompt)
    assert f"prompt: {count} tokens" in panel.prompt_tokens.value
    assert f"up to {30 - count} new" in panel.prompt_tokens.value
    panel.max_length.value = count
    assert f"raise max_length above {count}" in panel.prompt_tokens.value
    panel.chat_mode.value = True
    # In chat, max_length bounds the reply alone: the template's tokens are shown but not subtracted.
    chat_count = tiny_llm.count_tokens(tiny_llm.format_chat(prompt), add_special_tokens=False)
    assert chat_count > count
    assert panel.prompt_tokens.value == f"prompt: {chat_count} tokens (chat template, not counted) · up to {count} new"


# ---------------------------------------------------------------- generation


def test_panel_greedy_output_equals_llm_generate(llm, make_panel):
    prompt = "The capital of France is"
    max_length = llm.count_tokens(prompt) + 6
    panel = make_panel(llm, prompt=prompt, max_length=max_length)
    text = run(panel, timeout=120)
    stats = panel.last_stats
    assert stats is llm.last_stats and not stats.stopped
    assert text == llm.generate(prompt, max_length=max_length, return_full_text=False)
    assert text.strip()
    assert panel.output.value == render_output(prompt, text)
    assert panel.status.value.startswith(f"{stats.new_tokens} tokens · {stats.tokens_per_second:.1f} tokens/s")
    assert "first token after" in panel.status.value
    assert panel.status.value.endswith(f"ended: <b>max_length={max_length} reached</b>")
    assert not panel.is_busy and not panel.generate_button.disabled and panel.stop_button.disabled
    assert panel.error.value == ""


def test_sampled_run_with_a_seed_matches_llm_generate(tiny_llm, make_panel):
    panel = make_panel(tiny_llm, prompt="Once upon a time", max_length=24, do_sample=True, seed=7)
    panel.temperature.value = 0.8
    text = run(panel)
    assert text == tiny_llm.generate("Once upon a time", return_full_text=False, **panel.settings())
    assert panel.settings()["seed"] == 7


def test_chat_mode_streams_the_chat_reply(tiny_llm, make_panel):
    prompt = "What is 2 + 2?"
    panel = make_panel(tiny_llm, prompt=prompt, max_length=12, chat_mode=True)
    text = run(panel)
    assert text == tiny_llm.chat(prompt, max_length=12)  # max_length bounds the reply, as in chat()
    assert panel.last_stats.new_tokens <= 12 < panel.last_stats.prompt_tokens
    assert "hfllm-prompt" in panel.output.value and "What is 2 + 2?" in panel.output.value


def test_chat_mode_works_with_the_panel_defaults(llm, make_panel):
    # Once, the template alone (37 tokens) "filled max_length=20" and chat mode failed at once.
    prompt = "What is the capital of France?"
    panel = make_panel(llm, prompt=prompt, chat_mode=True)
    assert llm.count_tokens(llm.format_chat(prompt), add_special_tokens=False) > panel.max_length.value
    text = run(panel, timeout=120)
    assert panel.error.value == ""
    assert text == llm.chat(prompt)
    assert "Paris" in text


def test_status_says_end_of_text_when_the_model_ends_at_once(llm, make_panel):
    # The default model answers this prompt with its end token straight away: "0 tokens" alone looked broken.
    prompt = "Write a very long story about a dragon who learns to fly."
    panel = make_panel(llm, prompt=prompt, max_length=60)
    assert run(panel, timeout=120) == ""
    assert panel.last_stats.finish_reasons == ("end of text",)
    assert panel.last_stats.new_tokens == 1  # the end token itself, which shows as no text
    assert panel.status.value.startswith("1 token · ")  # the end token itself
    assert panel.status.value.endswith("ended: <b>end of text</b>")


def test_chat_mode_is_off_without_a_chat_template(tiny_llm, make_panel, monkeypatch):
    monkeypatch.setattr(tiny_llm.tokenizer, "chat_template", None)
    panel = make_panel(tiny_llm)
    assert panel.chat_mode.disabled and not panel.chat_mode.value
    with pytest.raises(ValueError, match="chat template"):
        LLMPanel(tiny_llm, chat_mode=True)


def test_double_click_starts_one_run(tiny_llm, make_panel, monkeypatch):
    calls = []
    stream = fake_stream("a", "b", "c", delay=0.2)
    monkeypatch.setattr(tiny_llm, "stream", lambda *a, **k: calls.append(a) or stream(*a, **k))
    panel = make_panel(tiny_llm, prompt="Hello")
    panel.generate_button.click()
    panel.generate_button.click()
    assert panel.generate_button.disabled and panel.is_busy
    assert panel.generate() is False
    assert panel.wait(10)
    assert len(calls) == 1 and panel.result_text == "abc"
    assert not panel.generate_button.disabled


def test_stop_ends_a_long_run_within_steps(llm, make_panel):
    prompt = "1, 2, 3, 4, 5,"
    panel = make_panel(llm, prompt=prompt, max_length=2048)
    panel.generate_button.click()
    wait_until(lambda: panel.result_text, timeout=120)
    assert panel.is_busy and not panel.stop_button.disabled
    panel.stop_button.click()
    assert panel.wait(30)
    stats = panel.last_stats
    assert stats is not None and stats.stopped
    assert 0 < stats.new_tokens < 2048 - llm.count_tokens(prompt)
    assert panel.status.value.endswith("ended: <b>stopped</b>")
    assert not llm.is_busy and not panel.generate_button.disabled
    # the panel and the model both work normally after a stop
    panel.max_length.value = llm.count_tokens(prompt) + 3
    assert run(panel, timeout=120) == llm.generate(prompt, max_length=panel.max_length.value, return_full_text=False)
    assert not panel.last_stats.stopped


def test_close_during_a_run_stops_it_and_leaks_no_thread(tiny_llm, monkeypatch):
    before = threading.active_count()
    monkeypatch.setattr(tiny_llm, "stream", fake_stream(*["x"] * 10_000, delay=0.01))
    panel = LLMPanel(tiny_llm, prompt="Hello")
    panel.generate()
    wait_until(lambda: panel.result_text)
    started = time.monotonic()
    panel.close()
    assert time.monotonic() - started < 5
    assert not panel.is_busy and not panel.memory.running
    assert len(panel.result_text) < 10_000
    assert threading.active_count() == before


def test_threads_return_to_baseline_after_a_real_run_and_close(tiny_llm):
    before = threading.active_count()
    panel = LLMPanel(tiny_llm, prompt="Hello there", max_length=16)
    run(panel)
    panel.close()
    assert threading.active_count() == before


# ---------------------------------------------------------------- errors


def test_empty_prompt_shows_an_error_and_the_panel_stays_usable(tiny_llm, make_panel):
    panel = make_panel(tiny_llm, prompt="   ", max_length=12)
    assert panel.generate() is False
    assert "empty" in panel.error.value and "color:" in panel.error.value
    assert "Traceback" not in panel.error.value
    assert not panel.is_busy and not panel.generate_button.disabled
    panel.prompt.value = "Hello"
    assert run(panel) == tiny_llm.generate("Hello", max_length=12, return_full_text=False)
    assert panel.error.value == ""


def test_too_long_prompt_shows_an_error_naming_max_length(tiny_llm, make_panel):
    panel = make_panel(tiny_llm, prompt="one two three four five six seven eight", max_length=4)
    panel.generate_button.click()
    assert "ValueError" in panel.error.value and "max_length=4" in panel.error.value
    assert isinstance(panel.last_error, ValueError) and not panel.is_busy
    panel.max_length.value = 16
    assert run(panel)
    assert panel.error.value == "" and panel.last_error is None


def test_core_error_during_generation_shows_a_short_red_message(tiny_llm, make_panel, monkeypatch):
    oom = GenerationError("Out of memory while generating. Lower max_length.")
    panel = make_panel(tiny_llm, prompt="Hello", max_length=12)
    with monkeypatch.context() as patch:
        patch.setattr(tiny_llm, "stream", fake_stream("partial ", fail=oom))
        run(panel)
    assert panel.last_error is oom
    assert "GenerationError: Out of memory while generating" in panel.error.value
    assert "color:#c62828" in panel.error.value and "Traceback" not in panel.error.value
    assert panel.result_text == "partial " and not panel.is_busy
    assert run(panel) == tiny_llm.generate("Hello", max_length=12, return_full_text=False)
    assert panel.error.value == ""


def test_core_error_when_starting_shows_in_the_panel(tiny_llm, make_panel, monkeypatch):
    def broken_stream(prompt, **kwargs):
        raise RuntimeError("CUDA error: device-side assert triggered")

    panel = make_panel(tiny_llm, prompt="Hello", max_length=12)
    with monkeypatch.context() as patch:
        patch.setattr(tiny_llm, "stream", broken_stream)
        assert panel.generate() is False
    assert "RuntimeError: CUDA error" in panel.error.value
    assert run(panel)


def test_busy_model_is_reported_instead_of_queued(tiny_llm, make_panel):
    panel = make_panel(tiny_llm, prompt="Hello", max_length=12)
    with tiny_llm._turns.turn():  # as if another cell were generating with this model
        assert panel.generate() is False
    assert "busy" in panel.error.value
    assert run(panel)


# ---------------------------------------------------------------- output


def test_output_is_html_escaped(tiny_llm, make_panel, monkeypatch):
    monkeypatch.setattr(tiny_llm, "stream", fake_stream("<script>alert(1)</script>", " & more"))
    panel = make_panel(tiny_llm, prompt="<b>bold?</b>")
    run(panel)
    assert panel.result_text == "<script>alert(1)</script> & more"
    assert "<script>" not in panel.output.value and "<b>" not in panel.output.value
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; more" in panel.output.value
    assert '<span class="hfllm-prompt" style="color:#6a737d">&lt;b&gt;bold?&lt;/b&gt;</span>' in panel.output.value


def test_output_updates_are_throttled(tiny_llm, make_panel, monkeypatch):
    monkeypatch.setattr(tiny_llm, "stream", fake_stream(*[f"{i} " for i in range(3000)], delay=0.0001))
    panel = make_panel(tiny_llm, prompt="Count:")
    redraws = []
    panel.output.observe(lambda change: redraws.append(time.perf_counter()), "value")
    started = time.perf_counter()
    run(panel)
    seconds = time.perf_counter() - started
    assert "2999 " in panel.output.value
    # at most one redraw per render_interval, plus the first (empty) and the final one
    assert len(redraws) <= seconds / panel.render_interval + 3
    assert len(redraws) < 3000 / 10


def test_memory_readout_reports_the_peak_of_the_last_run(tiny_llm, make_panel):
    panel = make_panel(tiny_llm, prompt="Hello", max_length=12)
    assert "MiB" in panel.memory.text or "GiB" in panel.memory.text
    assert f"Model: {tiny_llm.engine_description}" in panel.memory.text.splitlines()
    run(panel)
    assert panel.memory.last_peak is not None
    assert "Peak during last generation: " in panel.memory.text
