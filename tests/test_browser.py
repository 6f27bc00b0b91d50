"""The panel in a real JupyterLab, driven by headless Chromium: type, Generate, stream, Stop.

Needs Debian's Chromium at /usr/bin/chromium (``.ci/install-browser.sh``). Without it the
tests skip locally and fail in CI (``CI`` set), where they must run. A screenshot of the
panel, and the server log, land in ``test-artifacts/``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

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

NOTEBOOK = "panel.ipynb"
PROMPT = "The capital of France is"
LONG_MAX_LENGTH = 400

# Every wait is bounded, so a broken page fails instead of hanging (see _browser.py for the rest).
PANEL_RENDER_S = 150
GENERATION_S = 120
STOP_S = 30

# The test notebook: what a user types, plus CSS classes on the panel's parts so the
# selectors below do not depend on the panel's layout.
CELLS = [
    "from hfllm_nb import HuggingFaceLLM\n\nllm = HuggingFaceLLM()",
    "panel = llm.panel()\n"
    "for part in ('prompt', 'generate_button', 'stop_button', 'max_length',\n"
    "             'output', 'status', 'error', 'memory'):\n"
    "    getattr(panel, part).add_class(f'hfllm-test-{part}')\n"
    "panel",
]


@pytest.fixture(scope="module")
def page(browser: Any, lab: Lab) -> Iterator[Any]:
    """The test notebook open in JupyterLab with all cells run and the panel rendered.

    ``browser`` comes first so that a missing Chromium skips before a server starts.
    """
    with open_notebook(browser, lab, NOTEBOOK, CELLS, ".hfllm-test-generate_button", PANEL_RENDER_S) as page:
        yield page


# ----------------------------------------------------------------------------- tests


def _type_prompt(page: Any, text: str) -> None:
    page.locator(".hfllm-test-prompt textarea").click()
    page.keyboard.press("Control+A")
    page.keyboard.press("Delete")
    page.keyboard.type(text)


def _continuation(page: Any) -> str:
    """The generated text as the page shows it (the prompt is drawn apart, in grey)."""
    return page.locator(".hfllm-test-output .hfllm-continuation").text_content()


def _greedy(page: Any, length: str) -> str:
    """The kernel's own greedy continuation of PROMPT; ``length`` is a keyword argument."""
    code = f"print(llm.generate({PROMPT!r}, {length}, return_full_text=False), end='')"
    return _run_code(page, code)


def _generate_and_wait(page: Any) -> None:
    """Type PROMPT, click Generate, wait until the run ends and the status shows its token count."""
    _type_prompt(page, PROMPT)
    page.get_by_role("button", name="Generate").click()
    generate = page.locator(".hfllm-test-generate_button")
    status = page.locator(".hfllm-test-status")
    wait_until(
        lambda: generate.is_enabled() and re.match(r"\d+ tokens", status.inner_text()),
        GENERATION_S,
        "the panel to finish and show its token count",
    )


def test_panel_renders_with_memory_readout_in_units(page):
    with _screenshot_on_failure(page, "render"):
        assert page.locator(".hfllm-test-generate_button").is_enabled()
        assert not page.locator(".hfllm-test-stop_button").is_enabled()
        memory = page.locator(".hfllm-test-memory")
        wait_until(
            lambda: re.search(r"\d+(?:\.\d+)? (?:MiB|GiB)", memory.inner_text()),
            10,
            "a memory readout in MiB or GiB",
        )
        # One source of defaults: the slider starts at the model's max_length.
        readout = page.locator(".hfllm-test-max_length .widget-readout").inner_text()
        assert readout.strip() == _run_code(page, "print(llm.max_length)").strip()


def test_empty_prompt_shows_an_error_and_leaves_the_panel_idle(page):
    with _screenshot_on_failure(page, "empty-prompt"):
        _type_prompt(page, "")
        page.get_by_role("button", name="Generate").click()
        error = page.locator(".hfllm-test-error")
        wait_until(lambda: "ValueError" in error.inner_text(), 30, "a ValueError in the panel")
        assert "prompt" in error.inner_text().lower(), error.inner_text()
        assert page.locator(".hfllm-test-generate_button").is_enabled()
        assert not page.locator(".hfllm-test-stop_button").is_enabled()


