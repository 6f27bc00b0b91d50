"""torch.profiler over single-token decode steps of the real model, plain and int8."""

from __future__ import annotations

import torch

from benchmarks import models
from benchmarks._timing import PROMPT, Report, Settings, table

# The ops that multiply by a weight matrix, plain and quantized.
_MATMULS = ("aten::mm", "aten::addmm", "aten::linear", "aten::matmul", "aten::_weight_int8pack_mm")


def _profile_steps(llm, steps: int):
    # On the model thread, where every generate runs (and a second OpenMP team would slow them).
    return llm.run(_profile_steps_here, steps)


def _profile_steps_here(model, tokenizer, steps: int):
    from torch.profiler import ProfilerActivity, profile
    from transformers import DynamicCache

    ids = tokenizer(PROMPT, return_tensors="pt")["input_ids"]
    cache = DynamicCache(config=model.config)
    with torch.inference_mode():
        out = model(input_ids=ids, cache=cache, use_cache=True)
        token = out.logits[:, -1:].argmax(-1)
        position = ids.shape[1]

        def step() -> None:
            nonlocal token, position
            positions = torch.tensor([position])
            result = model(
                input_ids=token, cache=cache, use_cache=True, cache_position=positions, position_ids=positions[None]
            )
            token = result.logits[:, -1:].argmax(-1)
            position += 1

        step()  # warm-up
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            for _ in range(steps):
                step()
    return prof, ids.shape[1]


def _limit(config: models.Config) -> str:
    share = config.bandwidth_share
    if share >= 0.6:
        return f"At {share:.0%} of the memory-bandwidth bound they are limited by memory traffic."
    return (
        f"At {share:.0%} of the memory-bandwidth bound, memory traffic alone does not explain them: "
        "each is a small matrix-vector product with its own dispatch and thread hand-off."
    )


def profile_config(report: Report, settings: Settings, config: models.Config) -> None:
    steps = settings.profile_steps
    prof, prompt_tokens = _profile_steps(config.llm, steps)
    averages = prof.key_averages()
    events = sorted((e for e in averages if e.key.startswith("aten::")), key=lambda e: e.self_cpu_time_total)[::-1]
    step_total = sum(e.self_cpu_time_total for e in averages) / steps
    rows = [
        [
            f"`{e.key}`",
            f"{e.self_cpu_time_total / steps / 1e3:.2f}",
            f"{100 * e.self_cpu_time_total / steps / step_total:.1f} %",
            e.count // steps,
        ]
        for e in events[:10]
    ]
    vocab = config.llm.model.config.vocab_size
    shaped = prof.key_averages(group_by_input_shape=True)
    head = sum(e.self_cpu_time_total for e in shaped if str(vocab) in str(e.input_shapes) and e.key in _MATMULS)
    head /= steps
    top = events[0]
    summary = (
        f"Biggest cost: **`{top.key}`**, {100 * top.self_cpu_time_total / steps / step_total:.0f} % "
        f"of a decode step ({top.self_cpu_time_total / steps / 1e3:.1f} ms of {step_total / 1e3:.1f} ms)"
        + (
            f": the products with the weight matrices ({top.count // steps} calls per step). {_limit(config)}"
            if top.key in _MATMULS
            else "."
        )
        + f" The LM head alone (vocab {vocab}) takes {head / 1e3:.1f} ms ({100 * head / step_total:.0f} %)."
    )
    if "forward_share" in report.facts and config.name == "auto":
        summary += f" {report.facts['forward_share']}."
    report.add(
        f"Profile of one decode step ({config.name}: {config.label})",
        table(["op", "self ms / step", "share", "calls / step"], rows)
        + f"\n\nAveraged over {steps} single-token steps with a warm DynamicCache ({prompt_tokens} prompt "
        f"tokens). {summary}",
    )


# Where a compiled generate step goes, by profiler event: (share label, event keys counted at self time).
_COMPILED_PARTS = (
    (
        "4-bit products with the weight matrices",
        ("aten::_weight_int4pack_mm_for_cpu", "quantized::int4mm_packed_weight_cpu"),
    ),
    ("LM head (8-bit product)", ("aten::_weight_int8pack_mm",)),
    ("Inductor's fused kernels (norms, rotary, attention, residuals)", ("## Call CompiledFxGraph",)),
    ("dynamo's guard check before each step", ("TorchDynamo Cache Lookup",)),
    (
        "compiled-call wrappers",
        ("Pregraph bytecode", "AOTDispatcher Runtime Wrapper Prologue", "Torch-Compiled Region"),
    ),
)


def _profile_compiled_generate_here(model, tokenizer, llm, tokens: int):
    """One greedy ``generate`` of ``tokens`` tokens through the engine's compiled fast path, profiled."""
    import time

    from torch.profiler import ProfilerActivity, profile

    inputs = tokenizer(PROMPT, return_tensors="pt")
    options = llm.decode_options(1, inputs["input_ids"].shape[1], tokens)
    with profile(activities=[ProfilerActivity.CPU]) as prof, torch.inference_mode():
        started = time.perf_counter()
        model.generate(**inputs, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False, **options)
        seconds = time.perf_counter() - started
    return prof, seconds


def profile_compiled(report: Report, settings: Settings, config: models.Config) -> None:
    """Shares of a compiled 4-bit generate step: matmuls, LM head, fused kernels, guards, and Python."""
    tokens = max(settings.tokens, 16)
    config.llm.generate(PROMPT, max_new_tokens=tokens, min_new_tokens=tokens)  # warm: the graph exists
    prof, seconds = config.llm.run(_profile_compiled_generate_here, config.llm, tokens)
    selfs: dict[str, float] = {}
    for event in prof.key_averages():
        key = next((k for _, keys in _COMPILED_PARTS for k in keys if event.key.startswith(k)), None)
        if key is not None:
            selfs[key] = selfs.get(key, 0.0) + event.self_cpu_time_total / 1e3  # ms
    step_ms = 1e3 * seconds / tokens
    rows, accounted = [], 0.0
    for label, keys in _COMPILED_PARTS:
        part = sum(selfs.get(k, 0.0) for k in keys) / tokens
        accounted += part
        rows.append([label, f"{part:.2f}", f"{100 * part / step_ms:.0f} %"])
    rest = step_ms - accounted
    rest_label = "the rest: generate's Python, logits processing, stopping checks"
    rows.append([rest_label, f"{rest:.2f}", f"{100 * rest / step_ms:.0f} %"])
    report.add(
        f"Profile of one compiled generate step ({config.name}: {config.label})",
        table(["part", "ms / token", "share"], rows)
        + f"\n\nOne greedy `generate` of {tokens} tokens through the engine's compiled fast path under "
        f"torch.profiler ({step_ms:.1f} ms per token profiled, {1e3 / step_ms:.0f} tok/s; the profiler adds "
        "some time of its own). Self times of the profiler's events; 'the rest' is the wall time they do not cover.",
    )


def profile_section(report: Report, settings: Settings) -> None:
    loaded = models.by_name(report, settings)
    for name in ("auto", "8-bit"):
        if name in loaded:
            profile_config(report, settings, loaded[name])
    if not settings.tiny_fast_model:  # the quantization and cache sections loaded it
        four_bit = {"quantization_config": {"load_in_4bit": True}, "compile": True}
        config = models.load(report, models.Config("4-bit + compile=True", four_bit))
        if config is not None:
            profile_compiled(report, settings, config)
