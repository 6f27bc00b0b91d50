"""``AttentionView``: the static attention view of one layer, with a dropdown to pick another."""

from __future__ import annotations

from typing import TYPE_CHECKING

import ipywidgets as widgets

from ..inside.attention import check_index

if TYPE_CHECKING:
    from ..inside.attention import Attention


class AttentionView(widgets.VBox):
    """A layer selector above ``attention.html(layer)``; the HTML is the same a saved notebook keeps.

    >>> llm.attention("The capital of France is").show(layer=3)   # doctest: +SKIP
    """

    def __init__(self, attention: Attention, layer: int = 0) -> None:
        self.attention = attention
        layer = check_index("layer", layer, attention.num_layers)
        self.selector = widgets.Dropdown(
            options=[(f"layer {i}", i) for i in range(attention.num_layers)], value=layer, description="layer"
        )
        self.view = widgets.HTML(attention.html(layer))
        self.selector.observe(lambda change: setattr(self.view, "value", attention.html(change["new"])), "value")
        super().__init__([self.selector, self.view])
        self.add_class("hfllm-attention-view")

    @property
    def layer(self) -> int:
        return self.selector.value

    @layer.setter
    def layer(self, value: int) -> None:
        self.selector.value = check_index("layer", value, self.attention.num_layers)
