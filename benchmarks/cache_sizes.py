"""compile=True's static caches: a short prompt after a long one decodes as fast as before it.

transformers alone never shrinks a model's static cache, so after one long prompt every short
one attended over the long cache's slots. ``_fast_decode.FastDecode`` keeps one cache per size.
"""

from __future__ import annotations

import statistics
from typing import Any

from benchmarks import models
from benchmarks._timing import PROMPT, Report, Settings, best, contention_note, sample, table

LONG_PROMPT_TOKENS = 1350  # the case: past 1024, so the 2048-token cache
QUICK_LONG_PROMPT_TOKENS = 300  # the --quick tiny model's context is 512


def _rounds(settings: Settings) -> int:
    # Twice the other sections' repetitions: the ratio compares two best-of samples, and one lucky
    # sample of either side moved it by 0.1 with 4 rounds (bf16, median of rounds 1.02, best 0.91).
    return 2 * (settings.reps + 1)


def _long_prompt(llm: Any, tokens: int) -> str:
    words = " ".join(["The printing press changed how knowledge spread across Europe."] * tokens)
    return llm.tokenizer.decode(llm.tokenizer(words)["input_ids"][:tokens])


def _row(report: Report, settings: Settings, config: models.Config, long_tokens: int) -> list[Any] | None:
    """Short-prompt speed on ``config`` after long prompts, against a twin that never sees one.

    The twin, loaded with the same settings, is timed in the same rounds: this machine's speed
    drifts between runs of minutes (bf16 decode here swung between ~30 and ~36 tok/s with no
    long prompt at all), so a 'before' measured minutes earlier could not tell drift from a cache
    that failed to shrink. A cache that stays long slows only the object that saw the long prompt.
    """
    twin = models.load(report, models.Config(f"{config.name} (twin)", dict(config.kwargs)))
    if twin is None:
        return None
    llm, tokens = config.llm, settings.tokens

    def short(model: Any) -> Any:
        return lambda: model.generate(PROMPT, max_new_tokens=tokens, min_new_tokens=tokens)

    long_prompt = _long_prompt(llm, long_tokens)
    expected = short(twin.llm)()
    report.check(short(llm)() == expected, f"{config.name}: two loads of one configuration disagree")
    first_long = sample(lambda: llm.generate(long_prompt, max_new_tokens=4))[0]
    never, after = [], []
    for round_number in range(_rounds(settings)):
        if round_number % 2 == 0:  # the twin's sample goes before the long prompt or after the short one
            never.append(sample(short(twin.llm))[0])
        llm.generate(long_prompt, max_new_tokens=4)
        after_sample, text = sample(short(llm))
        after.append(after_sample)
        report.check(text == expected, f"{config.name}: the short prompt's text changed after a long one")
        if round_number % 2 == 1:
            never.append(sample(short(twin.llm))[0])
    speed_never = tokens / best([s.seconds for s in never])
    speed_after = tokens / best([s.seconds for s in after])
    ratio = speed_after / speed_never
    by_round = statistics.median(n.seconds / a.seconds for n, a in zip(never, after, strict=True))
    verdict = "✓" if ratio >= 0.90 else "✗"
    return [
        config.name,
        f"{speed_never:.1f}",
        f"{speed_after:.1f}",
        f"{ratio:.2f} {verdict}",
        f"{by_round:.2f}",
        f"{first_long.seconds:.1f}",
        contention_note(never + after),
    ]


def cache_section(report: Report, settings: Settings) -> None:
    """Short-prompt decode speed before and after a long prompt, per compiled configuration."""
    wanted = [c for c in models.main_configs(report, settings) if c.kwargs.get("compile")]
    long_tokens = QUICK_LONG_PROMPT_TOKENS if settings.tiny_fast_model else LONG_PROMPT_TOKENS
    if not settings.tiny_fast_model:  # the real model's 4-bit too (the quantization section loads it)
        four_bit = {"quantization_config": {"load_in_4bit": True}, "compile": True}
        wanted.append(models.load(report, models.Config("4-bit + compile=True", four_bit)))
    rows = [_row(report, settings, config, long_tokens) for config in wanted if config is not None]
    rows = [row for row in rows if row is not None]
    report.add(
        "Static cache sizes (compile=True): short prompts after a long one",
        table(
            [
                "configuration",
                "short: tok/s, a twin that never saw a long prompt",
                "short: tok/s right after a long prompt",
                "after ÷ never (best; target ≥ 0.90)",
                "after ÷ never (median of rounds)",
                f"first {long_tokens}-token prompt, s",
                "samples",
            ],
            rows,
        )
        + f"\n\n{settings.tokens} new tokens on the benchmark prompt, best of {_rounds(settings)} rounds; each "
        f"'after' sample directly follows a {long_tokens}-token prompt on the same object, and a second "
        "object loaded with the same settings, which never sees a long prompt, is timed in the same rounds "
        "(so drift of the machine's speed cancels). The first long prompt compiles the decode step for "
        "its cache size once (logged); later calls of either size reuse their graph and cache.",
    )
