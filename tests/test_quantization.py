"""Quantization: which backend runs where, the int8/int4 layers, footprint truth, errors, compile."""

from __future__ import annotations

import importlib.util
import logging
import subprocess
import sys

import pytest
import torch
from torch import nn

from hfllm_nb import HuggingFaceLLM
from hfllm_nb.engines.local.cpu_quant import Int8Embedding, Int8Linear
from hfllm_nb.engines.local.fast_decode import check_compile
from hfllm_nb.engines.local.quantization import footprint_bytes, plan_quantization

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
PROMPTS = ["The capital of France is", "def fibonacci(n):", "Photosynthesis is the process by which"]


def plan(config, device=CPU, dtype=torch.bfloat16):
    return plan_quantization(config, dtype=dtype, device=device)


def hide_package(monkeypatch, hidden: str) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == hidden else real_find_spec(name, *a)
    )


# ---------------------------------------------------------------- which backend


def test_8bit_uses_torch_int8_on_cpu_and_bitsandbytes_on_cuda():
    assert plan({"load_in_8bit": True}).backend == "torch"
    on_gpu = plan({"load_in_8bit": True}, device=CUDA)
    assert on_gpu.backend == "bitsandbytes" and on_gpu.from_pretrained_config.load_in_8bit
    assert not on_gpu.quantize_lm_head  # the int8 head is a CPU kernel


def test_4bit_on_cpu_uses_torchao_int4_with_group_32_and_an_int8_head():
    four = plan({"load_in_4bit": True})
    assert (four.backend, four.bits, four.from_pretrained_config) == ("torchao", 4, None)
    assert four.quantize_lm_head and "groups of 32" in four.label
    assert four.load_dtype == torch.bfloat16  # torchao's int4 kernel takes bfloat16 activations


def test_4bit_on_cpu_falls_back_to_bitsandbytes_without_torchao(monkeypatch):
    hide_package(monkeypatch, "torchao")
    assert plan({"load_in_4bit": True}).backend == "bitsandbytes"


def test_bitsandbytes_options_choose_bitsandbytes_and_reach_its_config():
    four = plan({"load_in_4bit": True, "bnb_4bit_quant_type": "fp4"})
    assert four.backend == "bitsandbytes" and four.from_pretrained_config.bnb_4bit_quant_type == "fp4"
    assert four.from_pretrained_config.bnb_4bit_compute_dtype == torch.bfloat16


def test_a_backend_key_forces_that_backend():
    assert plan({"load_in_8bit": True, "backend": "torchao"}).backend == "torchao"
    forced = plan({"load_in_4bit": True, "backend": "bitsandbytes"})
    assert forced.backend == "bitsandbytes" and forced.from_pretrained_config.bnb_4bit_quant_type == "nf4"
    assert not forced.compilable


def test_a_bitsandbytes_config_object_means_bitsandbytes():
    from transformers import BitsAndBytesConfig

    chosen = plan(BitsAndBytesConfig(load_in_8bit=True))
    assert chosen.backend == "bitsandbytes" and chosen.from_pretrained_config.load_in_8bit


@pytest.mark.parametrize(
    "config, device, error, words",
    [
        (
            {"load_in_8bit": True, "backend": "gguf"},
            CPU,
            ValueError,
            "one of 'auto', 'torch', 'torchao', 'bitsandbytes', not 'gguf'",
        ),
        ({"load_in_4bit": True, "backend": "torch"}, CPU, ValueError, "'torch' has 8-bit only.*'torchao'"),
        ({"load_in_8bit": True, "group_size": 32}, CPU, ValueError, "group_size cannot be honoured by the 'torch'"),
        (
            {"load_in_8bit": True, "backend": "torch", "llm_int8_threshold": 4.0},
            CPU,
            ValueError,
            "llm_int8_threshold cannot be honoured by the 'torch'",
        ),
        ({"load_in_4bit": True, "group_size": 48}, CPU, ValueError, "group_size.*32, 64, 128, 256, not 48"),
        ({"load_in_4bit": True, "group_size": "32"}, CPU, TypeError, "group_size.*'32'"),
        ({"load_in_8bit": True, "quantize_lm_head": "yes"}, CPU, TypeError, "quantize_lm_head.*'yes'"),
        ({"load_in_8bit": True, "backend": "torch"}, CUDA, ValueError, "CPU only, not on cuda"),
        (
            {"load_in_4bit": True, "backend": "bitsandbytes", "quantize_lm_head": True},
            CUDA,
            ValueError,
            "quantize_lm_head.*CPU-only.*cuda",
        ),
    ],
)
def test_options_a_backend_cannot_honour_are_refused_by_name(config, device, error, words):
    with pytest.raises(error, match=words):
        plan(config, device=device)


def test_a_bad_option_fails_before_the_model_is_looked_up():
    # "no/such-model" would raise ModelLoadError if loading had started.
    with pytest.raises(ValueError, match="group_size"):
        HuggingFaceLLM("no/such-model", device="cpu", quantization_config={"load_in_8bit": True, "group_size": 32})


