"""ChatPanel: turns, the same replies as llm.chat, Enter to send, Stop, Regenerate, Edit, escaping, errors."""

from __future__ import annotations

import threading
import time

import pytest
from _waits import wait_until

from hfllm_nb import ChatPanel, GenerationError, HuggingFaceLLM
from hfllm_nb.widgets.chat_render import render_markdown


@pytest.fixture
def make_panel():
    """Build chat panels that are always closed afterwards, so no test leaks a thread."""
    panels = []

    def make(llm, *args, **settings):
        panels.append(ChatPanel(llm, *args, **settings))
        return panels[-1]

    yield make
    for panel in panels:
        panel.close()


def fake_chat(*pieces, delay=0.0, calls=None):
    """A stand-in for llm.chat(messages, stream=True) that yields ``pieces``."""

    def chat(messages, stream=False, **kwargs):
        assert stream
        if calls is not None:
            calls.append(messages)

        def chunks():
            for piece in pieces:
                time.sleep(delay)
                yield piece

        return chunks()

    return chat




def say(panel, text, timeout=120):
    panel.send(text)
    assert panel.wait(timeout), "the reply did not finish"
    return panel.messages[-1]["content"]


def shown(panel):
    """The HTML of every turn on screen."""
    return [widget.value for widget in panel.turns.children]


# ---------------------------------------------------------------- the real model


def test_two_greedy_turns_equal_llm_chat_of_the_same_messages(llm, make_panel):
    panel = make_panel(llm)
    first = say(panel, "What is the capital of France?")
    assert "Paris" in first
    assert panel.status.value.startswith(f"{panel.last_stats.new_tokens} token")
    second = say(panel, "And of Germany?")
    assert [m["role"] for m in panel.messages] == ["user", "assistant", "user", "assistant"]
    assert second == llm.chat(panel.messages[:-1])
    assert len(shown(panel)) == 4 and "hfllm-chat-user" in shown(panel)[2] and "Germany" in shown(panel)[2]
    assert panel.last_plan.text == llm.format_chat(panel.messages[:-1])
    assert panel.error.value == "" and not panel.is_busy


def test_long_history_is_trimmed_and_the_status_says_how_many(llm, make_panel):
    # max_length leaves ~90 tokens of the 8192 for the prompt: cheap to read, and the history is far longer.
    reply = llm.context_length - 90
    panel = make_panel(llm, max_length=reply)
    history = []
    for i in range(6):
        history += [{"role": "user", "content": f"Fact {i} about rivers?"}, {"role": "assistant", "content": "Water."}]
    panel.messages = history
    panel.send("Say hi.")
    wait_until(lambda: panel.reply_text or not panel.is_busy, timeout=120)
    panel.stop()  # the reply may run long: only its start matters here
    assert panel.wait(60)
    plan = panel.last_plan
    assert plan.left_out >= 2 and plan.tokens <= 90
    assert llm.last_stats.prompt_tokens == plan.tokens
    assert f"the oldest {plan.left_out} messages left out to fit the context" in panel.status.value
    assert panel.error.value == "" and len(panel.messages) == len(history) + 2  # nothing is deleted


# ---------------------------------------------------------------- sending


def test_enter_at_the_end_sends_and_a_backslash_continues_the_line(tiny_llm, make_panel, monkeypatch):
    calls = []
    monkeypatch.setattr(tiny_llm, "chat", fake_chat("Hi", " there", calls=calls))
    panel = make_panel(tiny_llm)
    panel.input.value = "first line\\"
    panel.input.value = "first line\\\n"  # what the browser sends for "\" then Enter
    assert panel.input.value == "first line\n" and calls == []
    panel.input.value = "first line\nsecond"
    panel.input.value = "first line\nsecond\n"  # Enter at the end
    assert panel.wait(10)
    assert calls and calls[-1][-1] == {"role": "user", "content": "first line\nsecond"}
    assert panel.input.value == "" and panel.messages[-1] == {"role": "assistant", "content": "Hi there"}
    panel.input.value = "pasted\ntext"  # a newline inside the text is no Enter
    assert len(calls) == 1
    panel.send_button.click()
    assert panel.wait(10) and len(calls) == 2 and panel.messages[-2]["content"] == "pasted\ntext"


