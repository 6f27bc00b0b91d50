"""The GPU check's speed sections: bf16 decode eager and compiled against the HBM bound, bitsandbytes.

The model is a random Llama of SmolLM2-1.7B's shape (tiny in the dry run), made on the device
from a config and saved once: decode speed depends on shapes and dtypes, not on weight values,
and ``min_new_tokens = max_new_tokens`` makes every call generate the same number of tokens.
"""

from __future__ import annotations

import importlib.util
import logging
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks._timing import PROMPT, table
from benchmarks.gpu.common import HBM_REFERENCE, Context, Section, Skip

logger = logging.getLogger("hfllm_nb.benchmarks")


def save_random_llama(folder: Path, tokenizer_dir: Path, shape: dict[str, Any], device: torch.device) -> Path:
    """A random-weight Llama of ``shape`` in bfloat16 with the carried tokenizer, saved to ``folder``."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
        **shape,
    )
    torch.manual_seed(0)
    with torch.device(device):  # initialising 1.7 B weights takes seconds on a GPU, minutes on a CPU
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.to("cpu").save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    del model
    return folder


def speed_model(ctx: Context) -> Path:
    if "speed_dir" not in ctx.state:
        started = time.perf_counter()
        folder, shape = ctx.work / "speed", ctx.plan.speed_shape
        ctx.state["speed_dir"] = save_random_llama(folder, ctx.tokenizer_dir, shape, ctx.device)
        ctx.state["speed_build_seconds"] = time.perf_counter() - started
        if ctx.device.type == "cuda":
            torch.cuda.empty_cache()
    return ctx.state["speed_dir"]


def read_bandwidth(device: torch.device, nbytes: int, reps: int = 5, sums: int = 10) -> float:
    """Bytes/s of reading ``nbytes`` of bf16 (float32-accumulated sums), best of ``reps`` after a warm-up.

    Each timing covers ``sums`` back-to-back sums, so one synchronisation's latency hardly counts.
    """
    data = torch.ones(nbytes // 2, dtype=torch.bfloat16, device=device)
    best = float("inf")
    for _ in range(reps + 1):
        _sync(device)
        started = time.perf_counter()
        for _ in range(sums):
            data.sum(dtype=torch.float32)
        _sync(device)
        best = min(best, (time.perf_counter() - started) / sums)
    del data
    return nbytes / best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_decode(llm: Any, tokens: int, reps: int) -> dict[str, Any]:
    """Warm up, then ``reps`` greedy calls of exactly ``tokens`` new tokens; the best decode rate."""
    text = llm.generate(PROMPT, max_new_tokens=tokens, min_new_tokens=tokens, return_full_text=False)
    rates, firsts, totals, peaks = [], [], [], []
    for _ in range(reps):
        llm.generate(PROMPT, max_new_tokens=tokens, min_new_tokens=tokens)
        stats = llm.last_stats
        first = stats.time_to_first_token or 0.0
        rates.append((stats.new_tokens - 1) / (stats.seconds - first) if stats.seconds > first else float("nan"))
        firsts.append(first)
        totals.append(stats.new_tokens / stats.seconds)
        peaks.append(stats.peak_gpu_memory)
    from hfllm_nb import footprint_bytes

    return {
        "decode_tok_s": max(rates),
        "end_to_end_tok_s": max(totals),
        "first_token_ms": 1e3 * min(firsts),
        "new_tokens": llm.last_stats.new_tokens,
        "footprint": llm.run(lambda model, tokenizer: footprint_bytes(model)),
        "peak_gpu_memory": peaks[-1],
        "load_seconds": llm.load_seconds,
        "text": text,
    }


def _row(name: str, m: dict[str, Any], bandwidth: float) -> list[str]:
    bound = HBM_REFERENCE / m["footprint"]
    measured_bound = bandwidth / m["footprint"]
    return [
        name,
        f"{m['load_seconds']:.1f}",
        f"{m['footprint'] / 2**20:.0f}",
        f"{m['decode_tok_s']:.1f}",
        f"{m['first_token_ms']:.0f}",
        f"{bound:.0f}",
        f"{100 * m['decode_tok_s'] / bound:.1f} %",
        f"{100 * m['decode_tok_s'] / measured_bound:.1f} %",
    ]


HEADER = ["weights", "load s", "MiB", "decode tok/s", "first token ms", "bound tok/s", "of bound", "of measured bound"]


def _explain(ctx: Context) -> str:
    bandwidth, shape, weights = ctx.state["bandwidth"], ctx.plan.speed_shape, ctx.state["eager_figures"]["footprint"]
    # compile=True attends over a static cache of 256 slots (_fast_decode.MIN_CACHE_LENGTH): K and V, bf16.
    head_dim = shape["hidden_size"] // shape["num_attention_heads"]
    cache = 2 * shape["num_hidden_layers"] * shape["num_key_value_heads"] * head_dim * 2 * 256
    return (
        f"Greedy, `max_new_tokens = min_new_tokens = {ctx.plan.tokens}`, prompt {PROMPT!r}, best of "
        f"{ctx.plan.reps} after a warm-up; times from `llm.last_stats`, decode leaves out the first token. "
        f"*bound* = {HBM_REFERENCE / 1e12:.1f} TB/s (HBM, measured on this H200 kind) ÷ bytes of weights "
        f"(`hfllm_nb.footprint_bytes`: each weight is read once per token, the tied embedding by the "
        f"head); *measured bound* uses this run's read bandwidth, **{bandwidth / 1e9:.1f} GB/s** "
        f"(a sum over {ctx.plan.bandwidth_bytes / 2**30:.2f} GiB of bf16 on {ctx.device}). The KV cache "
        f"read per token is left out: compile=True's static one of 256 slots adds {100 * cache / weights:.1f} %."
    )


def speed_section(ctx: Context, out: Section) -> None:
    from hfllm_nb import HuggingFaceLLM

    folder = speed_model(ctx)
    ctx.state["bandwidth"] = bandwidth = read_bandwidth(ctx.device, ctx.plan.bandwidth_bytes)
    llm = ctx.state["eager"] = HuggingFaceLLM(str(folder), device=ctx.device, dtype="bfloat16")
    measured = ctx.state["eager_figures"] = time_decode(llm, ctx.plan.tokens, ctx.plan.reps)
    out.figures.update({k: v for k, v in measured.items() if k != "text"}, bandwidth=bandwidth)
    out.figures["build_seconds"] = ctx.state["speed_build_seconds"]
    out.check(measured["new_tokens"] == ctx.plan.tokens, f"made {measured['new_tokens']} tokens")
    out.check(llm.dtype == torch.bfloat16 and llm.device == ctx.device, f"loaded as {llm.dtype} on {llm.device}")
    out.body = (
        table(HEADER, [_row("bf16 eager", measured, bandwidth)])
        + f"\n\nThe random model was made on {ctx.device} and saved in {ctx.state['speed_build_seconds']:.0f} s. "
        + _explain(ctx)
    )


def compile_section(ctx: Context, out: Section) -> None:
    from hfllm_nb import HuggingFaceLLM

    eager = ctx.state.get("eager_figures")
    if eager is None:
        raise Skip("the eager bf16 model did not load")
    close_models(ctx)  # one copy of the weights on the device at a time
    started = time.perf_counter()
    folder = str(speed_model(ctx))
    llm = ctx.state["compiled"] = HuggingFaceLLM(folder, device=ctx.device, dtype="bfloat16", compile=True)
    load = time.perf_counter() - started
    measured = time_decode(llm, ctx.plan.tokens, ctx.plan.reps)
    out.figures.update({k: v for k, v in measured.items() if k != "text"}, load_and_compile_seconds=load)
    out.figures["speedup"] = measured["decode_tok_s"] / eager["decode_tok_s"]
    out.figures["same_text_as_eager"] = same = measured["text"] == eager["text"]
    out.check(measured["new_tokens"] == ctx.plan.tokens, f"made {measured['new_tokens']} tokens")
    close_models(ctx)  # the tests that follow run in their own process
    bandwidth = ctx.state["bandwidth"]
    out.body = (
        table(HEADER, [_row("bf16 eager", eager, bandwidth), _row("bf16 compile=True", measured, bandwidth)])
        + f"\n\nLoad with compile=True took **{load:.0f} s**, the compile warm-up included (inductor"
        f"{', CUDA graphs' if ctx.device.type == 'cuda' else ''}). Decode speed-up over eager: "
        f"**{out.figures['speedup']:.2f}×**. Greedy text {'equals' if same else 'differs from'} "
        "eager's (bf16 kernels may round differently; reported, not required). Columns as in the eager section."
    )


def bitsandbytes_section(ctx: Context, out: Section) -> None:
    from hfllm_nb import HuggingFaceLLM

    if importlib.util.find_spec("bitsandbytes") is None:
        raise Skip(
            "bitsandbytes is not installed here: carry its wheel in .gpu/wheels "
            "(`bash benchmarks/gpu/check.sh --pack`, 43 MB)."
        )
    eager = ctx.state.get("eager_figures")
    if eager is None:
        raise Skip("the eager bf16 model did not load")
    close_models(ctx)
    rows, bandwidth = [_row("bf16 eager", eager, ctx.state["bandwidth"])], ctx.state["bandwidth"]
    folder = str(speed_model(ctx))
    for bits in (8, 4):
        config = {f"load_in_{bits}bit": True, "backend": "bitsandbytes"}
        with HuggingFaceLLM(folder, device=ctx.device, dtype="bfloat16", quantization_config=config) as llm:
            measured = time_decode(llm, ctx.plan.quant_tokens, 1)
            label = llm.run(lambda model, tokenizer: type(model.model.layers[0].mlp.down_proj).__name__)
        out.figures[f"{bits}bit"] = {k: v for k, v in measured.items() if k != "text"} | {"layer": label}
        out.check(measured["new_tokens"] == ctx.plan.quant_tokens, f"{bits}-bit made {measured['new_tokens']} tokens")
        out.check(measured["footprint"] < eager["footprint"], f"{bits}-bit weights are not smaller than bf16")
        out.check("Linear" in label and label != "Linear", f"{bits}-bit layers are plain {label}")
        rows.append(_row(f"bitsandbytes {bits}-bit ({label})", measured, bandwidth))
    out.check(out.figures["4bit"]["footprint"] < out.figures["8bit"]["footprint"], "4-bit is not smaller than 8-bit")
    out.body = (
        table(HEADER, rows)
        + f"\n\n`quantization_config={{'load_in_Nbit': True, 'backend': 'bitsandbytes'}}`, quantized while loading "
        f"the bf16 folder; {ctx.plan.quant_tokens} tokens, one call after a warm-up. Columns as in the eager section."
    )


def close_models(ctx: Context) -> None:
    """Free the device: close the models the speed sections keep between sections."""
    for name in ("eager", "compiled"):
        llm = ctx.state.pop(name, None)
        if llm is not None:
            llm.close()
    if ctx.device.type == "cuda":
        torch.cuda.empty_cache()
