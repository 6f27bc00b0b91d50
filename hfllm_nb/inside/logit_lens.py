"""The logit lens: every layer's hidden state read through the final norm and the LM head.

A plain function on the in-process model (``llm.logit_lens`` calls it); ``LogitLens`` holds the result,
``html`` draws it. Only each cell's best token is kept, a layer and a chunk at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ..core import validation
from ..core.tokens import token_text
from ..engines.local.explain import PROMPT_CHUNK
from ..errors import GenerationError
from .html import render_logit_lens

if TYPE_CHECKING:
    from ..llm import HuggingFaceLLM


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


def logit_lens(llm: HuggingFaceLLM, prompt: str) -> LogitLens:
    """Read every layer's hidden state through the final norm and the LM head (``llm.logit_lens``).

    >>> lens = llm.logit_lens("The capital of France is")   # doctest: +SKIP
    >>> lens.top_tokens[-1][-1]                             # the model's own next token
    """
    ids = prompt_ids(llm, prompt)
    probabilities, top_ids = llm.run(_lens_rows, ids)
    tokenizer = llm.tokenizer
    texts = {i: token_text(tokenizer, i)[0] for i in set(top_ids.flatten().tolist()) | set(ids)}
    names = ["embeddings", *(f"layer {i}" for i in range(1, len(probabilities)))]
    top_tokens = [[texts[i] for i in row] for row in top_ids.tolist()]
    return LogitLens([texts[i] for i in ids], names, top_ids, top_tokens, probabilities)


def _lens_rows(model: Any, tokenizer: Any, ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Each layer's top next token and its probability at each position: (layers + 1, positions) twice.

    Only the best of each cell is kept: the full-vocabulary logits of one layer and at most
    ``PROMPT_CHUNK`` positions exist at a time (all of them at once took ~6 MB per prompt token).
    """
    norm, head = final_norm(model), model.get_output_embeddings()
    normed: list[torch.Tensor] = []
    # The model's own last row is its final norm's output through the head. Whether the last hidden
    # state has that norm applied differs between transformers versions, so it is caught here.
    handle = norm.register_forward_hook(lambda _module, _args, output: normed.append(output))
    try:
        with torch.inference_mode():
            output = model(
                input_ids=torch.tensor([ids], device=model.device), output_hidden_states=True, use_cache=False,
                logits_to_keep=1,  # the full logits would be (positions, vocabulary): not needed here
            )  # fmt: skip
    finally:
        handle.remove()
    states = [*output.hidden_states[:-1], normed[-1]]
    del output
    normed.clear()
    values, indices = [], []
    with torch.inference_mode():
        for layer in range(len(states)):
            hidden, states[layer] = states[layer][0], None  # (positions, hidden); freed once read
            best_values, best_ids = [], []
            for start in range(0, len(ids), PROMPT_CHUNK):
                rows = hidden[start : start + PROMPT_CHUNK].to(head.weight.device)
                rows = head(rows if layer == len(states) - 1 else norm(rows))  # (chunk, vocabulary)
                best = torch.softmax(rows.float(), dim=-1).max(dim=-1)
                best_values.append(best.values.cpu())
                best_ids.append(best.indices.cpu())
            values.append(torch.cat(best_values))
            indices.append(torch.cat(best_ids))
    return torch.stack(values), torch.stack(indices)


def final_norm(model: Any) -> torch.nn.Module:
    """The normalization the model applies before its LM head, wherever the architecture keeps it."""
    base = model.get_decoder() if hasattr(model, "get_decoder") else model
    for name in ("norm", "ln_f", "final_layer_norm", "final_layernorm", "norm_f"):
        module = getattr(base, name, None)
        if isinstance(module, torch.nn.Module):
            return module
    raise GenerationError(
        f"The logit lens does not know where {type(model).__name__} keeps its final norm; "
        "it supports Llama-, GPT-2-, OPT- and Falcon-style models."
    )


def prompt_ids(llm: HuggingFaceLLM, prompt: Any) -> list[int]:
    """One prompt's ids, checked: a view generates nothing, so the prompt may fill the whole context."""
    if not isinstance(prompt, str):
        validation.check_prompt(prompt)  # a precise message for wrong types
        raise TypeError("Pass one prompt string; the look-inside views take one prompt at a time.")
    validation.check_prompt(prompt)
    ids = llm.tokenizer(prompt)["input_ids"]
    if not ids:
        raise ValueError("The prompt has no tokens; pass some text.")
    if len(ids) > llm.context_length:
        raise ValueError(
            f"The prompt is {len(ids)} tokens and the model reads at most {llm.context_length}; shorten it."
        )
    return ids
