"""Change the model for one forward pass and watch what moves: heads off, a sublayer skipped, RoPE off, a patch.

Why a library feature: a learner who switches a head off by hand has to find the right tensor,
hook it, and remember to unhook it; a forgotten hook silently changes every later cell. Here each
change is a small value (``HeadsOff``, ``SkipAttention``, ``SkipMLP``, ``RopeOff``, ``Patch``),
``intervene`` applies them as PyTorch hooks and removes them in ``finally`` (an error or a Stop
leaves the model as it was), and the functions below run on the model's thread through
``llm.run`` / ``llm.run_stream``, like every look-inside view. Llama-style decoders (the default
SmolLM2, Llama, Qwen, Mistral) are supported: ``model.model.layers[i].self_attn.o_proj`` and ``.mlp``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ..errors import GenerationError

if TYPE_CHECKING:
    from ..llm import HuggingFaceLLM


# ----------------------------------------------------------------------------- the changes


@dataclass(frozen=True)
class HeadsOff:
    """Zero query heads ``heads`` of layer ``layer`` where they enter ``o_proj`` (their output is dropped).

    Zeroing the input of ``o_proj`` is the cleanest cut: the head still computes its pattern, but
    nothing it writes reaches the residual stream. (Zeroing the weights would hit a shared KV head.)
    """

    layer: int
    heads: tuple[int, ...]

    def __init__(self, layer: int, heads: int | Sequence[int]) -> None:
        object.__setattr__(self, "layer", layer)
        object.__setattr__(self, "heads", (heads,) if isinstance(heads, int) else tuple(heads))


@dataclass(frozen=True)
class SkipAttention:
    """Layer ``layer``'s attention adds nothing to the residual stream (its output replaced by zeros)."""

    layer: int


@dataclass(frozen=True)
class SkipMLP:
    """Layer ``layer``'s MLP adds nothing to the residual stream."""

    layer: int


@dataclass(frozen=True)
class RopeOff:
    """No rotary position embedding: cos = 1, sin = 0, so q and k are not rotated (order only via the mask)."""


@dataclass(frozen=True, eq=False)  # a tensor field: compared by identity
class Patch:
    """Overwrite the residual stream after layer ``layer`` at ``position`` with ``value`` (a ``(hidden,)`` vector).

    Usually ``value`` comes from another prompt (``residual``): activation patching asks "does
    this one vector carry the fact?". Applied to passes that reach ``position`` (a prompt, not a
    single cached decode step).
    """

    layer: int
    position: int
    value: torch.Tensor


Change = HeadsOff | SkipAttention | SkipMLP | RopeOff | Patch


# ----------------------------------------------------------------------------- where things live


def decoder_layers(model: Any) -> Any:
    """The model's list of decoder layers (``model.model.layers`` for Llama-style models)."""
    base = model.get_decoder() if hasattr(model, "get_decoder") else getattr(model, "model", model)
    layers = getattr(base, "layers", None)
    if layers is None or not all(hasattr(layer, "self_attn") and hasattr(layer, "mlp") for layer in layers):
        raise GenerationError(
            f"Interventions support Llama-style decoders (layers with self_attn and mlp); "
            f"{type(model).__name__} keeps its layers elsewhere."
        )
    return layers


def head_dim(model: Any) -> int:
    """Width of one attention head: the config's ``head_dim`` or hidden size / heads."""
    config = model.config.get_text_config()
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def check_changes(model: Any, changes: Sequence[Change]) -> None:
    """Raise ``ValueError``/``TypeError`` naming a change that does not fit this model, before any hook."""
    config = model.config.get_text_config()
    layers, heads = config.num_hidden_layers, config.num_attention_heads
    for change in changes:
        if not isinstance(change, (HeadsOff, SkipAttention, SkipMLP, RopeOff, Patch)):
            raise TypeError(f"Not an intervention: {change!r}. Use HeadsOff, SkipAttention, SkipMLP, RopeOff or Patch.")
        layer = getattr(change, "layer", 0)
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < layers:
            raise ValueError(f"{change!r}: layer must be an int from 0 to {layers - 1}.")
        if isinstance(change, HeadsOff):
            bad = [h for h in change.heads if isinstance(h, bool) or not isinstance(h, int) or not 0 <= h < heads]
            if bad or not change.heads:
                raise ValueError(f"{change!r}: heads must be ints from 0 to {heads - 1}, at least one.")
        if isinstance(change, Patch) and tuple(change.value.shape) != (config.hidden_size,):
            raise ValueError(f"{change!r}: value must have shape ({config.hidden_size},), one residual vector.")


