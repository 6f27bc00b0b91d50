"""The look-inside results and how they show: tokens coloured by probability, a logit-lens heatmap.

The HTML uses only inline styles and ``title`` attributes (no script, no stylesheet), so it
survives JupyterLab's sanitizer in a saved notebook reopened without a kernel, and renders in
Colab. All model text is escaped. Also here: how a token reads, split UTF-8 characters included.
"""

from __future__ import annotations

import contextlib
import functools
import html
import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

# ColorBrewer RdYlBu end and middle: orange (unlikely), pale yellow, blue (likely). Readable
# with dark text, and distinguishable with the common colour-vision deficiencies.
_STOPS = ((0.0, (252, 141, 89)), (0.5, (255, 255, 191)), (1.0, (145, 191, 219)))
_MONO = "font-family:monospace"  # not var(--jp-…): the sanitizer of a reopened notebook drops it
_TEXT_STYLE = f"white-space:pre-wrap;{_MONO};line-height:1.9;color:#111"
_NO_COLOUR = "#ffffff"
_LENS_CELL_CHARS = 8  # longer top tokens are cut in the heatmap (the title has them whole)


# ----------------------------------------------------------------------------- results


@dataclass(frozen=True)
class ExplainedToken:
    """One token of an ``Explanation``, with what the model thought of it.

    ``probability`` and ``entropy`` (nats) describe the model's raw distribution for this
    position, before temperature, top-k or top-p; ``sampled_probability`` is the probability
    under the distribution sampling actually drew from (``None`` when greedy or for the prompt).
    ``partial_bytes`` is set when the token holds only part of a UTF-8 character; ``text``
    then shows those bytes as ``\\x`` escapes instead of "�". ``from_server``: the numbers come
    from a server's top-k log-probabilities (a remote engine), so ``entropy`` is a lower bound over
    the returned alternatives, and a prompt token may have no probability (``None``).
    """

    text: str
    token_id: int
    is_prompt: bool
    probability: float | None
    entropy: float | None
    alternatives: tuple[tuple[str, float], ...] = ()
    alternative_ids: tuple[int, ...] = ()
    sampled_probability: float | None = None
    partial_bytes: bytes | None = None
    from_server: bool = False


@dataclass(frozen=True)
class Explanation:
    """Prompt and continuation, token by token (``llm.explain(...)``); displays as coloured text."""

    tokens: list[ExplainedToken]
    text: str  # prompt + continuation, as generate() returns it
    settings: dict[str, Any] = field(default_factory=dict)  # how the continuation was chosen

    @property
    def generated(self) -> list[ExplainedToken]:
        return [token for token in self.tokens if not token.is_prompt]

    def __repr__(self) -> str:
        new, how = len(self.generated), _describe(self.settings)
        return f"Explanation({len(self.tokens) - new} prompt + {new} new tokens, {how}: {self.text!r})"

    def _repr_html_(self) -> str:
        return render_explanation(self)


@dataclass(frozen=True)
class LogitLens:
    """Each layer's next-token guess at each prompt position (``llm.logit_lens(prompt)``).

    Row 0 reads the embeddings, row i the output of block i; the last row is the model's own
    prediction. ``probabilities[i, j]`` is the probability layer i gives ``top_ids[i, j]``.
    """

    prompt_tokens: list[str]
    layer_names: list[str]
    top_ids: torch.Tensor  # (layers + 1, positions)
    top_tokens: list[list[str]]
    probabilities: torch.Tensor  # (layers + 1, positions), float32 on the CPU

    def __repr__(self) -> str:
        layers, positions = tuple(self.top_ids.shape)
        return f"LogitLens(embeddings + {layers - 1} layers x {positions} positions, last row {self.top_tokens[-1]!r})"

    def _repr_html_(self) -> str:
        return render_logit_lens(self)


# ----------------------------------------------------------------------------- readable tokens


@functools.cache
def _byte_decoder() -> dict[str, int]:
    # Byte-level BPE (GPT-2, Llama 3, SmolLM) writes each byte as one printable character.
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return {char: byte for byte, char in bytes_to_unicode().items()}


def _piece_bytes(piece: str) -> bytes | None:
    """The raw bytes behind a vocabulary entry, where the tokenizer's scheme tells them."""
    fallback = re.fullmatch(r"<0x([0-9A-Fa-f]{2})>", piece)  # SentencePiece byte fallback
    if fallback:
        return bytes([int(fallback[1], 16)])
    decoder = _byte_decoder()
    if piece and all(char in decoder for char in piece):
        return bytes(decoder[char] for char in piece)
    return None


def token_text(tokenizer: Any, token_id: int) -> tuple[str, bytes | None]:
    """A token as readable text, plus its bytes when it holds only part of a UTF-8 character.

    Such a token decodes to "�" on its own; here its bytes read as ``\\x`` escapes instead.

    >>> token_text(llm.tokenizer, 23274)   # the first two bytes of "日"   # doctest: +SKIP
    ('\\\\xe6\\\\x97', b'\\xe6\\x97')
    """
    text = tokenizer.decode([token_id])
    piece = tokenizer.convert_ids_to_tokens(token_id)
    if "\ufffd" in text and isinstance(piece, str):
        raw = _piece_bytes(piece)
        if raw is not None:
            try:
                return raw.decode("utf-8"), None
            except UnicodeDecodeError:
                return raw.decode("utf-8", errors="backslashreplace"), raw
    if isinstance(piece, str) and piece.startswith("▁") and not text.startswith(" "):
        text = " " + text  # SentencePiece drops a word's leading space when decoding one token
    return text, None


def split_characters(tokens: Sequence[ExplainedToken]) -> list[str | None]:
    """For each token that splits a character: the text it forms with its neighbours, else None."""
    joined: list[str | None] = [None] * len(tokens)
    start = 0
    while start < len(tokens):
        if tokens[start].partial_bytes is None:
            start += 1
            continue
        buffer, end = b"", start
        while end < len(tokens) and tokens[end].partial_bytes is not None:
            buffer += tokens[end].partial_bytes
            end += 1
            with contextlib.suppress(UnicodeDecodeError):
                joined[start:end] = [buffer.decode("utf-8")] * (end - start)
                break
        start = end if joined[start] is not None else start + 1
    return joined


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


def _legend() -> str:
    swatches = "".join(
        f'<span style="background-color:{probability_colour(p)};padding:0 6px;{_MONO}">{percent(p)}</span>'
        for p in (0.01, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0)
    )
    return f'<div style="margin:4px 0;font-size:12px">probability of each token, given all before it: {swatches}</div>'


def _describe(settings: dict[str, Any]) -> str:
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
        f'<div style="font-size:12px;color:#555">{html.escape(_describe(explanation.settings) + note)}; '
        "hover over a token for its alternatives and entropy; dotted underline = prompt</div>"
        f"{_legend()}"
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
        f"<thead><tr><th></th>{header}</tr></thead><tbody>{''.join(rows)}</tbody></table>{probability_legend()}</div>"
    )


def probability_legend() -> str:
    """A colour bar for ``probability_colour``: what a cell's colour means, without hovering."""
    stops = ",".join(f"{probability_colour(i / 10)} {10 * i}%" for i in range(11))
    return (
        '<div class="hfllm-legend" style="display:flex;align-items:center;gap:6px;font-size:11px;color:#555;'
        'margin-top:4px"><span>probability 0%</span>'
        f'<span style="display:inline-block;width:160px;height:10px;border:1px solid #999;'
        f'background:linear-gradient(to right,{stops})"></span><span>100%</span></div>'
    )
