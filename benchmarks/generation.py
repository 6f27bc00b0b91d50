"""Tokens/s, time to first token and footprint per configuration, interleaved, best of N."""

from __future__ import annotations

import torch

from benchmarks import models
from benchmarks._timing import (
    PROMPT,
    Report,
    Sample,
    Settings,
    best,
    contention_note,
    on_model_thread,
    sample,
    table,
    timed,
)


def measure_bandwidth(nbytes: int, reps: int = 5) -> tuple[float, float]:
    """Read bandwidth (sum over ``nbytes``) and copy bandwidth (read + write), in bytes/s."""
    source = torch.ones(nbytes // 4, dtype=torch.float32)
    target = torch.empty_like(source)
    read = min(timed(source.sum)[0] for _ in range(reps))
    copy = min(timed(lambda: target.copy_(source))[0] for _ in range(reps))
    return nbytes / read, 2 * nbytes / copy


def generation_section(report: Report, settings: Settings) -> None:
    configs = models.main_configs(report, settings)
    tokens = settings.tokens
    for config in configs:  # warm-up, and the greedy text shown in the table
        config.text = config.llm.generate(PROMPT, max_new_tokens=tokens, min_new_tokens=tokens, return_full_text=False)
    samples: dict[str, list[Sample]] = {c.name: [] for c in configs}
    for rep in range(settings.reps):
        for config in configs[rep % len(configs) :] + configs[: rep % len(configs)]:
            measured, _ = sample(lambda c=config: c.llm.generate(PROMPT, max_new_tokens=tokens, min_new_tokens=tokens))
            stats = config.llm.last_stats
            report.check(stats.new_tokens == tokens, f"{config.name} made {stats.new_tokens} tokens")
            config.seconds.append(stats.seconds)
            config.first_token.append(stats.time_to_first_token or float("nan"))
            samples[config.name].append(measured)
    read_bw, copy_bw = on_model_thread(lambda: measure_bandwidth(settings.bandwidth_bytes))
    reference = next((c for c in configs if c.name == "fp32"), None)
    rows = []
    for config in configs:
        seconds, first = best(config.seconds), best(config.first_token)
        decode = (tokens - 1) / (seconds - first) if seconds > first else float("nan")
        bound = read_bw / config.footprint
        config.bandwidth_share = decode / bound
        same = (
            "—"
            if reference is None or config is reference
            else ("same" if config.text == reference.text else "differs")
        )
        load = f"{config.load_seconds:.2f}"
        if config.compile_seconds is not None:
            load += f" + {config.compile_seconds:.0f} compile" + (
                " (inductor cache hit)" if config.compile_cache_hit else ""
            )
        rows.append(
            [
                config.name,
                config.label,
                load,
                f"{config.footprint / 2**20:.0f}",
                f"{tokens / seconds:.1f}",
                f"{decode:.1f}",
                f"{first * 1e3:.0f}",
                f"{100 * decode / bound:.0f} %",
                same,
                contention_note(samples[config.name]),
            ]
        )
    texts = "\n".join(f"- **{c.name}**: {c.text[:160]!r}" for c in configs)
    auto = next((c for c in configs if c.name == "auto"), None)
    header = [
        "config",
        "weights",
        "load s",
        "footprint MiB",
        "tok/s (end to end)",
        "decode tok/s",
        "first token ms",
        "% of bandwidth bound",
        f"greedy text vs fp32 ({tokens} tokens)",
        "samples",
    ]
    report.add(
        "Generation speed per configuration",
        f"Memory read bandwidth (sum over {settings.bandwidth_bytes / 2**30:.2f} GiB of float32, "
        f"best of 5): **{read_bw / 1e9:.1f} GB/s**; copy (read + write): {copy_bw / 1e9:.1f} GB/s.\n\n"
        + table(header, rows)
        + f"\n\nPrompt: {PROMPT!r}, greedy, `max_new_tokens=min_new_tokens={tokens}`, via "
        "`llm.generate`; times come from `llm.last_stats`. *decode tok/s* leaves out the first "
        "token (the prefill). The bandwidth bound is read bandwidth ÷ bytes read per token, taking "
        "bytes per token = the footprint (`hfllm_nb.footprint_bytes`: every weight is read "
        "once per step; the tied embedding matrix is read in full by the LM head). *samples*: how many "
        "timed calls ran while other processes used at most half a core; the fastest call is shown, "
        "since a busy neighbour only ever slows a call down.\n\n"
        + (f"`dtype='auto'` resolved to **{str(auto.llm.dtype).replace('torch.', '')}** here.\n\n" if auto else "")
        + "Greedy continuations (coherence check):\n\n"
        + texts,
    )