def test_generate_streams_the_greedy_continuation(page):
    with _screenshot_on_failure(page, "generate"):
        _generate_and_wait(page)
        assert page.locator(".hfllm-test-error").inner_text().strip() == ""
        expected = _greedy(page, "max_length=panel.max_length.value")
        assert expected.strip(), "the model generated nothing to compare with"
        assert _continuation(page) == expected
        assert page.locator(".hfllm-test-output .hfllm-prompt").text_content() == PROMPT


def test_stop_ends_a_long_generation_early(page):
    with _screenshot_on_failure(page, "stop"):
        _type_prompt(page, PROMPT)
        # Type the new budget into the slider's editable readout, as a user would.
        page.locator(".hfllm-test-max_length .widget-readout").click()
        page.keyboard.press("Control+A")
        page.keyboard.type(str(LONG_MAX_LENGTH))
        page.keyboard.press("Enter")
        assert _run_code(page, "print(panel.max_length.value)").strip() == str(LONG_MAX_LENGTH)

        generate = page.locator(".hfllm-test-generate_button")
        stop = page.get_by_role("button", name="Stop")
        generate.click()
        wait_until(lambda: not generate.is_enabled() and stop.is_enabled(), 30, "the panel to be busy")
        # Streaming: the text grows while the run is still going.
        wait_until(lambda: _continuation(page), GENERATION_S, "the first streamed text")
        first = _continuation(page)
        wait_until(lambda: len(_continuation(page)) >= len(first) + 15, GENERATION_S, "a few more tokens")
        assert not generate.is_enabled(), "the run ended before Stop; raise LONG_MAX_LENGTH"

        clicked = time.monotonic()
        stop.click()
        wait_until(generate.is_enabled, STOP_S, "Generate to be enabled again after Stop")
        idle_after = time.monotonic() - clicked
        assert not stop.is_enabled()
        status = page.locator(".hfllm-test-status").inner_text()
        assert "stopped" in status, status
        assert page.locator(".hfllm-test-error").inner_text().strip() == ""

        stats = "s = llm.last_stats; print(s.stopped, s.new_tokens, s.prompt_tokens)"
        stopped, new_tokens, prompt_tokens = _run_code(page, stats).split()
        budget = LONG_MAX_LENGTH - int(prompt_tokens)
        assert stopped == "True"
        assert 0 < int(new_tokens) < budget, (new_tokens, budget)
        assert status.startswith(f"{new_tokens} tokens"), status
        # What was shown starts the greedy continuation (a partial last word may be held back).
        shown = _continuation(page)
        greedy = _greedy(page, f"max_new_tokens={new_tokens}")
        assert shown and greedy.startswith(shown), (shown, greedy)

        ARTIFACTS.mkdir(exist_ok=True)
        panel = page.locator(".jp-OutputArea-output", has=page.locator(".hfllm-test-prompt"))
        panel.screenshot(path=ARTIFACTS / "panel.png")
        print(f"\nStopped at {new_tokens}/{budget} new tokens, idle {idle_after:.1f} s after Stop.")


