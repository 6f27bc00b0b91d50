"""The look-inside results and how they show: tokens coloured by probability, a logit-lens heatmap.

The HTML uses only inline styles and ``title`` attributes (no script, no stylesheet), so it
survives JupyterLab's sanitizer in a saved notebook reopened without a kernel, and renders in
Colab. All model text is escaped. Also here: how a token reads, split UTF-8 characters included.
"""

from __future__ import annotations

import html
import itertools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..core.tokens import ExplainedToken, split_characters

if TYPE_CHECKING:
    from .explain import Explanation
    from .logit_lens import LogitLens


# ColorBrewer RdYlBu end and middle: orange (unlikely), pale yellow, blue (likely). Readable
# with dark text, and distinguishable with the common colour-vision deficiencies.
_STOPS = ((0.0, (252, 141, 89)), (0.5, (255, 255, 191)), (1.0, (145, 191, 219)))
_MONO = "font-family:monospace"  # not var(--jp-…): the sanitizer of a reopened notebook drops it
_TEXT_STYLE = f"white-space:pre-wrap;{_MONO};line-height:1.9;color:#111"
_NO_COLOUR = "#ffffff"
_LENS_CELL_CHARS = 8  # longer top tokens are cut in the heatmap (the title has them whole)


# ----------------------------------------------------------------------------- colours and words


def probability_colour(probability: float | None) -> str:
    """Background colour for a probability: orange (unlikely) through yellow to blue (likely)."""
    if probability is None:
        return _NO_COLOUR
    p = min(max(float(probability), 0.0), 1.0)
    for (low, start), (high, end) in itertools.pairwise(_STOPS):
        if p <= high:
            t = (p - low) / (high - low)
            rgb = (round(a + (b - a) * t) for a, b in zip(start, end, strict=True))
            return "#" + "".join(f"{channel:02x}" for channel in rgb)
    return _NO_COLOUR  # unreachable: p ≤ 1


def percent(probability: float) -> str:
    """42.1%, 0.00312%: three significant digits, however small."""
    return f"{100 * probability:.3g}%"


def quoted(text: str) -> str:
    """A token between quotes with its line breaks and tabs visible."""
    return "'" + text.replace("\n", "\\n").replace("\t", "\\t") + "'"


def token_title(token: ExplainedToken, joined: str | None = None) -> str:
    """The hover text of one token: probability, entropy, what sampling saw, the alternatives."""
    lines = [quoted(token.text) + (" (prompt)" if token.is_prompt else "")]
    if token.probability is None and token.from_server:
        lines.append("the server reports no probability for this prompt token")
    elif token.probability is None:
        lines.append("the first token: nothing before it to predict it from")
    elif token.from_server:
        bound = (
            ""
            if token.entropy is None
            else f" · entropy ≥ {token.entropy:.2f} nats (the server lists only its top tokens)"
        )
        lines.append(f"P = {percent(token.probability)}{bound}")
    else:
        lines.append(f"P = {percent(token.probability)} · entropy {token.entropy:.2f} nats")
    if token.sampled_probability is not None:
        lines.append(
            f"P after temperature / top-k / top-p (what sampling drew from) = {percent(token.sampled_probability)}"
        )
    if joined is not None:
        lines.append(f"bytes of {quoted(joined)}, a character split over several tokens")
    if token.alternatives:
        lines.append("most likely here:")
        lines += [f"  {quoted(text)}  {percent(p)}" for text, p in token.alternatives]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- explanation


def render_tokens_html(tokens: Sequence[ExplainedToken]) -> str:
    """Coloured ``<span>`` elements, one per token, with the hover text in ``title`` (for the panel too)."""
    spans = []
    for token, joined in zip(tokens, split_characters(tokens), strict=True):
        kind = "hfllm-prompt-token" if token.is_prompt else "hfllm-generated-token"
        weight = "" if token.is_prompt else "font-weight:600;"
        edge = "border-bottom:2px dotted #888;" if token.is_prompt else ""
        style = f"background-color:{probability_colour(token.probability)};{weight}{edge}border-radius:3px"
        spans.append(
            f'<span class="hfllm-token {kind}" style="{style}" '
            f'title="{html.escape(token_title(token, joined))}">{html.escape(_visible(token.text))}</span>'
        )
    return "".join(spans)


def _visible(text: str) -> str:
    # A line break alone would be an empty, unhoverable span: mark it, then break the line.
    return text.replace("\n", "↵\n")


def probability_legend() -> str:
    swatches = "".join(
        f'<span style="background-color:{probability_colour(p)};padding:0 6px;{_MONO}">{percent(p)}</span>'
        for p in (0.01, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0)
    )
    return f'<div style="margin:4px 0;font-size:12px">probability of each token, given all before it: {swatches}</div>'