def test_the_reply_streams_into_a_turn_under_the_message(tiny_llm, make_panel, monkeypatch):
    monkeypatch.setattr(tiny_llm, "chat", fake_chat(*[f"w{i} " for i in range(40)], delay=0.02))
    panel = make_panel(tiny_llm)
    panel.send("Go")
    wait_until(lambda: "w3" in shown(panel)[-1])
    assert panel.is_busy and len(shown(panel)) == 2 and "hfllm-chat-user" in shown(panel)[0]
    assert "hfllm-chat-assistant" in shown(panel)[1] and "w39" not in shown(panel)[1]
    assert panel.send_button.disabled and not panel.stop_button.disabled
    assert panel.wait(10)
    assert "w39" in shown(panel)[1] and not panel.send_button.disabled


def test_stop_keeps_the_partial_reply_marked_stopped_and_the_next_send_works(tiny_llm, make_panel):
    budget = tiny_llm.context_length - 60  # a random model never ends on its own
    panel = make_panel(tiny_llm, max_length=budget)
    panel.send("Hello")
    wait_until(lambda: len(panel.reply_text) > 10)
    panel.stop_button.click()
    assert panel.wait(30)
    assert panel.last_stats.stopped and 0 < panel.last_stats.new_tokens < budget
    assert panel.conversation.notes[-1] == "stopped" and "stopped" in shown(panel)[-1]
    assert panel.messages[-1]["content"].startswith(panel.reply_text[:10])
    assert "ended: <b>stopped</b>" in panel.status.value
    panel.max_length.value = 5
    say(panel, "Again")
    assert panel.conversation.notes[-1] == "" and len(panel.messages) == 4 and not panel.last_stats.stopped


def test_regenerate_with_a_seed_repeats_the_draw_and_without_one_draws_anew(tiny_llm, make_panel):
    panel = make_panel(tiny_llm, max_length=12, do_sample=True, seed=11)
    first = say(panel, "Tell me something")
    panel.regenerate()
    assert panel.wait(60) and panel.messages[-1]["content"] == first and len(panel.messages) == 2
    panel.seed.value = -1  # no seed: a new draw each time
    draws = set()
    for _ in range(3):
        panel.regenerate_button.click()
        assert panel.wait(60)
        draws.add(panel.messages[-1]["content"])
    assert len(draws) > 1 and len(panel.messages) == 2


def test_edit_last_replaces_the_message_and_answers_it_again(tiny_llm, make_panel, monkeypatch):
    calls = []
    monkeypatch.setattr(tiny_llm, "chat", fake_chat("ok", calls=calls))
    panel = make_panel(tiny_llm)
    say(panel, "Helo")
    panel.edit_button.click()  # the message goes back into the box, and leaves the conversation
    assert panel.input.value == "Helo" and panel.messages == [] and shown(panel) == []
    panel.input.value = "Hello\n"
    assert panel.wait(10) and panel.messages[0]["content"] == "Hello"
    panel.edit_last("Hello there")
    assert panel.wait(10)
    assert panel.messages == [{"role": "user", "content": "Hello there"}, {"role": "assistant", "content": "ok"}]
    assert calls[-1] == [{"role": "user", "content": "Hello there"}]


def test_system_prompt_reaches_the_model_and_clear_keeps_it(tiny_llm, make_panel, monkeypatch):
    calls = []
    monkeypatch.setattr(tiny_llm, "chat", fake_chat("ok", calls=calls))
    panel = make_panel(tiny_llm, "Answer in French.")
    assert panel.system_box.value == "Answer in French."
    say(panel, "Hi")
    assert calls[-1][0] == {"role": "system", "content": "Answer in French."}
    panel.system_box.value = "Answer in German."  # typed into the field
    say(panel, "Hi again")
    assert calls[-1][0] == {"role": "system", "content": "Answer in German."}
    panel.clear_button.click()
    assert panel.messages == [{"role": "system", "content": "Answer in German."}] and shown(panel) == []
    panel.system_prompt = None
    assert panel.system_box.value == "" and panel.messages == []