@pytest.mark.xfail(
    strict=False,
    reason="since the layout change (2026-12-02) the panel in a JupyterLab kernel reads 0.53-0.83x generate's "
    "tokens/s on this AVX512-BF16 CPU (1.00 on the commit before); driven from plain Python they are equal "
    "(/tmp/speed.py in the stop-30 note). Cause not found yet: an open defect, not a pass.",
)
def test_the_panel_decodes_as_fast_as_generate_in_the_same_kernel(page):
    # Before the model thread the panel ran generate in a thread of its own: a second OpenMP team,
    # 13 tokens/s in the panel against 27 for generate. Up to three tries: a busy machine is not a bug.
    prompt, new = "The history of the printing press began in", 48
    with _screenshot_on_failure(page, "speed"):
        _run_code(page, f"panel.max_length.value = llm.count_tokens({prompt!r}) + {new}")
        generate = page.locator(".hfllm-test-generate_button")
        status = page.locator(".hfllm-test-status")
        ratios = []
        for _ in range(3):
            code = f"llm.generate({prompt!r}, max_new_tokens={new}); print(llm.last_stats.tokens_per_second)"
            direct = float(_run_code(page, code))
            _run_code(page, "panel.status.value = ''")  # so the last run's figures cannot pass for this one's
            _type_prompt(page, prompt)
            page.get_by_role("button", name="Generate").click()
            wait_until(
                lambda: generate.is_enabled() and re.match(r"\d+ tokens", status.inner_text()),
                GENERATION_S,
                "the panel to finish",
            )
            shown = re.search(r"([\d.]+) tokens/s", status.inner_text())
            assert shown, status.inner_text()
            ratios.append(float(shown.group(1)) / direct)
            if ratios[-1] >= 0.85:
                break
        print(f"\npanel tokens/s ÷ generate tokens/s: {', '.join(f'{r:.2f}' for r in ratios)}")
        assert max(ratios) >= 0.85, ratios


# ----------------------------------------------------------------------------- the same panel, remote

REMOTE_NOTEBOOK = "panel_remote.ipynb"


@pytest.fixture(scope="module")
def served(default_model_dir) -> Iterator[Any]:
    """A real ``transformers serve`` on the default model, started and stopped here."""
    from _server import ServeProcess

    server = ServeProcess(default_model_dir).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def remote_page(browser: Any, lab: Lab, served: Any) -> Iterator[Any]:
    """A notebook whose panel drives a model on the server: the cells differ only in ``endpoint=``."""
    cells = [f"from hfllm_nb import HuggingFaceLLM\n\nllm = HuggingFaceLLM(endpoint={served.url!r})", CELLS[1]]
    with open_notebook(browser, lab, REMOTE_NOTEBOOK, cells, ".hfllm-test-generate_button", PANEL_RENDER_S) as page:
        yield page


def test_remote_panel_generates_the_servers_greedy_text_and_names_the_endpoint(remote_page, served):
    page = remote_page
    with _screenshot_on_failure(page, "remote-generate"):
        memory = page.locator(".hfllm-test-memory")
        wait_until(lambda: served.url in memory.inner_text(), 10, "the readout to name the endpoint")
        _generate_and_wait(page)
        assert page.locator(".hfllm-test-error").inner_text().strip() == ""
        expected = _greedy(page, "max_length=panel.max_length.value")
        assert expected.strip() and _continuation(page) == expected


def test_remote_panel_stop_ends_a_long_generation_and_the_server_answers_again(remote_page):
    page = remote_page
    with _screenshot_on_failure(page, "remote-stop"):
        _type_prompt(page, PROMPT)
        _run_code(page, f"panel.max_length.value = {LONG_MAX_LENGTH}")
        generate = page.locator(".hfllm-test-generate_button")
        stop = page.get_by_role("button", name="Stop")
        shown_before = _continuation(page)  # the previous test's text, until this run clears it
        generate.click()
        wait_until(lambda: _continuation(page) not in ("", shown_before), GENERATION_S, "the first streamed text")
        assert not generate.is_enabled(), "the run ended before Stop; raise LONG_MAX_LENGTH"
        stop.click()
        wait_until(generate.is_enabled, STOP_S, "Generate to be enabled again after Stop")
        assert "stopped" in page.locator(".hfllm-test-status").inner_text()
        stopped, new_tokens = _run_code(page, "s = llm.last_stats; print(s.stopped, s.new_tokens)").split()
        assert stopped == "True" and 0 < int(new_tokens) < LONG_MAX_LENGTH
        # The server is free again: a short request answers at once.
        started = time.monotonic()
        assert _run_code(page, f"print(llm.generate({PROMPT!r}, max_new_tokens=2))").strip().startswith(PROMPT)
        assert time.monotonic() - started < 30
