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


def profile_section(report: Report, settings: Settings) -> None:
    loaded = models.by_name(report, settings)
    for name in ("auto", "8-bit"):
        if name in loaded:
            profile_config(report, settings, loaded[name])
