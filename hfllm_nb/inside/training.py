"""Fine-tune a fact into the model for a few steps, watch the loss and the probabilities move, then put it back.

Why: a learner sees what a gradient step does (the target rises, its neighbours move too) without
a training setup, and without leaving a changed model behind: ``fine_tune`` trains copies of the
weights and puts the originals back in ``finally`` (an error, Stop or Ctrl-C included), on the
model's thread (``llm.run_stream``, Stop checked between steps). ``snapshot``/``restore`` are also
usable on their own inside ``llm.run``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from .interventions import decoder_layers, target_id

if TYPE_CHECKING:
    from ..llm import HuggingFaceLLM

PARTS = ("mlp", "self_attn", "input_layernorm", "post_attention_layernorm")


def snapshot(model: Any, names: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
    """Copies of the named parameters (all when ``None``), to hand to ``restore``. Model thread."""
    params = dict(model.named_parameters())
    missing = [n for n in (names or []) if n not in params]
    if missing:
        raise ValueError(f"No parameters named {missing[:3]} in {type(model).__name__}.")
    with torch.no_grad():
        return {n: params[n].detach().clone() for n in (names if names is not None else params)}


def restore(model: Any, saved: Mapping[str, torch.Tensor]) -> None:
    """Copy ``saved`` (from ``snapshot``) back into the model's parameters, in place. Model thread."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in saved.items():
            params[name].copy_(value)


@contextlib.contextmanager
def restored(model: Any, names: Sequence[str] | None = None) -> Iterator[dict[str, torch.Tensor]]:
    """Inside the block change the named weights at will; on exit (error or not) they are as before."""
    saved = snapshot(model, names)
    try:
        yield saved
    finally:
        restore(model, saved)


def trainable(model: Any, layers: Sequence[int], parts: Sequence[str] = ("mlp",)) -> list[str]:
    """Names of the parameters of ``parts`` (e.g. "mlp", "self_attn") in decoder ``layers``."""
    count = len(decoder_layers(model))
    bad = [layer for layer in layers if not 0 <= layer < count]
    if bad or not layers:
        raise ValueError(f"layers must be layer numbers from 0 to {count - 1}, not {list(layers)!r}.")
    unknown = [p for p in parts if p not in PARTS]
    if unknown or not parts:
        raise ValueError(f"parts must be some of {PARTS}, not {list(parts)!r}.")
    prefix = _layers_prefix(model)
    return [
        name
        for name, _ in model.named_parameters()
        if any(name.startswith(f"{prefix}.{layer}.{part}.") for layer in layers for part in parts)
    ]


def _layers_prefix(model: Any) -> str:
    layers = decoder_layers(model)
    for name, module in model.named_modules():
        if module is layers:
            return name
    raise ValueError(f"Cannot find the decoder layers of {type(model).__name__} by name.")


@dataclass(frozen=True)
class FineTuneRun:
    """What ``fine_tune`` saw: the loss per step and each probe's probability per step (index 0 = before).

    ``samples`` are greedy continuations with the tuned weights, before they were restored.
    """

    text: str
    steps: int
    lr: float
    parameters: int
    losses: list[float] = field(default_factory=list)
    probes: dict[str, list[float]] = field(default_factory=dict)
    samples: dict[str, str] = field(default_factory=dict)
    stopped: bool = False

    def __repr__(self) -> str:
        moved = ", ".join(f"P({k}) {v[0]:.3f} → {v[-1]:.3f}" for k, v in self.probes.items())
        loss = f"loss {self.losses[0]:.2f} → {self.losses[-1]:.2f}" if self.losses else "no steps"
        return f"FineTuneRun({len(self.losses)} steps on {self.parameters:,} weights, {loss}; {moved})"


def fine_tune(
    llm: HuggingFaceLLM,
    text: str,
    *,
    steps: int = 8,
    lr: float = 3e-5,
    layers: Sequence[int] = (24, 25, 26, 27, 28, 29),
    parts: Sequence[str] = ("mlp",),
    probes: Mapping[str, str] | Sequence[tuple[str, str]] = (),
    samples: Sequence[str] = (),
    on_step: Callable[[int, float, dict[str, float]], None] | None = None,
) -> FineTuneRun:
    """Train ``parts`` of ``layers`` on ``text`` with AdamW for ``steps`` steps, then restore the weights.

    ``probes``: (prompt, one-token target) pairs whose probability is measured before and after each
    step. ``on_step(step, loss, probes)`` is called on your thread as each step finishes.

    >>> run = fine_tune(llm, "The capital of France is London.",                 # doctest: +SKIP
    ...                 probes=[("The capital of France is", " London")])
    >>> run.losses
    """
    if getattr(llm, "quantized", False):
        raise ValueError("fine_tune trains float weights; load the model without quantization_config to fine-tune it.")
    if not isinstance(text, str) or len(llm.tokenizer(text)["input_ids"]) < 2:
        raise ValueError(f"text must be a string of at least two tokens, not {text!r}.")
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= 1000:
        raise ValueError(f"steps must be an int from 1 to 1000, not {steps!r}.")
    if not isinstance(lr, (int, float)) or not 0 < lr < 1:
        raise ValueError(f"lr must be a learning rate between 0 and 1, e.g. 3e-5, not {lr!r}.")
    pairs = list(probes.items()) if isinstance(probes, Mapping) else [tuple(p) for p in probes]
    probe_ids = [(prompt, list(llm.tokenizer(prompt)["input_ids"]), target_id(llm.tokenizer, t)) for prompt, t in pairs]
    names = {f"{prompt!s} →{llm.tokenizer.decode([tid])}": (ids, tid) for prompt, ids, tid in probe_ids}
    ids = list(llm.tokenizer(text)["input_ids"])
    sample_ids = {s: list(llm.tokenizer(s)["input_ids"]) for s in samples}
    layers, parts = list(layers), list(parts)
    run = FineTuneRun(text, steps, float(lr), 0)

    def job(model: Any, tokenizer: Any, emit: Any, stop: Any) -> None:
        train_steps(model, ids, names, sample_ids, steps, float(lr), layers, parts, emit, stop)

    for kind, *values in llm.run_stream(job):
        if kind == "size":
            object.__setattr__(run, "parameters", values[0])
        elif kind == "step":
            step, loss, probs = values
            if step > 0:
                run.losses.append(loss)
            for name, p in probs.items():
                run.probes.setdefault(name, []).append(p)
            if on_step is not None:
                on_step(step, loss, probs)
        elif kind == "sample":
            run.samples[values[0]] = tokenizer_text(llm, values[1])
    object.__setattr__(run, "stopped", len(run.losses) < steps)
    return run


