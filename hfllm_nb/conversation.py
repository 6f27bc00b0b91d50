"""A chat conversation: its messages, the prompt the model reads, and the oldest turns left out to fit.

The state behind ``ChatPanel``, without a widget: the panel draws a ``Conversation`` and calls
its methods. What the model reads is ``llm.format_chat`` of the messages that fit the context
with ``max_length`` tokens left for the reply (``llm.chat``'s rule): the system prompt is always
kept, the oldest turns go first, and the count of those left out is reported, never an error.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .core.validation import short

if TYPE_CHECKING:
    from .llm import HuggingFaceLLM

ROLES = ("system", "user", "assistant")
STOPPED = "stopped"  # the note on a reply cut short by Stop


@dataclass(frozen=True)
class PromptPlan:
    """What the model reads for the next reply."""

    messages: list[dict[str, str]]  # the system prompt (if any), then the turns that fit
    text: str  # the chat template applied to them: the exact prompt
    tokens: int  # its length in tokens
    left_out: int  # how many of the oldest messages were left out to fit the context


def check_message_text(text: Any, what: str = "message") -> str:
    """A message the user sends: a str with some visible text."""
    if not isinstance(text, str):
        raise TypeError(f"The {what} must be a str, not {type(text).__name__} ({short(text)}).")
    if not text.strip():
        raise ValueError(f"The {what} is empty or only whitespace ({text!r}); type something to send.")
    return text


def check_conversation(messages: Any) -> tuple[str | None, list[dict[str, str]]]:
    """Split ``messages`` into the system prompt and the turns, or raise naming the bad item.

    Turns alternate user, assistant, user, …, as chat templates expect; an optional system
    message comes first. An empty list is an empty conversation.
    """
    if not isinstance(messages, (list, tuple)):
        raise TypeError(
            f"messages must be a list of {{'role': ..., 'content': ...}} dicts, not {type(messages).__name__} "
            f"({short(messages)})."
        )
    turns: list[dict[str, str]] = []
    system = None
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not {"role", "content"} <= set(message):
            raise TypeError(f"messages[{i}] is {short(message)}; each message is a dict with 'role' and 'content'.")
        role, content = message["role"], message["content"]
        if role not in ROLES or not isinstance(content, str):
            raise TypeError(
                f"messages[{i}] is {short(message)}; 'role' is one of {', '.join(map(repr, ROLES))} and "
                "'content' is a str."
            )
        if role == "system":
            if i:
                raise ValueError(f"messages[{i}] is a system message; only the first message may be one.")
            system = content
            continue
        expected = "user" if len(turns) % 2 == 0 else "assistant"
        if role != expected:
            raise ValueError(
                f"messages[{i}] has role {role!r} where {expected!r} was expected: turns alternate user, "
                "assistant, user, … (after an optional system message)."
            )
        turns.append({"role": role, "content": content})
    return system, turns


class Conversation:
    """The messages of one chat, the system prompt apart, and a note per turn (e.g. "stopped").

    >>> conversation = Conversation("Answer in French.")        # doctest: +SKIP
    >>> conversation.add_user("Hello!")
    >>> plan = conversation.plan(llm, reply_tokens=100); plan.text   # what the model reads
    """

    def __init__(self, system_prompt: str | None = None) -> None:
        self._system: str | None = None
        self.system_prompt = system_prompt
        self.turns: list[dict[str, str]] = []
        self.notes: list[str] = []  # one per turn: "" or why a reply ended early

    @property
    def system_prompt(self) -> str | None:
        """The system message, or None (a blank one counts as none: the template then adds its default)."""
        return self._system

    @system_prompt.setter
    def system_prompt(self, value: str | None) -> None:
        if value is not None and not isinstance(value, str):
            raise TypeError(f"system_prompt must be a str or None, not {type(value).__name__} ({short(value)}).")
        self._system = value if value and value.strip() else None

    @property
    def messages(self) -> list[dict[str, str]]:
        """The whole conversation as ``llm.chat`` takes it: the system message first, if any."""
        system = [{"role": "system", "content": self._system}] if self._system is not None else []
        return system + [dict(turn) for turn in self.turns]

    @messages.setter
    def messages(self, value: list[dict[str, str]]) -> None:
        system, turns = check_conversation(value)  # nothing changes unless all of it is valid
        self.system_prompt = system
        self.turns, self.notes = turns, [""] * len(turns)

    @property
    def awaiting_reply(self) -> bool:
        """True when the last message is the user's: the next reply answers it."""
        return bool(self.turns) and self.turns[-1]["role"] == "user"

    def add_user(self, text: str) -> None:
        check_message_text(text)
        if self.awaiting_reply:
            raise ValueError("The last user message has no reply yet; regenerate() answers it, or edit_last(text).")
        self.turns.append({"role": "user", "content": text})
        self.notes.append("")

    def add_reply(self, text: str, note: str = "") -> None:
        if not self.awaiting_reply:
            raise ValueError("A reply needs a user message to answer.")
        self.turns.append({"role": "assistant", "content": text})
        self.notes.append(note)

    def drop_reply(self) -> None:
        """Take back the last reply, so that the last user message is answered again."""
        if not self.turns:
            raise ValueError("The conversation is empty: send a message first.")
        if self.turns[-1]["role"] == "assistant":
            self.turns.pop()
            self.notes.pop()

    def take_last_user(self) -> str:
        """Remove the last user message and its reply; return the message (to edit and send again)."""
        self.drop_reply()
        self.notes.pop()
        return self.turns.pop()["content"]

    def clear(self) -> None:
        """Forget the turns; the system prompt stays."""
        self.turns, self.notes = [], []

    def plan(self, llm: HuggingFaceLLM, reply_tokens: int) -> PromptPlan:
        """The prompt for the next reply: the newest turns that fit the context with ``reply_tokens`` to spare.

        The turns kept always start with a user message. Raises ValueError only when the system
        prompt and the last user message alone do not fit.
        """
        if not self.awaiting_reply:
            raise ValueError("There is no user message to answer: send one first.")
        system = self.messages[:1] if self._system is not None else []
        room = llm.context_length - reply_tokens
        starts = [i for i, turn in enumerate(self.turns) if turn["role"] == "user"]  # where a kept part may begin

        def build(start: int) -> tuple[list[dict[str, str]], str, int]:
            messages = system + [dict(turn) for turn in self.turns[start:]]
            text = llm.format_chat(messages)
            return messages, text, llm.count_tokens(text, add_special_tokens=False)

        built: dict[int, tuple[list[dict[str, str]], str, int]] = {}

        def at(index: int) -> tuple[list[dict[str, str]], str, int]:
            if index not in built:
                built[index] = build(starts[index])
            return built[index]

        # Fewer turns never make a longer prompt, so the first start that fits is found by bisection:
        # a long history costs a few template applications, not one per turn.
        first_fit = bisect.bisect_left(range(len(starts)), True, key=lambda index: at(index)[2] <= room)
        if first_fit == len(starts):
            tokens = at(len(starts) - 1)[2]
            raise ValueError(
                f"The last message{' and the system prompt' if system else ''} take {tokens} tokens; with "
                f"max_length={reply_tokens} for the reply that exceeds the model's context of {llm.context_length}. "
                "Shorten the message or lower max_length."
            )
        messages, text, tokens = at(first_fit)
        return PromptPlan(messages, text, tokens, left_out=starts[first_fit])
