"""The attention view, the decoding lab and the explorer's default bars in a real JupyterLab
(headless Chromium): n x n maps, hovering a token shows its row, one column per lane, the model's
own probabilities on the bars, and the attention maps of a saved notebook. Screenshots go to test-artifacts/.
"""

from __future__ import annotations

import json
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

pytestmark = [pytest.mark.browser, pytest.mark.timeout(400)]

PROMPT = "The capital of France is"
LANES = {"greedy": {}, "beam 2": {"num_beams": 2}, "T=0.7, seed 1": {"do_sample": True, "temperature": 0.7, "seed": 1}}
RENDER_S = 240  # model load, attention, three lanes and the explorer, on a busy 2-core runner
KERNEL_S = 30

CELLS = [
    "from hfllm_nb import HuggingFaceLLM, NextTokenExplorer\n\nllm = HuggingFaceLLM()",
    f"attention = llm.attention({PROMPT!r})\nattention",
    f"comparison = llm.compare({PROMPT!r}, {LANES!r}, max_new_tokens=6)\ncomparison",
    f"explorer = NextTokenExplorer(llm, {PROMPT!r})\nexplorer",
    "view = attention.show(layer=2)\nview",
]


@pytest.fixture(scope="module")
def page(browser: Any, lab: Lab) -> Iterator[Any]:
    with open_notebook(browser, lab, "views.ipynb", CELLS, ".hfllm-attention-view .hfllm-attn-map", RENDER_S) as page:
        yield page


