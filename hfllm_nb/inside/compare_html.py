"""How a ``Comparison`` shows: one column per lane, its tokens coloured by the model's probability.

Inline styles and ``title`` attributes only, like ``explain_view``, so a saved notebook shows it
as it was. A red bar marks the first position where the lanes part.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING

from .html import probability_legend, render_tokens_html

if TYPE_CHECKING:
    from .compare import Comparison, Lane

_TEXT = "white-space:pre-wrap;font-family:monospace;line-height:1.9;color:#111"
_PARTING = (
    '<span class="hfllm-compare-parting" title="the lanes part here: up to this point they chose the same tokens" '
    'style="border-left:3px solid #d62728;margin:0 1px"></span>'
)


def _options(lane: Lane) -> str:
    shown = ", ".join(f"{name}={value!r}" for name, value in lane.options.items())
    return shown or "greedy (no options)"


def _column(lane: Lane, parting: int | None) -> str:
    tokens = lane.tokens
    if parting is not None and parting <= len(tokens):
        body = render_tokens_html(tokens[:parting]) + _PARTING + render_tokens_html(tokens[parting:])
    else:
        body = render_tokens_html(tokens)
    total = "unknown" if lane.log_probability is None else f"{lane.log_probability:.2f}"
    note = f'<div style="color:#888">{html.escape(lane.note)}</div>' if lane.note else ""
    return (
        '<div class="hfllm-compare-lane" style="flex:1 1 0;min-width:14em;border:1px solid #ddd;padding:6px">'
        f'<div style="font-weight:700">{html.escape(lane.name)}</div>'
        f'<div style="color:#555">{html.escape(_options(lane))}</div>'
        f'<div class="hfllm-compare-stats" style="color:#555">{len(tokens)} tokens · total log-probability '
        f"{html.escape(total)}</div>{note}"
        f'<div class="hfllm-compare-text" style="{_TEXT}">{body}</div></div>'
    )


def render_comparison(comparison: Comparison) -> str:
    """The prompt, a legend, and the lanes as columns with the parting position marked."""
    parting = comparison.parting
    where = (
        "all lanes chose the same tokens"
        if parting is None
        else f"the lanes part at new token {parting + 1} (red bar); before it they agree"
    )
    notes = "".join(f'<div style="color:#888">{html.escape(note)}</div>' for note in comparison.notes)
    columns = "".join(_column(lane, parting) for lane in comparison.lanes.values())
    return (
        '<div class="hfllm-compare" style="font-size:12px">'
        f'<div style="color:#555">prompt: <span style="{_TEXT};color:#6a737d">{html.escape(comparison.prompt)}</span>'
        f" · up to {comparison.max_new_tokens} new tokens per lane · {html.escape(where)}; "
        "hover over a token for its alternatives</div>"
        f"{notes}{probability_legend()}"
        f'<div class="hfllm-compare-lanes" style="display:flex;gap:8px;align-items:flex-start">{columns}</div></div>'
    )
