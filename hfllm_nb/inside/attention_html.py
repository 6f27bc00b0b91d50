"""How ``Attention`` shows: one layer's heads as small n x n maps, and where a hovered token looks.

Static HTML, no script: each map is an inline PNG (a square of pixels per weight), so even long
prompts stay light; hovering or clicking a token shows its row as colour over the text and marks
that row on every map, through a scoped ``<style>`` block and CSS sibling selectors. Up to 20
tokens, each map carries its tokens down the side (queries) and along the bottom (keys). A saved
notebook reopened untrusted drops the ``<style>`` (JupyterLab's sanitizer): the maps and the
tokens' hover titles remain. ``attention_widget.AttentionView`` adds a layer selector.
"""

from __future__ import annotations

import base64
import html
import itertools
import struct
import zlib
from typing import TYPE_CHECKING

import torch

from .html import percent, quoted

if TYPE_CHECKING:
    from .attention import Attention

MAX_VIEW_TOKENS = 128  # past this the view draws the last 128 tokens (the object keeps them all)
_MAP_PX = 160  # a map's drawn size, about; cells are whole pixels from 1 to 24
_MASKED = (0, 0, 0, 0)  # the future (upper triangle): transparent over the grey backdrop
_BLUE = (8, 69, 148)  # ColorBrewer Blues, darkest
_RGB = ",".join(map(str, _BLUE))
_TEXT = "font-family:monospace;line-height:1.9;white-space:pre-wrap"
_MONO_FONT = "font-family:monospace"
_LABEL_MIN_CELL = 8  # px per token from which the maps carry token labels (20 tokens or fewer)
_ids = itertools.count()


def _colour(weight: float) -> tuple[int, int, int, int]:
    """White (0) to dark blue (1) on a square-root scale, so weights of a few percent still show."""
    t = max(0.0, min(1.0, weight)) ** 0.5
    return (*(round(255 + (c - 255) * t) for c in _BLUE), 255)


