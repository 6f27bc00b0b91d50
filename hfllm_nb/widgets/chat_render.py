"""HTML for the chat panel: turns as bubbles, replies as Markdown, the prompt the model reads.

Replies go through markdown-it-py with raw HTML off, so ``<script>`` or ``<img onerror>`` from
the model shows as text; links may only be web or mail links (markdown-it drops ``javascript:``)
and open in a new tab; images are off (a reply must not make the browser fetch anything).
User text is escaped and shown as typed. No widget imports: the panel sets these strings.
"""

from __future__ import annotations

import html
from typing import Any

from markdown_it import MarkdownIt

from ..conversation import STOPPED, PromptPlan

# One <style> for the whole panel, scoped by class so it touches nothing else on the page.
STYLE = """<style>
.hfllm-chat-turn{margin:4px 0;padding:6px 10px;border-radius:8px;max-width:90%;overflow-wrap:anywhere;
  line-height:1.45}
.hfllm-chat-user{background:#e3f2fd;color:#0d2a4a;margin-left:auto;white-space:pre-wrap}
.hfllm-chat-assistant{background:var(--jp-layout-color2,#f3f4f6);color:var(--jp-content-font-color1,#1f2328);
  border-left:3px solid #9e9e9e}
.hfllm-chat-role{font-size:11px;font-weight:600;opacity:.65;margin-bottom:2px;white-space:normal}
.hfllm-chat-assistant p{margin:.3em 0}
.hfllm-chat-assistant pre{background:var(--jp-cell-editor-background,#eaeef2);padding:6px 8px;border-radius:4px;
  overflow-x:auto;font-family:var(--jp-code-font-family,monospace);font-size:12px;white-space:pre}
.hfllm-chat-assistant code{font-family:var(--jp-code-font-family,monospace)}
.hfllm-chat-note{font-size:11px;font-style:italic;color:#b26a00}
.hfllm-chat-prompt{white-space:pre-wrap;font-family:var(--jp-code-font-family,monospace);font-size:12px;
  background:var(--jp-layout-color2,#f6f8fa);padding:6px;border:1px dashed #bbb;max-height:24em;overflow:auto}
</style>"""

_NOTES = {STOPPED: "stopped", "": ""}


def _link_open(renderer: Any, tokens: list, index: int, options: Any, env: Any) -> str:
    tokens[index].attrSet("target", "_blank")  # a click must not navigate the notebook away
    tokens[index].attrSet("rel", "noopener noreferrer nofollow")
    return renderer.renderToken(tokens, index, options, env)


# "js-default": CommonMark plus tables and strikethrough, raw HTML off, no linkify or typographer.
_MARKDOWN = MarkdownIt("js-default", {"breaks": True}).disable("image")
_MARKDOWN.add_render_rule("link_open", _link_open)


def render_markdown(text: str) -> str:
    """``text`` as HTML: paragraphs, lists, code blocks; any HTML in it shows as text."""
    return _MARKDOWN.render(text)


def turn_html(role: str, content: str, note: str = "", *, streaming: bool = False) -> str:
    """One message as a bubble: the user's text as typed, the assistant's as Markdown."""
    if role == "user":
        body = html.escape(content)
    else:
        body = render_markdown(content) if content else ("<i>…</i>" if streaming else "<i>(no text)</i>")
    label = "You" if role == "user" else "Assistant"
    extra = f'<div class="hfllm-chat-note">{html.escape(_NOTES.get(note, note))}</div>' if note else ""
    return (
        f'<div class="hfllm-chat-turn hfllm-chat-{role}"><div class="hfllm-chat-role">{label}</div>{body}{extra}</div>'
    )


def prompt_html(plan: PromptPlan | None) -> str:
    """The exact text the model reads, with its length and what was left out to fit."""
    if plan is None:
        return "<i>Send a message to see the prompt the chat template builds.</i>"
    left = (
        f" · the oldest {plan.left_out} message{'s' * (plan.left_out != 1)} left out to fit the context"
        if plan.left_out
        else ""
    )
    return (
        f"<div><b>What the model reads</b> (the chat template applied): {plan.tokens} tokens{left}</div>"
        f'<div class="hfllm-chat-prompt">{html.escape(plan.text)}</div>'
    )
