"""Weight-only quantization that runs fast on a CPU, applied to a model after it loads.

- 8-bit: every linear layer becomes an ``Int8Linear`` (int8 weights, one scale per output
  row) that calls torch's own int8 kernel, ``torch._weight_int8pack_mm``, with bfloat16
  activations. torchao's ``Int8WeightOnlyConfig`` stores the same numbers but, outside
  ``torch.compile``, dequantizes the whole weight on every call; this layer is the eager glue
  that library leaves out.
- 4-bit: torchao's CPU int4 layout (``PrototypeInt4WeightOnlyConfig``, tinygemm kernel).
- The output layer (LM head) is int8 in both, and a tied input embedding reads its rows from
  the same int8 matrix (``Int8Embedding``), so the tie costs no second copy.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

logger = logging.getLogger("hfllm_nb")

# Rows quantized at a time: bounds the float32 scratch copy for big matrices (LM heads).
_CHUNK_ROWS = 8192
# torchao's CPU int4 kernel packs output rows in tiles of 16.
_INT4_ROW_TILE = 16
# torch's AVX-512 int8 kernel reads inputs 16 at a time: other widths crash or give wrong sums
# (torch 2.13; its AVX2 kernel handles any width).
_INT8_IN_MULTIPLE = 16


def _quantize_rows_int8(weight: torch.Tensor, scale_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8: ``weight ≈ q * scale[:, None]``, with |q| ≤ 127."""
    rows = weight.shape[0]
    q = torch.empty(weight.shape, dtype=torch.int8, device=weight.device)
    scale = torch.empty(rows, dtype=scale_dtype, device=weight.device)
    for start in range(0, rows, _CHUNK_ROWS):
        block = weight[start : start + _CHUNK_ROWS].detach().float()
        # Round the scale to its stored dtype first, so dequantizing uses exactly the scale we divided by.
        s = (block.abs().amax(dim=1) / 127).clamp(min=torch.finfo(torch.float32).tiny).to(scale_dtype)
        scale[start : start + _CHUNK_ROWS] = s
        q[start : start + _CHUNK_ROWS] = torch.round(block / s.float()[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale


class Int8Linear(nn.Module):
    """``y = x @ (weight * scale).T + bias`` with int8 ``weight`` [out, in] and one scale per row.

    Args:
        weight: int8, [out_features, in_features].
        scale: [out_features], in the compute dtype (bfloat16: the kernel's fast case).
        bias: optional, [out_features].

    >>> layer = Int8Linear.from_float(torch.randn(8, 32))
    >>> layer(torch.randn(2, 32)).shape
    torch.Size([2, 8])
    """

    def __init__(self, weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.register_buffer("weight", weight)
        self.register_buffer("scale", scale)
        self.register_buffer("bias", None if bias is None else bias.detach().to(scale.dtype))

    @classmethod
    def from_float(
        cls, weight: torch.Tensor, bias: torch.Tensor | None = None, compute_dtype: torch.dtype = torch.bfloat16
    ) -> Int8Linear:
        reason = int8_blockers(*weight.shape)
        if reason is not None:
            raise ValueError(f"Int8Linear cannot hold a {tuple(weight.shape)} matrix: {reason}.")
        q, scale = _quantize_rows_int8(weight, compute_dtype)
        return cls(q, scale, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # A decode step calls this ~200 times for one token: skip every no-op call into torch.
        out_dtype = x.dtype
        if out_dtype != self.scale.dtype:
            x = x.to(self.scale.dtype)
        flat = x.reshape(-1, self.in_features)  # [tokens, in]
        if not flat.is_contiguous():
            flat = flat.contiguous()
        y = torch._weight_int8pack_mm(flat, self.weight, self.scale)  # [tokens, out]
        if self.bias is not None:
            y = y + self.bias
        y = y.view(*x.shape[:-1], self.out_features)
        return y if out_dtype == y.dtype else y.to(out_dtype)

    def dequantized_weight(self) -> torch.Tensor:
        return self.weight.to(self.scale.dtype) * self.scale[:, None]

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, int8"


class Int8Embedding(nn.Module):
    """Embedding lookups from an ``Int8Linear``'s matrix: row ``i`` is ``weight[i] * scale[i]``.

    Shares the tensors (not copies) with the LM head it is tied to.
    """

    def __init__(self, head: Int8Linear, out_dtype: torch.dtype, padding_idx: int | None = None) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim = head.weight.shape
        self.padding_idx = padding_idx
        self.out_dtype = out_dtype
        self.register_buffer("weight", head.weight)
        self.register_buffer("scale", head.scale)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = self.weight[ids].to(self.scale.dtype) * self.scale[ids].unsqueeze(-1)
        return rows.to(self.out_dtype)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, int8 (shared with the LM head)"


# ----------------------------------------------------------------------------- finding layers


def linear_like(model: nn.Module) -> Iterator[tuple[str, nn.Module, torch.Tensor]]:
    """``(name, module, weight as [out, in])`` for every nn.Linear and GPT-2-style Conv1D."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            yield name, module, module.weight
        elif type(module).__name__ == "Conv1D" and hasattr(module, "nf"):  # transformers' GPT-2 layer: x @ W
            yield name, module, module.weight.t()


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def _tied_embedding(model: nn.Module, head: nn.Module) -> nn.Embedding | None:
    """The input embedding that shares its matrix with ``head``, if the model ties them."""
    get_input = getattr(model, "get_input_embeddings", None)
    embedding = get_input() if get_input is not None else None
    weight = getattr(head, "weight", None)
    if isinstance(embedding, nn.Embedding) and weight is not None and embedding.weight is weight:
        return embedding
    return None


# ----------------------------------------------------------------------------- applying


def _head(model: nn.Module) -> nn.Module | None:
    get_output = getattr(model, "get_output_embeddings", None)
    return get_output() if get_output is not None else None


def int8_blockers(out_features: int, in_features: int) -> str | None:
    """Why ``Int8Linear`` cannot hold a [out, in] matrix, or None if it can."""
    if in_features % _INT8_IN_MULTIPLE:
        return f"in_features {in_features} is not a multiple of {_INT8_IN_MULTIPLE}"
    return None


def quantize_int8(model: nn.Module, compute_dtype: torch.dtype) -> dict[str, str]:
    """Swap every linear layer but the output layer for ``Int8Linear``, in place.

    Returns, for each layer the kernel cannot take, the reason.
    """
    layers, skipped = _layers_below_head(model, int8_blockers)
    for name, module, weight in layers:
        _set_module(model, name, Int8Linear.from_float(weight, module.bias, compute_dtype))
    return skipped


def _layers_below_head(
    model: nn.Module, blockers: Callable[[int, int], str | None]
) -> tuple[list[tuple[str, nn.Module, torch.Tensor]], dict[str, str]]:
    """The linear layers other than the output layer that a format can hold, and ``{name: reason}``
    for those it cannot (``blockers(out_features, in_features)`` gives the reason or None)."""
    head = _head(model)
    layers, skipped = [], {}
    for name, module, weight in list(linear_like(model)):
        if module is head:
            continue
        reason = blockers(*weight.shape)
        if reason is None:
            layers.append((name, module, weight))
        else:
            skipped[name] = reason
    return layers, skipped


def int4_blockers(out_features: int, in_features: int, group_size: int) -> str | None:
    """Why torchao's CPU int4 layout cannot hold a [out, in] matrix, or None if it can."""
    if in_features % group_size:
        return f"in_features {in_features} is not a multiple of group_size {group_size}"
    if out_features % _INT4_ROW_TILE:
        return f"out_features {out_features} is not a multiple of {_INT4_ROW_TILE}"
    return None


def quantize_int4_torchao(model: nn.Module, group_size: int) -> dict[str, str]:
    """torchao int4 for every linear layer but the output layer, in place.

    Returns, for each layer the layout cannot hold, the reason.
    """
    from torchao.prototype.quantization.int4.inference_workflow import PrototypeInt4WeightOnlyConfig
    from torchao.quantization import quantize_

    layers, skipped = _layers_below_head(model, lambda out, in_: int4_blockers(out, in_, group_size))
    for name, module, weight in layers:
        if not isinstance(module, nn.Linear):  # Conv1D: torchao quantizes nn.Linear only
            module = _as_linear(weight, module.bias)
            _set_module(model, name, module)
        # The tinygemm kernel takes bfloat16 weights and activations.
        module.to(torch.bfloat16)
        quantize_(module, PrototypeInt4WeightOnlyConfig(group_size=group_size))
    return skipped


def _as_linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    linear = nn.Linear(
        weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device, dtype=weight.dtype
    )
    with torch.no_grad():
        linear.weight.copy_(weight)
        if bias is not None:
            linear.bias.copy_(bias)
    return linear


def quantize_head_int8(model: nn.Module, compute_dtype: torch.dtype) -> dict[str, str]:
    """The output layer to ``Int8Linear``; a tied input embedding then reads the same int8 rows.

    Returns ``{name: reason}`` if the kernel cannot take the head.
    """
    head = _head(model)
    if not (isinstance(head, nn.Linear) or type(head).__name__ == "Conv1D"):
        return {}
    name = next(n for n, m in model.named_modules() if m is head)
    weight = head.weight if isinstance(head, nn.Linear) else head.weight.t()
    reason = int8_blockers(*weight.shape)
    if reason is not None:
        return {name: reason}
    embedding = _tied_embedding(model, head)
    layer = Int8Linear.from_float(weight, head.bias, compute_dtype)
    _set_module(model, name, layer)
    if embedding is not None:
        model.set_input_embeddings(Int8Embedding(layer, embedding.weight.dtype, embedding.padding_idx))
    return {}


def unquantized_linears(model: nn.Module) -> list[str]:
    """Names of linear layers still holding plain float weights."""
    return [
        name
        for name, _, weight in linear_like(model)
        if type(weight) in (torch.Tensor, nn.Parameter) and weight.dtype.is_floating_point
    ]


def describe(names: list[str], limit: int = 6) -> str:
    """``a, b, c and 9 more``: a short list for a log line."""
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def tensor_leaves(tensor: Any) -> Iterator[torch.Tensor]:
    """The plain tensors that hold a (possibly subclassed or bitsandbytes) tensor's bytes."""
    flatten = getattr(type(tensor), "__tensor_flatten__", None)
    if flatten is not None and type(tensor) not in (torch.Tensor, nn.Parameter):
        names, _ = tensor.__tensor_flatten__()
        for name in names:
            yield from tensor_leaves(getattr(tensor, name))
    elif isinstance(tensor, torch.Tensor):
        yield tensor
    # bitsandbytes keeps block scales beside the packed weight, outside the tensor itself.
    state = getattr(tensor, "quant_state", None)
    while state is not None:
        for name in ("absmax", "code", "offset"):
            part = getattr(state, name, None)
            if isinstance(part, torch.Tensor):
                yield part
        state = getattr(state, "state2", None)
    scb = getattr(tensor, "SCB", None)
    if isinstance(scb, torch.Tensor):
        yield scb
