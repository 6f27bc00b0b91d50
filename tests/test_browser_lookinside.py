"""The look-inside views in a real JupyterLab (headless Chromium): coloured tokens with hover text,
the explorer's bars (click one, move a slider), the logit-lens table, and the explain view as a
saved notebook shows it (stored, sanitized HTML; no code runs). Screenshots go to test-artifacts/.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import nbformat
import pytest
from _browser import (  # noqa: F401  (importing the fixtures makes them available here)
    ARTIFACTS,
    Lab,
    _run_code,
    _screenshot_on_failure,
    browser_fixture,
    lab_fixture,
    open_notebook,
    wait_until,
)

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]

PROMPT = "The capital of France is"
NEW_TOKENS = 8
RENDER_S = 150  # model load and the three views, on a busy 2-core runner
KERNEL_S = 30  # one click or slider move, answered by the kernel

CELLS = [
    "from hfllm_nb import HuggingFaceLLM, NextTokenExplorer\n\nllm = HuggingFaceLLM()",
    f"explanation = llm.explain({PROMPT!r}, max_new_tokens={NEW_TOKENS})\nexplanation",
    f"explorer = NextTokenExplorer(llm, {PROMPT!r}, top_k=8)\n"
    "explorer.temperature_slider.add_class('hfllm-test-temperature')\n"
    "explorer",
    f"lens = llm.logit_lens({PROMPT!r})\nlens",
]


@pytest.fixture(scope="module")
def page(browser: Any, lab: Lab) -> Iterator[Any]:
    """The notebook above, run, with every view drawn (the logit lens comes last)."""
    with open_notebook(browser, lab, "look_inside.ipynb", CELLS, ".hfllm-lens", RENDER_S) as page:
        yield page


def _output(page: Any, selector: str) -> Any:
    """The output area holding ``selector``: what a screenshot of that view should frame."""
    return page.locator(".jp-OutputArea-output", has=page.locator(selector)).first


def _screenshot(page: Any, selector: str, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    _output(page, selector).screenshot(path=ARTIFACTS / name)


def _check_coloured_tokens(page: Any, count: int) -> None:
    """``count`` token spans, each with hover text; the new ones coloured, in more than one colour."""
    tokens = page.locator(".hfllm-explain .hfllm-token")
    assert tokens.count() == count
    titles = [tokens.nth(i).get_attribute("title") for i in range(count)]
    assert "nothing before it" in titles[0]
    assert all(re.search(r"P = [\d.e-]+% · entropy \d+\.\d\d nats", title) for title in titles[1:]), titles
    assert all("most likely here" in title for title in titles[1:])
    generated = page.locator(".hfllm-explain .hfllm-generated-token")
    colours = {generated.nth(i).evaluate("e => getComputedStyle(e).backgroundColor") for i in range(NEW_TOKENS)}
    assert len(colours) > 1 and "rgba(0, 0, 0, 0)" not in colours, colours


def test_explain_view_colours_tokens_and_carries_hover_text(page):
    with _screenshot_on_failure(page, "explain-view"):
        count = int(_run_code(page, "print(len(explanation.tokens))"))
        _check_coloured_tokens(page, count)
        paris = page.locator(".hfllm-explain .hfllm-generated-token").first
        assert paris.text_content() == " Paris"
        paris.hover()  # the native tooltip is not in the DOM; its text is the title checked above
        _screenshot(page, ".hfllm-explain", "explain-view.png")


def test_clicking_a_bar_appends_that_token(page):
    with _screenshot_on_failure(page, "explorer-click"):
        text = page.locator(".hfllm-explorer-text")
        before = text.text_content()
        assert before == PROMPT
        token = _run_code(page, "print(explorer.candidates[1][1], end='')")  # the second bar's token
        page.locator(".hfllm-explorer-bar").nth(1).click()
        wait_until(lambda: text.text_content() == before + token, KERNEL_S, "the text to grow by the token")
        assert _run_code(page, "print(explorer.text, end='')") == before + token
        _screenshot(page, ".hfllm-explorer", "explorer-after-click.png")


def test_moving_the_temperature_slider_redraws_the_bars(page):
    with _screenshot_on_failure(page, "explorer-slider"):
        bars = page.locator(".hfllm-explorer-bar")
        widths = [bars.nth(i).bounding_box()["width"] for i in range(3)]
        handle = page.locator(".hfllm-test-temperature .noUi-handle")
        box = handle.bounding_box()
        x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
        page.mouse.move(x, y)
        page.mouse.down()
        page.mouse.move(x + 120, y, steps=8)  # to the right: hotter, flatter
        page.mouse.up()
        wait_until(lambda: float(_run_code(page, "print(explorer.temperature)")) > 1.0, KERNEL_S, "a hotter T")
        # Flatter: the likeliest bar shrinks, the ones after it grow.
        wait_until(lambda: bars.nth(0).bounding_box()["width"] < widths[0], KERNEL_S, "the first bar to shrink")
        assert bars.nth(2).bounding_box()["width"] > widths[2]
        _screenshot(page, ".hfllm-explorer", "explorer-after-slider.png")
        # top-p greys the bars of the tokens it leaves out (set from code: the same slider).
        _run_code(page, "explorer.top_p = 0.5")
        kept = page.locator(".hfllm-explorer-bar.mod-info")
        wait_until(lambda: 0 < kept.count() < bars.count(), KERNEL_S, "top-p to grey some bars")
        _screenshot(page, ".hfllm-explorer", "explorer-top-p.png")


def test_logit_lens_shows_one_row_per_layer_and_the_prediction_last(page):
    with _screenshot_on_failure(page, "logit-lens"):
        rows = page.locator(".hfllm-lens tbody tr")
        layers = int(_run_code(page, "print(llm.model.config.num_hidden_layers)"))
        assert rows.count() == layers + 1
        last = rows.nth(layers).locator("td").last
        assert last.text_content() == "' Paris'"
        assert "layer 30, after ' is'" in last.get_attribute("title")
        _screenshot(page, ".hfllm-lens", "logit-lens.png")


def test_a_saved_explanation_renders_without_running_code(page, browser, lab):
    """Stored output in an unsigned notebook: JupyterLab sanitizes it, as for a notebook reopened later."""
    html = _run_code(page, "print(explanation._repr_html_(), end='')")
    count = int(_run_code(page, "print(len(explanation.tokens))"))
    stored = nbformat.v4.new_code_cell("explanation")
    stored.outputs = [nbformat.v4.new_output("display_data", data={"text/html": html, "text/plain": "Explanation"})]
    with (
        open_notebook(
            browser, lab, "saved.ipynb", [stored], ".hfllm-explain .hfllm-token", RENDER_S, run=False
        ) as saved,
        _screenshot_on_failure(saved, "explain-saved"),
    ):
        _check_coloured_tokens(saved, count)
        _screenshot(saved, ".hfllm-explain", "explain-saved.png")