# ----------------------------------------------------------------------------- applying them


@contextlib.contextmanager
def intervene(model: Any, *changes: Change) -> Iterator[Any]:
    """Apply ``changes`` to ``model`` inside the ``with`` block; every hook is removed on exit, error or not.

    Call it on the model's thread (inside a function given to ``llm.run``):

    >>> def job(model, tokenizer):                                  # doctest: +SKIP
    ...     with intervene(model, HeadsOff(23, 4), RopeOff()):
    ...         return model(torch.tensor([[1, 2, 3]])).logits
    >>> llm.run(job)
    """
    check_changes(model, changes)
    layers, width = decoder_layers(model), head_dim(model)
    handles = []
    try:
        for change in changes:
            if isinstance(change, HeadsOff):
                o_proj = layers[change.layer].self_attn.o_proj
                handles.append(o_proj.register_forward_pre_hook(_heads_off(change, width)))
            elif isinstance(change, SkipAttention):
                handles.append(layers[change.layer].self_attn.register_forward_hook(_zero_output))
            elif isinstance(change, SkipMLP):
                handles.append(layers[change.layer].mlp.register_forward_hook(_zero_output))
            elif isinstance(change, RopeOff):
                handles.append(_rotary(model).register_forward_hook(_no_rotation))
            else:
                handles.append(layers[change.layer].register_forward_hook(_patch(change)))
        yield model
    finally:
        for handle in handles:
            handle.remove()


