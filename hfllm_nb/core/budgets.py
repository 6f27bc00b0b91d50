"""Token budgets: how many new tokens each prompt may get, from max_length or max_new_tokens.

``max_length`` counts prompt + new tokens, as in transformers; ``max_new_tokens`` counts new
tokens only. In chat both bound the reply alone, on every surface (code, panel, CLI): the
chat template adds dozens of tokens the user never typed.
"""

from __future__ import annotations

from typing import Any

from . import validation


def plan(
    tokenizer: Any,
    prompt: Any,
    max_length: Any,
    max_new_tokens: Any,
    *,
    context_length: int,
    default_max_length: int,
    chat: bool = False,
) -> tuple[list[str], list[list[int]], list[int], str]:
    """Validate prompt and lengths; return prompts, their token ids, budgets, and the limit's name.

    >>> plan(tok, "Hello", None, 5, context_length=2048, default_max_length=20)[2:]   # doctest: +SKIP
    ([5], 'max_new_tokens=5')
    """
    prompts = validation.check_prompt(prompt)
    max_length = validation.check_length("max_length", max_length, limit=context_length)
    max_new_tokens = validation.check_length("max_new_tokens", max_new_tokens, limit=context_length)
    if max_length is not None and max_new_tokens is not None:
        raise ValueError(
            f"Pass max_length ({max_length}, prompt included) or max_new_tokens "
            f"({max_new_tokens}, generated only), not both."
        )
    # Chat prompts come from the template, which writes the special tokens itself.
    encoded = tokenizer(prompts, add_special_tokens=not chat)["input_ids"]
    budgets = []
    for i, ids in enumerate(encoded):
        where = "The prompt" if len(prompts) == 1 else f"prompt[{i}]"
        if not ids:
            raise ValueError(
                f"{where} ({prompts[i]!r}) has no tokens: the tokenizer drops every character of it "
                "(control characters, say). Pass some visible text."
            )
        if max_new_tokens is not None or chat:
            new = max_new_tokens or max_length or default_max_length
            if len(ids) + new > context_length:
                raise ValueError(
                    f"{where} has {len(ids)} tokens; with {new} new tokens that exceeds the model's "
                    f"context of {context_length}. Shorten the prompt or ask for fewer new tokens."
                )
            budgets.append(new)
            continue
        limit = max_length if max_length is not None else default_max_length
        if len(ids) >= limit:
            raise ValueError(
                f"{where} has {len(ids)} tokens, which already fills max_length={limit} "
                "(max_length counts the prompt too). Raise max_length above "
                f"{len(ids)}, or pass max_new_tokens=N to count only new tokens."
            )
        budgets.append(limit - len(ids))
    if max_new_tokens is not None:
        budget = f"max_new_tokens={max_new_tokens}"
    else:
        budget = f"max_length={max_length or default_max_length}" + (" (reply)" if chat else "")
    return prompts, encoded, budgets, budget
