"""Helpers for tests and benchmarks: a tiny random model that loads in well under a second."""

from __future__ import annotations

from pathlib import Path

import torch


def save_tiny_llama(folder: str | Path, tokenizer_source: str | Path, *, max_position_embeddings: int = 256) -> Path:
    """Save a 2-layer random Llama with the tokenizer from ``tokenizer_source`` into ``folder``.

    The text it writes is noise; use it where only the mechanics matter (errors, threads, shapes).

    >>> save_tiny_llama(tmp_path, default_model.prepare_default_model())   # doctest: +SKIP
    """
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    folder = Path(folder)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)  # includes the chat template
    return folder