def _screenshot(page: Any, locator: Any, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.locator(".jp-OutputArea-output", has=locator).first.screenshot(path=ARTIFACTS / name)


def _display(locator: Any) -> str:
    return locator.evaluate("e => getComputedStyle(e).display")


def _check_maps(view: Any, heads: int, n: int) -> None:
    """``heads`` images, each a loaded PNG of n x n equal squares, drawn at its own size (no smoothing)."""
    maps = view.locator(".hfllm-attn-map")
    assert maps.count() == heads
    sizes = maps.evaluate_all("imgs => imgs.map(i => [i.complete, i.naturalWidth, i.naturalHeight, i.width])")
    side = sizes[0][1]
    assert side % n == 0 and sizes == [[True, side, side, side]] * heads, sizes


def test_attention_view_draws_n_by_n_maps_and_hovering_a_token_shows_its_row(page):
    view = page.locator(".hfllm-attention").first
    with _screenshot_on_failure(page, "attention-hover"):
        heads, n = json.loads(_run_code(page, "print([attention.num_heads, len(attention.tokens)])"))
        _check_maps(view, heads, n)
        tokens = view.locator(".hfllm-attn-token")
        assert tokens.count() == n
        rows = view.locator(".hfllm-attn-row")
        assert [_display(rows.nth(i)) for i in range(n)] == ["none"] * n  # nothing shown before a hover
        target = n - 1
        tokens.nth(target).hover()
        wait_until(lambda: _display(rows.nth(target)) == "block", KERNEL_S, "the hovered token's row to show")
        assert [_display(rows.nth(i)) for i in range(n) if i != target] == ["none"] * (n - 1)
        # The row's tokens are shaded by weight: more than one shade, none missing.
        shades = rows.nth(target).locator("span[class^='c']")
        assert shades.count() == target + 1
        colours = set(shades.evaluate_all("s => s.map(e => getComputedStyle(e).backgroundColor)"))
        assert len(colours) > 1, colours
        # Every map marks row `target`: the red line sits target rows down from the map's top.
        for head in range(heads):
            image = view.locator(".hfllm-attn-map").nth(head).bounding_box()
            mark = view.locator(".hfllm-attn-mark").nth(head)
            assert _display(mark) == "block"
            offset = mark.bounding_box()["y"] - image["y"]
            assert abs(offset - target * image["height"] / n) < 1.5, (head, offset)
        _screenshot(page, view, "attention-view.png")


def test_clicking_a_token_keeps_its_row_after_the_mouse_leaves(page):
    view = page.locator(".hfllm-attention").first
    with _screenshot_on_failure(page, "attention-click"):
        view.locator(".hfllm-attn-token").nth(2).click()
        page.mouse.move(5, 5)
        rows = view.locator(".hfllm-attn-row")
        wait_until(lambda: _display(rows.nth(2)) == "block", KERNEL_S, "the clicked token's row to stay")


def test_the_layer_selector_redraws_the_maps(page):
    view = page.locator(".hfllm-attention-view")
    with _screenshot_on_failure(page, "attention-layer"):
        assert "Layer 2 of 0 to 29" in view.text_content()
        before = view.locator(".hfllm-attn-map").first.get_attribute("src")
        view.locator("select").select_option(label="layer 5")
        wait_until(lambda: "Layer 5 of 0 to 29" in view.text_content(), KERNEL_S, "layer 5 to be drawn")
        assert view.locator(".hfllm-attn-map").first.get_attribute("src") != before
        assert int(_run_code(page, "print(view.layer)")) == 5
        _screenshot(page, view, "attention-widget-layer5.png")


def test_the_comparison_shows_one_column_per_lane_with_coloured_tokens(page):
    lab = page.locator(".hfllm-compare")
    with _screenshot_on_failure(page, "comparison"):
        columns = lab.locator(".hfllm-compare-lane")
        assert columns.count() == len(LANES)
        texts = json.loads(_run_code(page, "import json; print(json.dumps(list(comparison.texts.values())))"))
        for index, text in enumerate(texts):
            column = columns.nth(index)
            tokens = column.locator(".hfllm-generated-token")
            assert "".join(tokens.all_text_contents()).replace("↵", "") == text
            colours = set(tokens.evaluate_all("s => s.map(e => getComputedStyle(e).backgroundColor)"))
            assert len(colours) > 1 and "rgba(0, 0, 0, 0)" not in colours, colours
            assert column.locator(".hfllm-compare-parting").count() == 1
            assert "total log-probability -" in column.locator(".hfllm-compare-stats").text_content()
        _screenshot(page, lab, "comparison.png")


def test_the_explorers_default_bars_show_the_models_own_probabilities(page):
    explorer = page.locator(".hfllm-explorer")
    with _screenshot_on_failure(page, "explorer-default"):
        code = (
            "import torch\n"
            f"ids = torch.tensor([llm.tokenizer({PROMPT!r})['input_ids']], device=llm.device)\n"
            "with torch.inference_mode():\n"
            "    p = torch.softmax(llm.model(ids).logits[0, -1].float(), -1)\n"
            "print(' '.join(f'{100 * v:.3g}%' for v in p.topk(3).values.tolist()))"
        )
        expected = _run_code(page, code).split()
        shown = explorer.locator(".hfllm-explorer-p").all_text_contents()[:3]
        assert shown == expected
        assert "model's own probability" in explorer.text_content()
        _screenshot(page, explorer, "explorer-default.png")


def test_a_saved_attention_view_still_draws_its_maps_without_a_kernel(page, browser, lab):
    """Stored output of an unsigned notebook, sanitized by JupyterLab: the style goes, the maps stay."""
    html = _run_code(page, "print(attention.html(0), end='')")
    heads, n = json.loads(_run_code(page, "print([attention.num_heads, len(attention.tokens)])"))
    stored = nbformat.v4.new_code_cell("attention")
    stored.outputs = [nbformat.v4.new_output("display_data", data={"text/html": html, "text/plain": "Attention"})]
    with (
        open_notebook(browser, lab, "saved_attention.ipynb", [stored], ".hfllm-attn-map", 60, run=False) as saved,
        _screenshot_on_failure(saved, "attention-saved"),
    ):
        view = saved.locator(".hfllm-attention").first
        _check_maps(view, heads, n)
        assert view.locator("style").count() == 0  # sanitized: so the hover rows stay hidden
        assert all(_display(row) == "none" for row in view.locator(".hfllm-attn-row").all())
        titles = view.locator(".hfllm-attn-token").evaluate_all("s => s.map(e => e.title)")
        assert len(titles) == n and all("looks most at" in t for t in titles)
        _screenshot(saved, view, "attention-saved.png")