def test_show_prompt_displays_the_template_and_its_token_count(tiny_llm, make_panel, monkeypatch):
    monkeypatch.setattr(tiny_llm, "chat", fake_chat("ok"))
    panel = make_panel(tiny_llm, "Be <brief>.")
    assert panel.prompt_view.layout.display == "none"
    say(panel, "Hi & bye")
    panel.show_prompt.value = True
    text = tiny_llm.format_chat([{"role": "system", "content": "Be <brief>."}, {"role": "user", "content": "Hi & bye"}])
    assert panel.prompt_view.layout.display is None
    assert f"{tiny_llm.count_tokens(text, add_special_tokens=False)} tokens" in panel.prompt_view.value
    assert "&lt;|im_start|&gt;system\nBe &lt;brief&gt;." in panel.prompt_view.value  # the template, escaped
    assert "Hi &amp; bye" in panel.prompt_view.value


# ---------------------------------------------------------------- messages and bad input


def test_messages_round_trip_and_draw_every_turn(tiny_llm, make_panel):
    panel = make_panel(tiny_llm)
    history = [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
    ]
    panel.messages = history
    assert panel.messages == history and panel.system_box.value == "Be terse."
    assert len(shown(panel)) == 2 and "Hello." in shown(panel)[1]
    panel.messages = panel.messages
    assert panel.messages == history


@pytest.mark.parametrize(
    ("action", "error", "match"),
    [
        (lambda p: p.send(""), ValueError, "empty"),
        (lambda p: p.send(42), TypeError, "must be a str"),
        (lambda p: setattr(p, "messages", "hi"), TypeError, "list of"),
        (lambda p: setattr(p, "messages", [{"role": "user", "content": None}]), TypeError, r"messages\[0\]"),
        (lambda p: setattr(p, "system_prompt", 3), TypeError, "system_prompt"),
        (lambda p: p.regenerate(), ValueError, "empty"),
        (lambda p: p.edit_last("x"), ValueError, "no user message"),
    ],
)
def test_bad_input_raises_clearly_and_the_panel_still_works(tiny_llm, make_panel, action, error, match):
    panel = make_panel(tiny_llm, max_length=4)
    with pytest.raises(error, match=match):
        action(panel)
    assert panel.messages == [] and not panel.is_busy and not panel.send_button.disabled
    say(panel, "Hello")
    assert len(panel.messages) == 2 and panel.error.value == ""


def test_clicking_send_on_an_empty_box_shows_the_error_in_the_panel(tiny_llm, make_panel):
    panel = make_panel(tiny_llm, max_length=4)
    panel.input.value = "   "
    panel.send_button.click()
    assert "ValueError" in panel.error.value and "empty" in panel.error.value and panel.messages == []
    panel.input.value = "Hello"
    panel.send_button.click()
    assert panel.wait(60) and len(panel.messages) == 2 and panel.error.value == ""


def test_a_message_too_long_for_the_context_is_refused_before_the_model_runs(tiny_llm, make_panel):
    panel = make_panel(tiny_llm, max_length=tiny_llm.context_length - 10)
    with pytest.raises(ValueError, match="Shorten the message or lower max_length"):
        panel.send("word " * 50)
    assert panel.messages == [] and not panel.is_busy


def test_send_while_replying_raises_and_the_reply_goes_on(tiny_llm, make_panel, monkeypatch):
    monkeypatch.setattr(tiny_llm, "chat", fake_chat(*"abcdef", delay=0.05))
    panel = make_panel(tiny_llm)
    panel.send("one")
    with pytest.raises(GenerationError, match="still replying"):
        panel.send("two")
    with pytest.raises(GenerationError, match="still replying"):
        panel.messages = []
    assert panel.wait(10) and panel.messages[-1]["content"] == "abcdef" and len(panel.messages) == 2


