"""Attention weights: for every layer and head, how much each token attends to each earlier one.

Plain functions over the model and tokenizer, no widgets (``attention_view`` draws). The
weights come from transformers' own ``output_attentions=True``, which only the eager attention
implementation can give; the model is switched to eager for this one call and switched back.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ..core import validation
from ..core.tokens import token_text

if TYPE_CHECKING:
    from ..llm import HuggingFaceLLM

MAX_WEIGHT_BYTES = 2**30  # layers x heads x n x n float32 kept on the CPU; past this, shorten the prompt


@dataclass(frozen=True)
class Attention:
    """Every layer's attention over one prompt (``llm.attention(prompt)``); displays one layer.

    ``weights[l, h, i, j]`` is how much token i attends to token j in layer l, query head h
    (grouped-query models share key/value heads, but each query head has its own map). Each row
    sums to 1 over j ≤ i; the upper triangle (j > i, the future) is exactly 0 by the causal mask.

    >>> attention = llm.attention("The capital of France is")   # doctest: +SKIP
    >>> attention.head(0, 3)[-1]      # where ' is' looks in layer 0, head 3
    """

    tokens: list[str]
    token_ids: list[int]
    weights: torch.Tensor  # (layers, heads, n, n) float32 on the CPU
    key_value_heads: int

    @property
    def num_layers(self) -> int:
        return self.weights.shape[0]

    @property
    def num_heads(self) -> int:
        return self.weights.shape[1]

    def layer(self, i: int) -> torch.Tensor:
        """Layer ``i``'s maps, (heads, n, n); negative ``i`` counts from the last layer."""
        return self.weights[check_index("layer", i, self.num_layers)]

    def head(self, i: int, j: int) -> torch.Tensor:
        """The (n, n) map of layer ``i``, query head ``j``."""
        return self.layer(i)[check_index("head", j, self.num_heads)]

    def html(self, layer: int = 0) -> str:
        """One layer as static HTML (maps and hover text), for a saved notebook."""
        from .attention_html import render_attention

        return render_attention(self, check_index("layer", layer, self.num_layers))

    def show(self, layer: int = 0) -> Any:
        """A widget: the same view with a layer selector (needs ipywidgets and a kernel)."""
        from ..widgets.attention import AttentionView

        return AttentionView(self, layer)

    def __repr__(self) -> str:
        layers, heads, n, _ = tuple(self.weights.shape)
        text = "".join(self.tokens)
        text = text if len(text) <= 60 else text[:57] + "..."
        return f"Attention({layers} layers x {heads} heads over {n} tokens: {text!r})"

    def _repr_html_(self) -> str:
        return self.html(0)


def check_index(name: str, value: Any, count: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, not {type(value).__name__} ({value!r}).")
    if not -count <= value < count:
        raise ValueError(
            f"{name} {value} does not exist: there are {count} (0 to {count - 1}, or negative from the end)."
        )
    return int(value) % count


def attention(llm: HuggingFaceLLM, prompt: str) -> Attention:
    """Run ``prompt`` once with eager attention and keep every layer's weights (``llm.attention``)."""
    if not isinstance(prompt, str):
        validation.check_prompt(prompt)
        raise TypeError("Pass one prompt string; the attention view takes one prompt at a time.")
    validation.check_prompt(prompt)
    ids = llm.tokenizer(prompt)["input_ids"]
    if not ids:
        raise ValueError(f"The prompt ({prompt!r}) has no tokens: the tokenizer drops all of it.")
    if len(ids) > llm.context_length:
        raise ValueError(f"The prompt has {len(ids)} tokens, more than the model's context of {llm.context_length}.")
    weights, kv_heads = llm.run(attention_weights, ids)
    return Attention([token_text(llm.tokenizer, i)[0] for i in ids], list(ids), weights, kv_heads)


def attention_weights(model: Any, tokenizer: Any, ids: list[int]) -> tuple[torch.Tensor, int]:
    """(layers, heads, n, n) float32 CPU weights for ``ids``, and the number of key/value heads.

    Runs on the model's thread (``llm.run``). The attention implementation is eager for this
    forward pass only: every config the model holds gets its own setting back afterwards.
    """
    config = model.config.get_text_config()
    layers, heads = config.num_hidden_layers, config.num_attention_heads
    size = layers * heads * len(ids) ** 2 * 4
    if size > MAX_WEIGHT_BYTES:
        longest = int((MAX_WEIGHT_BYTES / (layers * heads * 4)) ** 0.5)
        raise ValueError(
            f"The attention of {len(ids)} tokens is {layers} layers x {heads} heads x {len(ids)}² floats "
            f"= {size / 2**30:.1f} GiB; pass a prompt of at most {longest} tokens."
        )
    configs = {id(c): (c, c._attn_implementation_internal) for c in _configs(model)}
    device = model.get_input_embeddings().weight.device
    try:
        model.set_attn_implementation("eager")
        with torch.inference_mode():
            output = model(input_ids=torch.tensor([ids], device=device), output_attentions=True, use_cache=False)
        weights = torch.stack([layer[0].float().cpu() for layer in output.attentions])  # (layers, heads, n, n)
    finally:
        for c, implementation in configs.values():
            c._attn_implementation_internal = implementation  # exactly as before, not re-derived
    return weights, getattr(config, "num_key_value_heads", None) or heads


def _configs(model: Any) -> list[Any]:
    """The model's config, its sub-configs and every submodule's config: all that names an attention."""
    found, todo = [], [model.config, *(getattr(m, "config", None) for m in model.modules())]
    while todo:
        c = todo.pop()
        if c is None or not hasattr(c, "_attn_implementation_internal") or any(c is f for f in found):
            continue
        found.append(c)
        todo += [getattr(c, key, None) for key in getattr(c, "sub_configs", {})]
    return found
