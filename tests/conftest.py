"""Shared fixtures: the real default model (loaded once) and a tiny random model for edge cases."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hfllm_nb import HuggingFaceLLM
from hfllm_nb.default_model import prepare_default_model
from hfllm_nb.testing import save_tiny_llama


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
def llm32(default_model_dir):
    """The default model in float32: separate forward passes agree to 1e-4 and near-ties cannot tip
    differently from generate's (bfloat16 keeps ~3 digits). Loaded once for every module that needs it."""
    return HuggingFaceLLM(dtype="float32")


@pytest.fixture(scope="session")
def tokenizer_dir(request):
    """SmolLM2's tokenizer: from $HFLLM_NB_TOKENIZER_DIR if set, else the default model's folder.

    benchmarks/gpu/check.py sets it on machines without the default model, which carry only
    the tokenizer files, so that the tiny-model tests still run there.
    """
    carried = os.environ.get("HFLLM_NB_TOKENIZER_DIR")
    return Path(carried) if carried else request.getfixturevalue("default_model_dir")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer_dir):
    """A 2-layer random Llama with SmolLM2's tokenizer: loads in well under a second."""
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), tokenizer_dir)


@pytest.fixture(scope="session")
def tiny_llm(tiny_model_dir):
    """A fast random model: for edge cases where the text itself does not matter."""
    return HuggingFaceLLM(str(tiny_model_dir), dtype="float32")


@pytest.fixture(scope="session")
def vllm_server(default_model_dir):
    """vLLM's server on the default model, float32, started once per session (a minute or more, 4 GiB).

    Every module that runs against vLLM shares it (tests/_server.py: VllmProcess). With
    HFLLM_NB_VLLM_URL set, the tests use that running server instead (to iterate on them).
    """
    from _server import VllmProcess, require_vllm, running_vllm

    if os.environ.get("HFLLM_NB_VLLM_URL"):
        yield running_vllm(os.environ["HFLLM_NB_VLLM_URL"])
        return
    require_vllm()
    process = VllmProcess(default_model_dir).start()
    try:
        yield process
    finally:
        process.stop()
