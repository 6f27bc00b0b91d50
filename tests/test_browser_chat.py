"""The chat panel in a real JupyterLab, driven by headless Chromium: type, Enter, stream, Stop, Markdown, escaping.

Needs Debian's Chromium at /usr/bin/chromium (``.ci/install-browser.sh``); without it the tests
skip locally and fail in CI. ``test-artifacts/chat.png`` shows a three-turn conversation.
"""

from __future__ import annotations

import re
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

REPLY_TOKENS = 48
PANEL_RENDER_S = 150
GENERATION_S = 150
STOP_S = 30

CELLS = [
    "from hfllm_nb import HuggingFaceLLM\n\nllm = HuggingFaceLLM()",
    f"panel = llm.chat_panel(max_length={REPLY_TOKENS})\n"
    "for part in ('input', 'send_button', 'stop_button', 'turns', 'status', 'error'):\n"
    "    getattr(panel, part).add_class(f'hfllm-test-{part}')\n"
    "panel",
]


@pytest.fixture(scope="module")
def page(browser: Any, lab: Lab) -> Iterator[Any]:
    with open_notebook(browser, lab, "chat.ipynb", CELLS, ".hfllm-test-send_button", PANEL_RENDER_S) as page:
        yield page


def _turns(page: Any) -> Any:
    return page.locator(".hfllm-test-turns .hfllm-chat-turn")


def _type(page: Any, text: str, enter: bool = True) -> None:
    box = page.locator(".hfllm-test-input textarea")
    box.click()
    page.keyboard.press("Control+A")
    page.keyboard.press("Delete")
    page.keyboard.type(text)
    if enter:
        page.keyboard.press("Enter")


def _send_and_wait(page: Any, text: str, turns_after: int) -> None:
    """Type ``text``, press Enter, wait until ``turns_after`` turns show and the reply has ended."""
    _type(page, text)
    status = page.locator(".hfllm-test-status")
    wait_until(
        lambda: (
            _turns(page).count() == turns_after
            and page.locator(".hfllm-test-send_button").is_enabled()
            and re.match(r"\d+ tokens?", status.inner_text())
        ),
        GENERATION_S,
        f"{turns_after} turns and the reply's token count",
    )
    assert page.locator(".hfllm-test-error").inner_text().strip() == ""


def _kernel(page: Any, expression: str) -> str:
    return _run_code(page, f"print({expression}, end='')")


def test_enter_sends_and_the_reply_appears_under_the_message(page):
    with _screenshot_on_failure(page, "chat-first"):
        _send_and_wait(page, "What is the capital of France?", 2)
        user, reply = _turns(page).nth(0), _turns(page).nth(1)
        assert "hfllm-chat-user" in user.get_attribute("class") and "France" in user.inner_text()
        assert "hfllm-chat-assistant" in reply.get_attribute("class")
        assert reply.bounding_box()["y"] > user.bounding_box()["y"]  # under it
        assert "Paris" in reply.inner_text()
        assert page.locator(".hfllm-test-input textarea").input_value() == ""


def test_a_second_message_shows_four_turns_and_the_reply_equals_llm_chat(page):
    with _screenshot_on_failure(page, "chat-second"):
        _send_and_wait(page, "And of Germany?", 4)
        same = _kernel(
            page, f"panel.messages[-1]['content'] == llm.chat(panel.messages[:-1], max_length={REPLY_TOKENS})"
        )
        assert same == "True"
        reply = _kernel(page, "panel.messages[-1]['content']")
        shown = _turns(page).nth(3).locator("p").all_inner_texts()
        assert " ".join(" ".join(shown).split()) == " ".join(reply.split()), (shown, reply)


def test_a_fenced_code_block_renders_as_code_and_a_screenshot_is_taken(page):
    with _screenshot_on_failure(page, "chat-code"):
        _send_and_wait(page, "Write python code to add two numbers", 6)
        code = _turns(page).nth(5).locator("pre code")
        assert code.count() >= 1 and "def " in code.first.inner_text()
        family = code.first.evaluate("e => getComputedStyle(e).fontFamily")
        assert "mono" in family.lower() or "courier" in family.lower(), family
        ARTIFACTS.mkdir(exist_ok=True)
        panel = page.locator(".jp-OutputArea-output", has=page.locator(".hfllm-test-turns"))
        panel.screenshot(path=ARTIFACTS / "chat.png")


def test_a_backslash_then_enter_starts_a_new_line_instead_of_sending(page):
    with _screenshot_on_failure(page, "chat-newline"):
        before = _turns(page).count()
        _type(page, "line one\\")
        box = page.locator(".hfllm-test-input textarea")
        wait_until(lambda: box.input_value() == "line one\n", 10, "the backslash to become a line break")
        assert _turns(page).count() == before and _kernel(page, "len(panel.messages)") == str(before)
        _type(page, "", enter=False)  # leave the box empty for the next test


def test_hostile_text_from_the_user_and_the_model_renders_as_text(page):
    with _screenshot_on_failure(page, "chat-hostile"):
        hostile = '<script>window.__hfllm_pwned = 1</script><img src=x onerror="window.__hfllm_pwned = 2">'
        _run_code(page, "panel.clear()")
        _run_code(page, "panel.max_length.value = 4")
        _send_and_wait(page, hostile, 2)  # typed by the user, streamed back with a reply
        # The model's text goes through the same drawing: put a hostile reply in the conversation.
        _run_code(
            page, f"panel.messages = [dict(role='user', content='hi'), dict(role='assistant', content={hostile!r})]"
        )
        wait_until(lambda: "onerror" in _turns(page).nth(1).inner_text(), 30, "the hostile reply as text")
        both = f"[dict(role='user', content={hostile!r}), dict(role='assistant', content={hostile!r})]"
        _run_code(page, f"panel.messages = {both}")
        wait_until(lambda: "<script>" in _turns(page).nth(0).inner_text(), 30, "the hostile message as text")
        turns = page.locator(".hfllm-test-turns")
        assert turns.locator("script").count() == 0 and turns.locator("img").count() == 0
        assert page.evaluate("() => window.__hfllm_pwned") is None
        for index in (0, 1):
            assert "<img src=x onerror=" in _turns(page).nth(index).inner_text()


def test_stop_mid_reply_marks_the_turn_stopped_and_the_next_send_works(page):
    with _screenshot_on_failure(page, "chat-stop"):
        _run_code(page, "panel.clear(); panel.max_length.value = 400")
        _type(page, "Count from 1 to 300, separated by commas.")
        send, stop = page.locator(".hfllm-test-send_button"), page.locator(".hfllm-test-stop_button")
        wait_until(lambda: _turns(page).count() == 2 and stop.is_enabled(), 30, "the reply to start")
        reply = _turns(page).nth(1)
        wait_until(lambda: len(reply.inner_text()) > 40, GENERATION_S, "the reply to stream some text")
        grown = len(reply.inner_text())
        wait_until(lambda: len(reply.inner_text()) > grown, GENERATION_S, "the reply to grow while streaming")
        assert not send.is_enabled(), "the reply ended before Stop; ask for a longer one"
        stop.click()
        wait_until(send.is_enabled, STOP_S, "Send to be enabled after Stop")
        assert "stopped" in reply.locator(".hfllm-chat-note").inner_text()
        assert "ended: stopped" in page.locator(".hfllm-test-status").inner_text()
        _run_code(page, "panel.max_length.value = 8")
        _send_and_wait(page, "Thanks!", 4)
        assert _kernel(page, "panel.conversation.notes") == "['', 'stopped', '', '']"