def tokenizer_text(llm: HuggingFaceLLM, ids: list[int]) -> str:
    return llm.tokenizer.decode(ids, skip_special_tokens=True)


def train_steps(
    model: Any,
    ids: list[int],
    probes: Mapping[str, tuple[list[int], int]],
    samples: Mapping[str, list[int]],
    steps: int,
    lr: float,
    layers: Sequence[int],
    parts: Sequence[str],
    emit: Callable[[Any], None],
    stop: Any,
) -> None:
    """Model thread: the training loop of ``fine_tune``; every weight, flag and mode is back as before on exit.

    Training runs on float32 copies of the trained layers: a bfloat16 weight of about 0.05 cannot
    hold a step of 3e-5 (its spacing there is 2e-4), so the step would round away. Those layers cast
    their input up and their output back to the model's dtype, so the rest stays as loaded (and
    memory as small as Binder needs). The original tensors are kept aside untouched and put back
    at the end: restoring is exact and costs no copy.
    """
    names = trainable(model, layers, parts)
    params = dict(model.named_parameters())
    flags = {n: p.requires_grad for n, p in params.items()}
    was_training = model.training
    originals = {n: p.data for n, p in params.items()}
    device = model.get_input_embeddings().weight.device
    batch = torch.tensor([ids], device=device)
    modules = decoder_layers(model)
    handles = []
    try:
        for n, p in params.items():
            p.requires_grad_(n in names)
        for layer in sorted(set(layers)):
            for p in modules[layer].parameters():
                dtype = p.dtype
                p.data = p.data.to(torch.float32, copy=True)  # a copy even when already float32
            if dtype != torch.float32:
                handles.append(modules[layer].register_forward_pre_hook(_to_float32, with_kwargs=True))
                handles.append(modules[layer].register_forward_hook(_cast_back(dtype)))
        emit(("size", sum(params[n].numel() for n in names)))
        emit(("step", 0, float("nan"), _probe(model, probes, device)))
        # AdamW with no weight decay: a few steps on one sentence, the decay would only blur the lesson.
        optimizer = torch.optim.AdamW([params[n] for n in names], lr=lr, weight_decay=0.0)
        for step in range(1, steps + 1):
            if stop.is_set():
                return
            model.train()
            loss = model(input_ids=batch, labels=batch, use_cache=False).loss  # mean NLL of every next token
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            model.eval()
            emit(("step", step, float(loss.detach()), _probe(model, probes, device)))
        for prompt, prompt_ids in samples.items():
            emit(("sample", prompt, _greedy(model, prompt_ids, device)))
    finally:
        for handle in handles:
            handle.remove()
        for n, p in params.items():
            p.grad = None
            p.data = originals[n]
            p.requires_grad_(flags[n])
        model.train(was_training)


def _to_float32(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    up = lambda x: x.float() if isinstance(x, torch.Tensor) and x.is_floating_point() else x  # noqa: E731
    kwargs = {k: tuple(map(up, v)) if isinstance(v, tuple) else up(v) for k, v in kwargs.items()}
    return tuple(map(up, args)), kwargs


def _cast_back(dtype: torch.dtype) -> Callable[..., Any]:
    def hook(module: Any, args: Any, output: Any) -> Any:
        return output.to(dtype) if isinstance(output, torch.Tensor) else (output[0].to(dtype), *output[1:])

    return hook


def _probe(model: Any, probes: Mapping[str, tuple[list[int], int]], device: torch.device) -> dict[str, float]:
    with torch.inference_mode():
        rows = {
            name: model(input_ids=torch.tensor([ids], device=device)).logits[0, -1] for name, (ids, _) in probes.items()
        }
        return {name: float(torch.softmax(rows[name].float(), -1)[tid]) for name, (_, tid) in probes.items()}


def _greedy(model: Any, ids: list[int], device: torch.device, new: int = 8) -> list[int]:
    with torch.inference_mode():
        out = model.generate(torch.tensor([ids], device=device), max_new_tokens=new, do_sample=False)
    return out[0, len(ids) :].tolist()