@pytest.mark.parametrize(
    "package, config",
    [
        ("torchao", {"load_in_4bit": True, "backend": "torchao"}),
        ("bitsandbytes", {"load_in_8bit": True, "backend": "bitsandbytes"}),
    ],
)
def test_a_missing_backend_names_the_extra_to_install(monkeypatch, package, config):
    hide_package(monkeypatch, package)
    with pytest.raises(ImportError, match=rf"{package}.*pip install 'hfllm-nb\[quantization\]'"):
        plan(config)


# ---------------------------------------------------------------- the int8 layers


def test_int8_linear_computes_with_the_matrix_it_stores():
    torch.manual_seed(0)
    weight, bias = torch.randn(48, 80), torch.randn(48)
    layer = Int8Linear.from_float(weight, bias)
    stored = layer.weight.float() * layer.scale.float()[:, None]
    # Rounding to int8 moves each weight by at most half a step of its row.
    assert ((stored - weight).abs() <= layer.scale.float()[:, None] / 2 + 1e-6).all()
    x = torch.randn(3, 5, 80)
    expected = x @ stored.T + layer.bias.float()
    out = layer(x)
    assert out.dtype == torch.float32 and out.shape == (3, 5, 48)
    torch.testing.assert_close(out, expected, rtol=0.02, atol=0.05)  # bf16 activations: ~3 significant digits


@pytest.fixture(scope="module")
def tiny_int8(tiny_model_dir):
    return HuggingFaceLLM(
        str(tiny_model_dir), device="cpu", dtype="bfloat16", quantization_config={"load_in_8bit": True}
    )


def test_8bit_swaps_every_linear_and_the_tied_embedding_reads_the_int8_head(tiny_int8):
    model = tiny_int8.model
    assert [n for n, m in model.named_modules() if isinstance(m, nn.Linear)] == []
    head, embedding = model.get_output_embeddings(), model.get_input_embeddings()
    assert isinstance(head, Int8Linear) and isinstance(embedding, Int8Embedding)
    assert embedding.weight.data_ptr() == head.weight.data_ptr()  # one copy, still tied
    ids = torch.tensor([[0, 7, head.out_features - 1]])
    torch.testing.assert_close(embedding(ids), head.dequantized_weight()[ids], rtol=0, atol=0)
    text = tiny_int8.generate("Hello", max_new_tokens=4, return_full_text=False)
    assert tiny_int8.last_stats.new_tokens == 4 and isinstance(text, str)


def _layer_shapes(config):
    """[out, in] of a Llama layer's q, k, v, o, gate, up, down projections."""
    hidden, inner = config.hidden_size, config.intermediate_size
    kv = config.num_key_value_heads * (hidden // config.num_attention_heads)
    return [
        (hidden, hidden),
        (kv, hidden),
        (kv, hidden),
        (hidden, hidden),
        (inner, hidden),
        (inner, hidden),
        (hidden, inner),
    ]


def _rest_bytes(model):
    """bf16 norms (two per layer, one final) and the rotary buffers: what quantization leaves alone."""
    config = model.config
    norms = (2 * config.num_hidden_layers + 1) * config.hidden_size * 2
    return norms + sum(b.numel() * b.element_size() for n, b in model.named_buffers() if "rotary" in n)


def test_footprint_counts_int8_bytes_and_the_shared_head_once(tiny_int8):
    model, config = tiny_int8.model, tiny_int8.model.config
    # int8 weights (1 byte) + one bf16 scale (2 bytes) per output row, per linear layer.
    per_layer = sum(rows * cols + 2 * rows for rows, cols in _layer_shapes(config))
    head = config.vocab_size * (config.hidden_size + 2)  # the tied embedding adds nothing
    assert footprint_bytes(model) == config.num_hidden_layers * per_layer + head + _rest_bytes(model)


@pytest.mark.slow
def test_int4_footprint_counts_packed_nibbles_and_group_scales(tiny_model_dir):
    four = HuggingFaceLLM(str(tiny_model_dir), device="cpu", quantization_config={"load_in_4bit": True})
    model, config = four.model, four.model.config
    # half a byte per weight + a bf16 (scale, zero) pair per group of 32; the head is int8 as above
    per_layer = sum(rows * cols // 2 + (cols // 32) * rows * 4 for rows, cols in _layer_shapes(config))
    head = config.vocab_size * (config.hidden_size + 2)
    expected = config.num_hidden_layers * per_layer + head + _rest_bytes(model)
    assert footprint_bytes(model) == expected
    # transformers' own figure counts each int4 weight at bfloat16 size: the reason footprint_bytes exists
    assert model.get_memory_footprint() > expected


def test_layers_the_int4_layout_cannot_hold_are_named_in_one_warning(tiny_model_dir, caplog):
    with caplog.at_level(logging.WARNING, logger="hfllm_nb"):
        four = HuggingFaceLLM(
            str(tiny_model_dir),
            device="cpu",
            quantization_config={"load_in_4bit": True, "backend": "torchao", "group_size": 64},
        )
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and r.name == "hfllm_nb"]
    assert len(warnings) == 1, warnings
    hidden = four.model.config.hidden_size  # 32: not a multiple of 64; the MLP's down_proj (in 64) is
    assert f"in_features {hidden} is not a multiple of group_size 64" in warnings[0]
    assert "model.layers.0.self_attn.q_proj" in warnings[0] and "down_proj" not in warnings[0]
    left = {n for n, m in four.model.named_modules() if isinstance(m, nn.Linear) and type(m.weight) is nn.Parameter}
    assert "model.layers.0.self_attn.q_proj" in left and "model.layers.0.mlp.down_proj" not in left


def test_a_layer_the_int8_kernel_cannot_take_stays_float_and_is_named(caplog):
    model = nn.Sequential(nn.Linear(40, 16), nn.Linear(16, 8))  # torch's AVX-512 kernel needs in % 16 == 0
    with caplog.at_level(logging.WARNING, logger="hfllm_nb"):
        plan({"load_in_8bit": True}).after_load(model)
    assert isinstance(model[0], nn.Linear) and isinstance(model[1], Int8Linear)
    assert [r.getMessage() for r in caplog.records] == [
        "Quantization left 1 layer(s) in floating point: 0 (in_features 40 is not a multiple of 16)."
    ]


def test_gpt2_conv1d_layers_are_quantized_too():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64, n_positions=16)).eval()
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        before = model(ids).logits
    for bits in (8, 4):
        quantized = GPT2LMHeadModel(model.config).eval()
        quantized.load_state_dict(model.state_dict())
        plan({f"load_in_{bits}bit": True}).after_load(quantized)
        kinds = {type(m).__name__ for m in quantized.modules()}
        assert "Conv1D" not in kinds and isinstance(quantized.get_output_embeddings(), Int8Linear)
        with torch.no_grad():
            after = quantized(ids).logits.float()
        assert (after - before).norm() / before.norm() < 0.1, bits