def _heads_off(change: HeadsOff, width: int) -> Any:
    def hook(module: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
        x = args[0].clone()  # (batch, positions, heads * head_dim): head h is columns h*d .. (h+1)*d
        for h in change.heads:
            x[..., h * width : (h + 1) * width] = 0
        return (x, *args[1:])

    return hook


def _zero_output(module: Any, args: Any, output: Any) -> Any:
    if isinstance(output, tuple):  # attention returns (output, weights)
        return (torch.zeros_like(output[0]), *output[1:])
    return torch.zeros_like(output)


def _rotary(model: Any) -> Any:
    base = model.get_decoder() if hasattr(model, "get_decoder") else model.model
    rotary = getattr(base, "rotary_emb", None)
    if rotary is None:
        raise GenerationError(f"{type(model).__name__} has no shared rotary embedding (model.model.rotary_emb).")
    return rotary


def _no_rotation(module: Any, args: Any, output: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    cos, sin = output  # rotating by angle 0 is the identity: q and k pass unchanged
    return torch.ones_like(cos), torch.zeros_like(sin)


def _patch(change: Patch) -> Any:
    def hook(module: Any, args: Any, output: Any) -> Any:
        hidden = output[0] if isinstance(output, tuple) else output  # (batch, positions, hidden)
        n = hidden.shape[1]
        if not -n <= change.position < n:
            return output  # a pass that does not reach this position (a cached decode step)
        hidden = hidden.clone()
        hidden[:, change.position] = change.value.to(hidden.device, hidden.dtype)
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    return hook


# ----------------------------------------------------------------------------- measurements


def _ids(llm: HuggingFaceLLM, prompt: str | Sequence[int]) -> list[int]:
    """The prompt's token ids; a list of ids passes as is (to run token orders no text spells)."""
    if isinstance(prompt, (list, tuple)) and prompt and all(isinstance(i, int) for i in prompt):
        return list(prompt)
    if not isinstance(prompt, str) or not prompt:
        raise TypeError(f"prompt must be a non-empty string or list of token ids, not {prompt!r}.")
    ids = llm.tokenizer(prompt)["input_ids"]
    if not ids:
        raise ValueError(f"The prompt {prompt!r} has no tokens.")
    return list(ids)


def target_id(tokenizer: Any, target: str | int) -> int:
    """The id of ``target``: a token id, or a string that is exactly one token (" Paris", with its space)."""
    if isinstance(target, int) and not isinstance(target, bool):
        return target
    if not isinstance(target, str):
        raise TypeError(f"target must be a token string or id, not {target!r}.")
    ids = tokenizer(target, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise ValueError(
            f"target {target!r} is {len(ids)} tokens ({ids}); pass one token, e.g. ' Paris' with its leading space."
        )
    return ids[0]


def forward_log_probs(model: Any, ids: Sequence[int], *changes: Change) -> torch.Tensor:
    """Model thread: log-probabilities (positions, vocabulary), float32 on the CPU, with ``changes`` applied."""
    device = model.get_input_embeddings().weight.device
    with torch.inference_mode(), intervene(model, *changes):
        logits = model(input_ids=torch.tensor([list(ids)], device=device), use_cache=False).logits[0]
    return torch.log_softmax(logits.float(), dim=-1).cpu()


def next_token_probs(llm: HuggingFaceLLM, prompt: str | Sequence[int], *changes: Change) -> torch.Tensor:
    """The next-token distribution after ``prompt`` with ``changes`` applied, ``(vocabulary,)`` float32.

    >>> p = next_token_probs(llm, "The capital of France is", HeadsOff(23, 4))   # doctest: +SKIP
    >>> float(p[llm.tokenizer(" Paris")["input_ids"][0]])
    """
    ids = _ids(llm, prompt)
    return llm.run(lambda model, tokenizer: forward_log_probs(model, ids, *changes)[-1].exp())


def probability(llm: HuggingFaceLLM, prompt: str | Sequence[int], target: str | int, *changes: Change) -> float:
    """P(``target`` | ``prompt``) with ``changes`` applied; ``target`` is one token (" Paris")."""
    return float(next_token_probs(llm, prompt, *changes)[target_id(llm.tokenizer, target)])


def loss(llm: HuggingFaceLLM, text: str, *changes: Change) -> float:
    """Mean negative log-likelihood (nats per predicted token) of ``text`` with ``changes``; perplexity = exp(loss)."""
    ids = _ids(llm, text)
    if len(ids) < 2:
        raise ValueError(f"{text!r} is one token: a loss needs at least two (one to predict from).")

    def job(model: Any, tokenizer: Any) -> float:
        log_probs = forward_log_probs(model, ids, *changes)[:-1]  # position i predicts token i + 1
        return float(-log_probs.gather(1, torch.tensor(ids[1:])[:, None]).mean())

    return llm.run(job)


def token_losses(llm: HuggingFaceLLM, text: str, *changes: Change) -> torch.Tensor:
    """Each predicted token's negative log-likelihood (nats), ``(tokens - 1,)``: for losses per stretch of text."""
    ids = _ids(llm, text)

    def job(model: Any, tokenizer: Any) -> torch.Tensor:
        return -forward_log_probs(model, ids, *changes)[:-1].gather(1, torch.tensor(ids[1:])[:, None])[:, 0]

    return llm.run(job)


def residual(llm: HuggingFaceLLM, prompt: str, layer: int, position: int = -1) -> Patch:
    """The residual stream after ``layer`` at ``position`` of ``prompt``, ready to patch into another prompt.

    >>> berlin = residual(llm, "The capital of Germany is", layer=12)             # doctest: +SKIP
    >>> probability(llm, "The capital of France is", " Berlin", berlin)
    """
    ids = _ids(llm, prompt)

    def job(model: Any, tokenizer: Any) -> torch.Tensor:
        check_changes(model, [Patch(layer, position, torch.zeros(model.config.get_text_config().hidden_size))])
        device = model.get_input_embeddings().weight.device
        with torch.inference_mode():
            states = model(input_ids=torch.tensor([ids], device=device), output_hidden_states=True).hidden_states
        return states[layer + 1][0, position].float().cpu()  # hidden_states[0] is the embeddings

    return Patch(layer, position, llm.run(job))


def generate_with(llm: HuggingFaceLLM, prompt: str, *changes: Change, max_new_tokens: int = 12) -> str:
    """Greedy continuation of ``prompt`` with ``changes`` applied at every step (Stop ends it early).

    A plain loop with the KV cache rather than ``generate``, so Stop is checked every token.
    """
    ids = _ids(llm, prompt)
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive int, not {max_new_tokens!r}.")
    eos = llm.tokenizer.eos_token_id

    def job(model: Any, tokenizer: Any, emit: Any, stop: Any) -> None:
        device = model.get_input_embeddings().weight.device
        new: list[int] = []
        with torch.inference_mode(), intervene(model, *changes):
            output = model(input_ids=torch.tensor([ids], device=device), use_cache=True)
            for _ in range(max_new_tokens):
                token = int(output.logits[0, -1].argmax())
                new.append(token)
                emit(token)
                if token == eos or stop.is_set():
                    break
                step = torch.tensor([[token]], device=device)
                output = model(input_ids=step, cache=output.cache, use_cache=True)  # transformers 5's name

    new = list(llm.run_stream(job))
    return prompt + llm.tokenizer.decode(new, skip_special_tokens=True)
