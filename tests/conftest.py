"""Shared fixtures: the real default model (loaded once) and a tiny random model for edge cases."""

from __future__ import annotations

import shutil

import pytest

from hfllm_nb import HuggingFaceLLM
from hfllm_nb.default_model import prepare_default_model


@pytest.fixture(scope="session")
def default_model_dir():
    """The converted SmolLM2 cache folder (built on first use)."""
    folder = prepare_default_model()
    assert folder is not None, "the default-model cache must be writable in tests"
    return folder


@pytest.fixture(scope="session")
def llm(default_model_dir):
    """The real embedded default model, as users get it with HuggingFaceLLM()."""
    return HuggingFaceLLM()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, default_model_dir):
    """A 2-layer random Llama with SmolLM2's tokenizer: loads in well under a second."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = AutoTokenizer.from_pretrained(default_model_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    for extra in ("chat_template.jinja",):
        if (default_model_dir / extra).exists():
            shutil.copy(default_model_dir / extra, folder / extra)
    return folder


@pytest.fixture(scope="session")
def tiny_llm(tiny_model_dir):
    """A fast random model: for edge cases where the text itself does not matter."""
    return HuggingFaceLLM(str(tiny_model_dir), dtype="float32")