# ---------------------------------------------------------------- against bfloat16, real model


@pytest.fixture(scope="module")
def bf16_llm(default_model_dir):
    return HuggingFaceLLM(dtype="bfloat16", device="cpu")


def _log_probs(llm, prompt):
    ids = llm.tokenizer(prompt, return_tensors="pt")
    with torch.inference_mode():
        return torch.log_softmax(llm.model(**ids).logits[0].float(), dim=-1)


@pytest.mark.slow
@pytest.mark.parametrize("bits", [8, 4])
def test_quantized_next_token_distributions_stay_close_to_bfloat16(bf16_llm, bits):
    """KL(bf16 ‖ quantized) ≤ 0.1 nats at every prompt position (measured: int8 ≤ 0.04, int4 g32 ≤ 0.03)."""
    quantized = HuggingFaceLLM(device="cpu", quantization_config={f"load_in_{bits}bit": True})
    assert footprint_bytes(quantized.model) < footprint_bytes(bf16_llm.model) * (0.55 if bits == 8 else 0.45)
    for prompt in PROMPTS:
        reference, ours = _log_probs(bf16_llm, prompt), _log_probs(quantized, prompt)
        kl = (reference.exp() * (reference - ours)).sum(-1)
        assert kl.max() <= 0.1, (prompt, kl.tolist())


# ---------------------------------------------------------------- compile, start-up noise


def test_compile_is_refused_only_for_backends_that_cannot_compile():
    assert check_compile(True, plan({"load_in_8bit": True})) is True
    assert check_compile(True, plan({"load_in_4bit": True, "backend": "torchao"})) is True
    with pytest.raises(ValueError, match="compile=True does not work with quantization_config backend 'bitsandbytes'"):
        check_compile(True, plan({"load_in_4bit": True, "backend": "bitsandbytes"}))


@pytest.mark.slow
def test_compiled_int8_decoding_gives_the_eager_text(tiny_model_dir):
    """~30 s of compiling on 2 cores: the tiny model, float32 around the int8 products."""
    settings = {"device": "cpu", "dtype": "float32", "quantization_config": {"load_in_8bit": True}}
    eager = HuggingFaceLLM(str(tiny_model_dir), **settings)
    compiled = HuggingFaceLLM(str(tiny_model_dir), compile=True, **settings)
    assert isinstance(compiled.model.get_output_embeddings(), Int8Linear)
    for prompt in PROMPTS[:2]:
        assert compiled.generate(prompt, max_new_tokens=8) == eager.generate(prompt, max_new_tokens=8)


def test_backend_imports_keep_their_known_start_up_messages_out_of_the_log():
    code = (
        "import logging; logging.basicConfig(level=logging.WARNING)\n"
        "from hfllm_nb.engines.local.quant_imports import import_quietly\n"
        "import_quietly('bitsandbytes'); import_quietly('torchao')\n"
        "import bitsandbytes.backends.cpu.ops\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "kernels-community" not in done.stderr
    if torch.version.cuda is None:  # on a CPU build the CUDA-only torchao extensions cannot load: dropped
        assert "Failed to load" not in done.stderr and "Enum subclass" not in done.stderr