def describe_settings(settings: dict[str, Any]) -> str:
    if not settings.get("do_sample"):
        return "greedy (each new token is the most likely one)"
    shown = ", ".join(f"{name}={value}" for name, value in settings.items() if name != "do_sample")
    return "sampled" + (f" ({shown})" if shown else "")


def _table(tokens: Sequence[ExplainedToken]) -> str:
    rows = []
    for position, token in enumerate(tokens):
        chance = "–" if token.probability is None else percent(token.probability)
        entropy = "–" if token.entropy is None else ("≥ " if token.from_server else "") + f"{token.entropy:.2f}"
        others = ", ".join(f"{quoted(text)} {percent(p)}" for text, p in token.alternatives)
        cells = (str(position), quoted(token.text), "prompt" if token.is_prompt else "new", chance, entropy, others)
        rows.append("<tr>" + "".join(f'<td style="padding:0 8px">{html.escape(c)}</td>' for c in cells) + "</tr>")
    head = "".join(f"<th>{name}</th>" for name in ("#", "token", "", "P", "entropy (nats)", "most likely here"))
    return f'<table style="{_MONO};font-size:12px"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def render_explanation(explanation: Explanation) -> str:
    """The whole view: how the text was chosen, a legend, the coloured text, and a table to open."""
    served = any(token.from_server for token in explanation.tokens)
    note = "; numbers from the server's top-k log-probabilities: entropy is a lower bound over them" if served else ""
    return (
        '<div class="hfllm-explain">'
        f'<div style="font-size:12px;color:#555">{html.escape(describe_settings(explanation.settings) + note)}; '
        "hover over a token for its alternatives and entropy; dotted underline = prompt</div>"
        f"{probability_legend()}"
        f'<div class="hfllm-explain-text" style="{_TEXT_STYLE}">{render_tokens_html(explanation.tokens)}</div>'
        "<details><summary>every token in a table</summary>"
        f"{_table(explanation.tokens)}</details></div>"
    )


# ----------------------------------------------------------------------------- logit lens


def _cell(text: str) -> str:
    return text if len(text) <= _LENS_CELL_CHARS else text[: _LENS_CELL_CHARS - 1] + "…"


def render_logit_lens(lens: LogitLens) -> str:
    """A table: one row per layer, one column per prompt token, the top guess written in each cell."""
    header = "".join(
        f'<th style="padding:2px 4px" title="{html.escape(quoted(text))}">{html.escape(_cell(quoted(text)))}</th>'
        for text in lens.prompt_tokens
    )
    final = lens.top_ids[-1].tolist()
    rows = []
    for layer, name in enumerate(lens.layer_names):
        cells = []
        for position, (token, token_id) in enumerate(
            zip(lens.top_tokens[layer], lens.top_ids[layer].tolist(), strict=True)
        ):
            p = float(lens.probabilities[layer, position])
            after = quoted(lens.prompt_tokens[position])
            title = f"{name}, after {after}: {quoted(token)} {percent(p)}"
            weight = "font-weight:700;" if token_id == final[position] else ""  # already the final answer
            cells.append(
                f'<td class="hfllm-lens-cell" style="background-color:{probability_colour(p)};{weight}'
                f'padding:2px 4px;border:1px solid #fff" title="{html.escape(title)}">'
                f"{html.escape(_cell(quoted(token)))}</td>"
            )
        rows.append(f'<tr><th style="text-align:right;padding:2px 6px">{html.escape(name)}</th>{"".join(cells)}</tr>')
    caption = (
        "Each cell: the most likely next token if the model stopped after that layer, having read up to the "
        "column's token; colour = its probability; bold = the same as the model's final answer."
    )
    return (
        '<div class="hfllm-lens" style="overflow-x:auto">'
        f'<div style="font-size:12px;color:#555">{html.escape(caption)}</div>'
        f'<table style="border-collapse:collapse;{_MONO};font-size:11px">'
        f"<thead><tr><th></th>{header}</tr></thead><tbody>{''.join(rows)}</tbody></table>{probability_colour_bar()}</div>"
    )


def probability_colour_bar() -> str:
    """A colour bar for ``probability_colour``: what a cell's colour means, without hovering."""
    stops = ",".join(f"{probability_colour(i / 10)} {10 * i}%" for i in range(11))
    return (
        '<div class="hfllm-legend" style="display:flex;align-items:center;gap:6px;font-size:11px;color:#555;'
        'margin-top:4px"><span>probability 0%</span>'
        f'<span style="display:inline-block;width:160px;height:10px;border:1px solid #999;'
        f'background:linear-gradient(to right,{stops})"></span><span>100%</span></div>'
    )
