"""Conversation: messages in and out, and what the model reads when the history outgrows the context."""

from __future__ import annotations

import pytest

from hfllm_nb.conversation import Conversation

HISTORY = [
    {"role": "system", "content": "You answer in one word."},
    {"role": "user", "content": "Colour of the sky?"},
    {"role": "assistant", "content": "Blue."},
    {"role": "user", "content": "And grass?"},
]


def test_messages_round_trip_with_the_system_prompt_first():
    conversation = Conversation()
    conversation.messages = HISTORY
    assert conversation.messages == HISTORY
    assert conversation.system_prompt == "You answer in one word."
    assert [turn["role"] for turn in conversation.turns] == ["user", "assistant", "user"]
    assert conversation.awaiting_reply
    conversation.messages = HISTORY[1:]  # no system message: none is kept from before
    assert conversation.system_prompt is None and conversation.messages == HISTORY[1:]


def test_messages_returns_copies_the_caller_cannot_corrupt():
    conversation = Conversation()
    conversation.messages = HISTORY
    conversation.messages[1]["content"] = "changed"
    assert conversation.messages == HISTORY


@pytest.mark.parametrize(
    ("value", "error", "match"),
    [
        ("hello", TypeError, "list of"),
        ([{"role": "user"}], TypeError, r"messages\[0\].*'content'"),
        ([{"role": "bot", "content": "hi"}], TypeError, r"messages\[0\].*'role' is one of"),
        ([{"role": "user", "content": 3}], TypeError, "'content' is a str"),
        ([{"role": "user", "content": "a"}, {"role": "system", "content": "b"}], ValueError, "only the first"),
        ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], ValueError, "alternate"),
        ([{"role": "assistant", "content": "a"}], ValueError, r"messages\[0\].*'user' was expected"),
    ],
)
def test_bad_messages_raise_naming_the_item_and_change_nothing(value, error, match):
    conversation = Conversation()
    conversation.messages = HISTORY
    with pytest.raises(error, match=match):
        conversation.messages = value
    assert conversation.messages == HISTORY


@pytest.mark.parametrize(
    ("text", "error"), [("", ValueError), ("  \n ", ValueError), (None, TypeError), (5, TypeError)]
)
def test_a_user_message_needs_visible_text(text, error):
    conversation = Conversation()
    with pytest.raises(error, match="message"):
        conversation.add_user(text)
    assert conversation.turns == []


def test_blank_system_prompt_means_none_and_wrong_type_is_rejected():
    assert Conversation("   ").system_prompt is None
    with pytest.raises(TypeError, match="system_prompt must be a str or None"):
        Conversation(system_prompt=["be nice"])


def test_take_last_user_removes_the_message_and_its_reply():
    conversation = Conversation()
    conversation.messages = [*HISTORY, {"role": "assistant", "content": "Green."}]
    assert conversation.take_last_user() == "And grass?"
    assert conversation.messages == HISTORY[:3]
    conversation.drop_reply()
    assert conversation.messages == HISTORY[:2]
    conversation.clear()
    assert conversation.messages == HISTORY[:1]  # the system prompt stays
    with pytest.raises(ValueError, match="empty"):
        conversation.take_last_user()


def test_plan_is_the_template_of_the_whole_conversation_when_it_fits(tiny_llm):
    conversation = Conversation()
    conversation.messages = HISTORY
    plan = conversation.plan(tiny_llm, reply_tokens=20)
    assert plan.messages == HISTORY and plan.left_out == 0
    assert plan.text == tiny_llm.format_chat(HISTORY)
    assert plan.tokens == tiny_llm.count_tokens(plan.text, add_special_tokens=False)


def test_long_history_on_the_default_model_keeps_the_newest_turns_that_fit(llm):
    # About 70 tokens a turn, 160 turns: far more than the 8192-token context.
    turns = []
    for i in range(80):
        turns.append({"role": "user", "content": f"Question {i}: " + "tell me more about the river " * 10})
        turns.append({"role": "assistant", "content": f"Answer {i}: " + "the river flows to the sea " * 10})
    conversation = Conversation("You are terse.")
    conversation.messages = [*conversation.messages, *turns, {"role": "user", "content": "Summarize."}]
    reply = 512
    plan = conversation.plan(llm, reply_tokens=reply)
    room = llm.context_length - reply
    assert 0 < plan.left_out < len(turns) and plan.left_out % 2 == 0  # whole exchanges, oldest first
    assert plan.messages[0] == {"role": "system", "content": "You are terse."}
    assert plan.messages[1]["role"] == "user" and plan.messages[-1]["content"] == "Summarize."
    assert plan.messages[1:] == conversation.turns[plan.left_out :]
    assert plan.tokens == llm.count_tokens(llm.format_chat(plan.messages), add_special_tokens=False) <= room
    # The fewest left out: one more exchange would not fit.
    one_more = [plan.messages[0], *conversation.turns[plan.left_out - 2 :]]
    assert llm.count_tokens(llm.format_chat(one_more), add_special_tokens=False) > room


def test_plan_raises_when_the_last_message_alone_does_not_fit(tiny_llm):
    conversation = Conversation("Be brief.")
    conversation.add_user("word " * 200)
    reply = tiny_llm.context_length - 100
    with pytest.raises(ValueError, match=rf"the system prompt take \d+ tokens; with max_length={reply} for the reply"):
        conversation.plan(tiny_llm, reply_tokens=reply)
    with pytest.raises(ValueError, match="no user message"):
        Conversation().plan(tiny_llm, reply_tokens=10)