@pytest.mark.parametrize(
    ("settings", "error", "match"),
    [
        ({"prompt": "x"}, TypeError, "ChatPanel got unknown setting"),
        ({"max_length": 0}, ValueError, "at least 1"),
        ({"temperature": -1.0}, ValueError, "temperature"),
        ({"system_prompt": 5}, TypeError, "system_prompt"),
    ],
)
def test_bad_settings_are_rejected_and_start_no_thread(tiny_llm, settings, error, match):
    before = threading.active_count()
    with pytest.raises(error, match=match):
        ChatPanel(tiny_llm, **settings)
    assert threading.active_count() == before


def test_a_model_without_chat_template_is_refused(tiny_llm, monkeypatch):
    monkeypatch.setattr(tiny_llm.tokenizer, "chat_template", None)
    with pytest.raises(ValueError, match="chat template"):
        ChatPanel(tiny_llm)


# ---------------------------------------------------------------- rendering


HOSTILE = '<script>alert(1)</script> <img src=x onerror="alert(2)"> [x](javascript:alert(3))'


def test_hostile_text_from_user_and_model_shows_as_text(tiny_llm, make_panel, monkeypatch):
    monkeypatch.setattr(tiny_llm, "chat", fake_chat(HOSTILE, '\n```"><img src=x onerror=alert(4)>\ncode\n```'))
    panel = make_panel(tiny_llm)
    say(panel, HOSTILE)
    user, reply = shown(panel)
    for html in (user, reply):
        assert "<script" not in html and "<img" not in html and "javascript:" not in html.replace("(javascript:", "")
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "&lt;img src=x onerror=" in html
    assert "href" not in reply  # a javascript: link is no link


def test_markdown_renders_paragraphs_lists_and_code_blocks():
    html = render_markdown(
        "Steps:\n\n- one\n- two\n\n```python\nprint('<hi>')\n```\n\nSee [docs](https://example.org)."
    )
    assert "<ul>\n<li>one</li>" in html
    assert "<pre><code class=\"language-python\">print('&lt;hi&gt;')\n</code></pre>" in html
    assert '<a href="https://example.org" target="_blank" rel="noopener noreferrer nofollow">docs</a>' in html
    assert "<img" not in render_markdown("![tracker](https://example.org/pixel.png)")


# ---------------------------------------------------------------- lifetime and both ipywidgets


def test_close_during_a_reply_stops_it_and_leaks_no_thread(tiny_llm, monkeypatch):
    before = threading.active_count()
    monkeypatch.setattr(tiny_llm, "chat", fake_chat(*["x"] * 10_000, delay=0.01))
    panel = ChatPanel(tiny_llm)
    panel.send("Go")
    wait_until(lambda: panel.reply_text)
    started = time.monotonic()
    panel.close()
    assert time.monotonic() - started < 5
    assert not panel.is_busy and not panel.memory.running
    assert threading.active_count() == before


def test_llm_close_closes_its_chat_panels(tiny_model_dir):
    llm = HuggingFaceLLM(str(tiny_model_dir), dtype="float32")
    panel = llm.chat_panel("Be brief.", max_length=3)
    assert isinstance(panel, ChatPanel) and panel.system_prompt == "Be brief."
    say(panel, "Hi")
    llm.close()
    assert not panel.memory.running and panel.comm is None  # ipywidgets drops the comm of a closed widget


def test_tooltips_are_set_on_ipywidgets_7_and_8(tiny_llm, make_panel):
    panel = make_panel(tiny_llm)
    for widget in (panel.seed, panel.show_prompt):
        # ipywidgets 8 calls it tooltip; 7 has tooltip on buttons only and description_tooltip elsewhere.
        text = widget.tooltip if widget.has_trait("tooltip") else widget.description_tooltip
        assert text, type(widget).__name__


def test_no_widget_uses_output_or_accordion():
    # Colab's widget manager has failed on both; every widget here draws with HTML and boxes instead.
    from pathlib import Path

    import hfllm_nb

    for path in Path(hfllm_nb.__file__).parent.rglob("*.py"):
        source = path.read_text()
        for name in ("Output", "Accordion"):
            assert f"widgets.{name}(" not in source and f"import {name}" not in source, f"{path.name} uses {name}"
