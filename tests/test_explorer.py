"""NextTokenExplorer: choosing by hand equals generate, undo is exact, sliders never run the model."""

from __future__ import annotations

import html
import time

import pytest
import torch

from hfllm_nb.widgets.explorer import NextTokenExplorer

PROMPT = "The capital of France is"
STEPS = 4


@pytest.fixture(scope="module")
def greedy_one(llm32):
    """generate's text for one new token: what one greedy step must give."""
    return llm32.generate(PROMPT, max_new_tokens=1)


@pytest.fixture(scope="module")
def shared_explorer(llm32):
    widget = NextTokenExplorer(llm32, PROMPT)
    yield widget
    widget.close()


@pytest.fixture
def explorer(shared_explorer):
    """One widget for the module (building one reads the prompt), back at the prompt for each test."""
    shared_explorer.reset()
    shared_explorer.temperature, shared_explorer.top_p, shared_explorer.top_k = 1.0, 1.0, None
    shared_explorer.bar_count = 10
    shared_explorer.error.value = ""
    return shared_explorer


class ForwardCounter:
    """Records how many tokens each model forward reads."""

    def __init__(self, model):
        self.widths: list[int] = []
        self.handle = model.register_forward_pre_hook(self.record, with_kwargs=True)

    def record(self, _module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        self.widths.append(ids.shape[1])

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def model_logits(llm, text):
    """The next-token logits from a forward pass of its own, float32 on the CPU."""
    with torch.inference_mode():
        ids = torch.tensor([llm.tokenizer(text)["input_ids"]], device=llm.device)
        return llm.model(ids).logits[0, -1].float().cpu()


def test_default_bars_are_the_models_own_probabilities(llm32, explorer):
    probabilities = torch.softmax(model_logits(llm32, PROMPT), dim=-1)
    top = probabilities.topk(10)
    assert [i for i, _, _ in explorer.candidates] == top.indices.tolist()
    assert [p for _, _, p in explorer.candidates] == pytest.approx(top.values.tolist(), abs=1e-6)
    assert explorer.raw_candidates == explorer.candidates
    assert explorer.kept is None and "model's own probability" in html.unescape(explorer.status.value)
    paris = explorer.bars.children[0].number.value
    assert f"{100 * top.values[0]:.3g}%" in paris and "model:" not in paris  # one number: the model's


def test_a_top_k_filter_renormalises_says_so_and_keeps_the_raw_numbers(llm32, explorer):
    logits = model_logits(llm32, PROMPT)
    explorer.top_k = 5
    top = logits.topk(10)
    expected = torch.softmax(top.values[:5], dim=-1).tolist() + [0.0] * 5
    assert [p for _, _, p in explorer.candidates] == pytest.approx(expected, abs=1e-6)
    raw = torch.softmax(logits, dim=-1)[top.indices].tolist()
    assert [p for _, _, p in explorer.raw_candidates] == pytest.approx(raw, abs=1e-6)
    assert explorer.kept == 5
    assert "renormalised over 5 tokens (top_k=5)" in explorer.status.value
    assert "model:" in explorer.bars.children[0].number.value  # both numbers shown
    assert "cut by top-k" in explorer.bars.children[5].button.tooltip


def test_top_k_in_the_constructor_is_samplings_top_k_and_bars_sets_how_many_show(llm32):
    widget = NextTokenExplorer(llm32, PROMPT, top_k=3, bars=6)
    try:
        probabilities = [p for _, _, p in widget.candidates]
        assert len(probabilities) == 6 and widget.top_k == 3 and widget.kept == 3
        assert sum(probabilities[:3]) == pytest.approx(1.0, abs=1e-6) and probabilities[3:] == [0.0] * 3
        shown = [bar for bar in widget.bars.children if bar.layout.display != "none"]
        assert len(shown) == 6
    finally:
        widget.close()


def test_choosing_the_top_candidate_n_times_equals_generate(llm32, explorer):
    for _ in range(STEPS):
        explorer.choose(explorer.candidates[0][0])
    expected = llm32.generate(PROMPT, max_new_tokens=STEPS)
    assert explorer.text == expected
    assert explorer.continuation == expected[len(PROMPT) :]


def test_step_is_the_greedy_choice(llm32, explorer):
    with torch.inference_mode():
        logits = llm32.model(torch.tensor([llm32.tokenizer(PROMPT)["input_ids"]], device=llm32.device)).logits[0, -1]
    assert explorer.step() == int(logits.argmax())


def test_undo_restores_text_and_candidates_exactly_with_one_token_of_work(llm32, explorer):
    explorer.step()
    text, candidates = explorer.text, explorer.candidates
    explorer.choose(explorer.candidates[3][0])  # an unlikely branch
    assert explorer.text != text
    with ForwardCounter(llm32.model) as counter:
        explorer.undo()
    assert counter.widths == [1]  # the cache was cropped, not rebuilt from the whole text
    assert explorer.text == text
    assert explorer.candidates == candidates  # the very same floats


def test_reset_returns_to_the_prompt_without_running_the_model(llm32, explorer, greedy_one):
    start = explorer.candidates
    explorer.step()
    explorer.step()
    with ForwardCounter(llm32.model) as counter:
        explorer.reset()
    assert counter.widths == []
    assert explorer.text == PROMPT and explorer.candidates == start
    explorer.step()  # and it carries on from there
    assert explorer.text == greedy_one


def test_temperature_reshapes_the_cached_logits_without_running_the_model(llm32, explorer):
    with torch.inference_mode():
        ids = torch.tensor([llm32.tokenizer(PROMPT)["input_ids"]], device=llm32.device)
        logits = llm32.model(ids).logits[0, -1].float().cpu()
    seconds = []
    with ForwardCounter(llm32.model) as counter:
        for value in (0.5, 0.7, 0.5):
            started = time.perf_counter()
            explorer.temperature = value
            seconds.append(time.perf_counter() - started)
    assert counter.widths == []
    assert min(seconds) < 0.05, seconds  # the budget for a slider move, redraw included
    # Over the whole vocabulary: exactly softmax(logits / 0.5).
    full = explorer.stepper.distribution(0.5, 0, 1.0)
    assert torch.allclose(full, torch.softmax(logits / 0.5, dim=-1), atol=1e-5)
    # The bars: the ten likeliest of those, not renormalised (no sampling filter is on).
    top = logits.topk(10)
    expected = torch.softmax(logits / 0.5, dim=-1)[top.indices]
    assert [i for i, _, _ in explorer.candidates] == top.indices.tolist()
    assert [p for _, _, p in explorer.candidates] == pytest.approx(expected.tolist(), abs=1e-6)
    assert "softmax(logits / 0.5), over the whole vocabulary" in explorer.status.value


def test_top_p_keeps_the_smallest_likely_set_and_greys_the_rest(explorer):
    explorer.top_p = 0.5
    probabilities = [p for _, _, p in explorer.candidates]
    kept = [p for p in probabilities if p > 0]
    assert 0 < len(kept) < len(probabilities)
    assert sum(kept) == pytest.approx(1.0, abs=1e-5)
    assert probabilities == sorted(probabilities, reverse=True)
    cut = explorer.bars.children[len(kept)]
    assert cut.button.button_style == "" and "cut by top-k / top-p" in cut.button.tooltip
    assert f"renormalised over {len(kept)} tokens (top_p=0.5)" in explorer.status.value
    assert explorer.bars.children[0].button.button_style == "info"


def test_sample_with_a_seed_is_repeatable_and_stays_inside_top_k(explorer):
    explorer.top_k = 3
    explorer.temperature = 2.0
    allowed = {i for i, _, _ in explorer.candidates}
    first = explorer.sample(seed=5)
    explorer.undo()
    assert explorer.sample(seed=5) == first
    assert first in allowed
    assert explorer.stepper.chosen[-1].sampled_probability > 0


def test_clicking_a_bar_appends_its_token(explorer):
    token_id, text, _ = explorer.candidates[1]
    explorer.bars.children[1].button.click()
    assert explorer.stepper.ids[-1] == token_id
    assert explorer.text == PROMPT + text
    assert text in explorer.text_view.value


def test_moving_a_slider_redraws_the_bars(explorer):
    before = [bar.number.value for bar in explorer.bars.children]
    width = explorer.bars.children[0].button.layout.width
    explorer.temperature_slider.value = 2.5
    assert [bar.number.value for bar in explorer.bars.children] != before
    assert explorer.bars.children[0].button.layout.width != width
    explorer.bars_slider.value = 4
    shown = [bar for bar in explorer.bars.children if bar.layout.display != "none"]
    assert len(shown) == 4


@pytest.mark.parametrize(
    ("action", "error", "match"),
    [
        (lambda e: e.choose(-1), ValueError, "outside the vocabulary"),
        (lambda e: e.choose(49152), ValueError, "outside the vocabulary"),
        (lambda e: e.choose("Paris"), TypeError, "token_id must be an int"),
        (lambda e: e.undo(), ValueError, "Nothing to undo"),
        (lambda e: setattr(e, "top_k", -1), ValueError, "between 1 and the vocabulary"),
        (lambda e: setattr(e, "bar_count", 51), ValueError, "bars must be between 1 and"),
        (lambda e: setattr(e, "top_k", 10**6), ValueError, "vocabulary size"),
        (lambda e: setattr(e, "temperature", 0), ValueError, "temperature"),
        (lambda e: setattr(e, "top_p", 1.5), ValueError, "top_p"),
        (lambda e: e.sample(seed=-1), ValueError, "seed"),
    ],
)
def test_bad_input_raises_and_the_widget_still_works(explorer, greedy_one, action, error, match):
    candidates = explorer.candidates
    with pytest.raises(error, match=match):
        action(explorer)
    assert explorer.text == PROMPT and explorer.candidates == candidates  # nothing changed
    explorer.step()
    assert explorer.text == greedy_one


@pytest.mark.parametrize(
    ("prompt", "top_k", "error", "match"),
    [("", 10, ValueError, "empty"), (PROMPT, -1, ValueError, "between 1"), (PROMPT, "3", TypeError, "int")],
)
def test_bad_construction_arguments_raise_clear_errors(llm32, prompt, top_k, error, match):
    with pytest.raises(error, match=match):
        NextTokenExplorer(llm32, prompt, top_k=top_k)


def test_a_failed_click_shows_its_error_in_the_widget(explorer):
    explorer.undo_button.disabled = False  # as if clicked before the redraw disabled it
    explorer.undo_button.click()
    assert "Nothing to undo" in explorer.error.value
    explorer.step_button.click()
    assert explorer.error.value == ""
    assert len(explorer.stepper.chosen) == 1


def test_model_text_is_escaped_in_the_widget(llm32):
    widget = NextTokenExplorer(llm32, "<b>bold</b> &amp;", top_k=3)
    try:
        assert "&lt;b&gt;bold&lt;/b&gt; &amp;amp;" in widget.text_view.value
        assert "<b>" not in widget.text_view.value
    finally:
        widget.close()


def test_the_filters_count_after_a_failed_model_call(explorer):
    # Catches `kept` reading the logits inside its model-thread job: after a failed call they are
    # rebuilt by running the model, which a job may not do (GenerationError "from inside").
    explorer.top_k = 5
    expected = explorer.kept
    explorer.stepper._cache = None  # what a failed or interrupted model call leaves
    assert explorer.kept == expected