def png(rows: list[list[tuple[int, int, int, int]]]) -> bytes:
    """An RGBA PNG of these pixels. A dozen lines of the PNG spec beat a Pillow dependency."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    height, width = len(rows), len(rows[0])
    raw = b"".join(b"\x00" + bytes(channel for pixel in row for channel in pixel) for row in rows)  # filter 0
    header = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)  # 8-bit RGBA
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


def map_png(weights: torch.Tensor, cell: int = 1) -> bytes:
    """One head's (n, n) map as a PNG, ``cell`` pixels a side per weight: row i = query token i,
    column j = key token j. Drawn at full size, so no browser smooths it (a sanitized notebook
    drops ``image-rendering``)."""
    n = weights.shape[0]
    values = weights.tolist()
    rows = [[_colour(values[i][j]) if j <= i else _MASKED for j in range(n) for _ in range(cell)] for i in range(n)]
    return png([row for row in rows for _ in range(cell)])


def _top(row: list[float], tokens: list[str], first: int, k: int = 3) -> str:
    best = sorted(range(len(row)), key=lambda j: -row[j])[:k]
    return ", ".join(f"{quoted(tokens[j])} (#{first + j}) {percent(row[j])}" for j in best)


def render_attention(attention: Attention, layer: int) -> str:
    """One layer: its heads as maps, the text, and each token's row on hover or click."""
    first = max(0, len(attention.tokens) - MAX_VIEW_TOKENS)
    tokens = attention.tokens[first:]
    maps = attention.weights[layer, :, first:, first:]  # (heads, n, n)
    mean = maps.mean(0).tolist()  # what the text shows: the layer's heads averaged
    cell = min(24, max(1, _MAP_PX // len(tokens)))
    scope = f"hfllm-attn-{next(_ids)}"
    spans = "".join(_token(tokens, mean, i, first) for i in range(len(tokens)))
    rows = "".join(_row(tokens, mean, i, first) for i in range(len(tokens)))
    labels = tokens if cell >= _LABEL_MIN_CELL else None  # smaller cells: labels would be unreadable
    figures = "".join(_figure(maps[h], h, layer, cell, labels) for h in range(maps.shape[0]))
    hint = (
        "hover over or click a token above: its row (where it looks, averaged over this layer's heads) "
        "colours the text, and a red line marks it on every map"
    )
    return (
        f'<div class="hfllm-attention {scope}" style="font-size:12px">'
        f"<style>{_rules(scope, len(tokens), cell)}</style>"
        f'<div style="color:#555">{html.escape(_caption(attention, layer, first))}</div>'
        f'<div class="hfllm-attn-body" style="{_TEXT}">{spans}'
        f'<div class="hfllm-attn-rows" style="margin:6px 0;min-height:3.8em;white-space:normal">'
        f'<div class="hfllm-attn-hint" style="color:#888">{html.escape(hint)}</div>{rows}</div>'
        f'<div class="hfllm-attn-maps" style="white-space:normal">{figures}</div></div></div>'
    )


def _rules(scope: str, n: int, cell: int) -> str:
    """The stylesheet: hover/focus on token i shows row i and moves each map's marker to row i.

    Tokens, rows and maps are siblings, so ``token:hover ~ .maps .mark`` reaches them without script.
    """
    rules = [
        f".{scope} .hfllm-attn-token{{cursor:pointer;border-radius:3px}}",
        f".{scope} .hfllm-attn-token:hover,.{scope} .hfllm-attn-token:focus{{outline:2px solid #d62728}}",
        # Eleven shades for the text, at most 70% opaque so the token stays legible on the darkest.
        *(f".{scope} .c{level}{{background:rgba({_RGB},{0.07 * level:.2f})}}" for level in range(11)),
        _when(scope, ".hfllm-attn-token", ".hfllm-attn-hint", "display:none"),
    ]
    for i in range(n):
        rules.append(_when(scope, f".q{i}", f".r{i}", "display:block!important"))
        rules.append(_when(scope, f".q{i}", ".hfllm-attn-mark", f"display:block!important;top:{i * cell}px"))
    return "".join(rules)


def _when(scope: str, token: str, target: str, style: str) -> str:
    """``style`` on ``target`` while ``token`` is hovered or focused (clicked)."""
    return f".{scope} {token}:hover~* {target},.{scope} {token}:focus~* {target}{{{style}}}"


def _token(tokens: list[str], mean: list[list[float]], i: int, first: int) -> str:
    title = f"{quoted(tokens[i])} (#{first + i}) looks most at {_top(mean[i][: i + 1], tokens, first)}"
    return (
        f'<span class="hfllm-attn-token q{i}" tabindex="0" title="{html.escape(title)}">'
        f"{html.escape(_visible(tokens[i]))}</span>"
    )


def _row(tokens: list[str], mean: list[list[float]], i: int, first: int) -> str:
    """Token i's row over the text: each earlier token shaded by its weight, later ones grey."""
    keys = "".join(
        f'<span class="c{round(10 * min(1.0, mean[i][j]) ** 0.5)}">{html.escape(_visible(tokens[j]))}</span>'
        for j in range(i + 1)
    )
    later = html.escape("".join(map(_visible, tokens[i + 1 :])))
    head = f"{quoted(tokens[i])} (#{first + i}) looks at: {_top(mean[i][: i + 1], tokens, first)}"
    return (
        f'<div class="hfllm-attn-row r{i}" style="display:none"><div style="color:#555">{html.escape(head)}</div>'
        f'<div style="{_TEXT}">{keys}<span style="color:#bbb">{later}</span></div></div>'
    )


def _figure(weights: torch.Tensor, head: int, layer: int, cell: int, labels: list[str] | None = None) -> str:
    side = weights.shape[0] * cell
    data = base64.b64encode(map_png(weights, cell)).decode("ascii")
    drawn = (
        f'<div style="position:relative;width:{side}px;height:{side}px;background:#e6e6e6;border:1px solid #999">'
        f'<img class="hfllm-attn-map" src="data:image/png;base64,{data}" width="{side}" height="{side}" '
        f'alt="layer {layer}, head {head}" style="display:block">'
        '<div class="hfllm-attn-mark" style="display:none;position:absolute;left:0;right:0;'
        f'height:{max(cell, 2)}px;outline:2px solid #d62728"></div></div>'
    )
    if labels:
        drawn = _labelled(drawn, labels, cell)
    return (
        '<figure class="hfllm-attn-head" style="display:inline-block;margin:4px;text-align:center">'
        f'{drawn}<figcaption style="font-size:11px">head {head}</figcaption></figure>'
    )


def _labelled(drawn: str, labels: list[str], cell: int) -> str:
    """The map with its tokens: query tokens down the left (rows), key tokens under it (columns)."""
    size = min(11, cell - 1)
    box = f"font-size:{size}px;line-height:{cell}px;white-space:pre;overflow:hidden;{_MONO_FONT}"
    rows = "".join(
        f'<div class="hfllm-attn-label" style="height:{cell}px;{box}">{html.escape(_short(t))}</div>' for t in labels
    )
    columns = "".join(
        f'<div class="hfllm-attn-label" style="width:{cell}px;max-height:64px;writing-mode:vertical-rl;{box}">'
        f"{html.escape(_short(t))}</div>"
        for t in labels
    )
    return (
        '<div style="display:inline-grid;grid-template-columns:auto auto;align-items:start">'
        f'<div style="text-align:right;padding-right:3px;max-width:72px;margin-top:1px">{rows}</div>{drawn}'
        f'<div></div><div style="display:flex;margin-left:1px">{columns}</div></div>'
    )


def _short(token: str) -> str:
    """A label's text: line breaks visible, long tokens cut (the hover text has them whole)."""
    text = token.replace("\n", "↵").replace("\t", "⇥")
    return text if len(text) <= 10 else text[:9] + "…"


def _visible(text: str) -> str:
    return text.replace("\n", "↵\n")


def _caption(attention: Attention, layer: int, first: int) -> str:
    heads, kv = attention.num_heads, attention.key_value_heads
    shared = f", sharing {kv} key/value heads (grouped-query attention)" if kv != heads else ""
    text = (
        f"Layer {layer} of 0 to {attention.num_layers - 1}: {heads} query heads{shared}. In each map, row i is "
        "where token i looks, column j the token it looks at; darker = more weight (square-root scale). "
        "The grey upper triangle is the future, which the causal mask hides."
    )
    if first:
        text += (
            f" Showing the last {MAX_VIEW_TOKENS} of {len(attention.tokens)} tokens (attention.weights has all); "
            "their rows also look at the earlier tokens not drawn."
        )
    return text
