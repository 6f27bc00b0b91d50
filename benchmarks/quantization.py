"""CPU quantization side by side: decode speed, footprint and greedy text against float32.

Every row decodes the same prompt in the same interleaved rounds, so a busy neighbour slows all
rows of a round alike; ratios are taken within rounds, and rounds in which another process held
more than half a core are repeated (up to ``quant_extra_rounds``) and flagged.
"""

from __future__ import annotations

import contextlib
import logging
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from benchmarks import models
from benchmarks._timing import PROMPT, Report, Sample, Settings, contention_note, on_model_thread, sample, table

logger = logging.getLogger("hfllm_nb.benchmarks")

PROMPTS = [PROMPT, "def fibonacci(n):", "Photosynthesis is the process by which"]
# (row name, HuggingFaceLLM keywords); the first four share their loaded model with other sections.
ROWS = [
    ("fp32", {"dtype": "float32"}),
    ("bf16", {"dtype": "bfloat16"}),
    ("8-bit", {"quantization_config": {"load_in_8bit": True}}),
    ("4-bit", {"quantization_config": {"load_in_4bit": True}}),
    ("8-bit, bitsandbytes", {"quantization_config": {"load_in_8bit": True, "backend": "bitsandbytes"}}),
    ("4-bit, bitsandbytes", {"quantization_config": {"load_in_4bit": True, "backend": "bitsandbytes"}}),
]
COMPILED = [
    ("8-bit + compile=True", {"quantization_config": {"load_in_8bit": True}, "compile": True}),
    ("4-bit + compile=True", {"quantization_config": {"load_in_4bit": True}, "compile": True}),
    # The same with transformers' SDPA attention kept: what the fused decode attention gains.
    (
        "4-bit + compile=True, attn_implementation='sdpa'",
        {"quantization_config": {"load_in_4bit": True}, "compile": True, "attn_implementation": "sdpa"},
    ),
]


@dataclass
class Row:
    name: str
    label: str
    footprint: int | None
    decode: Callable[[], float]  # one timed generation; returns decode tokens/s
    texts: list[str] = field(default_factory=list)
    rates: dict[int, list[float]] = field(default_factory=dict)  # by torch thread count
    samples: dict[int, list[Sample]] = field(default_factory=dict)
    note: str = ""
    fixed_threads: bool = False  # llama.cpp chose its threads at load

    def best(self, threads: int) -> float:
        """Best decode rate: contention only ever slows a run, so the fastest is the least disturbed."""
        return max(self.rates.get(threads, []), default=float("nan"))


@contextlib.contextmanager
def _cold_inductor_cache() -> Iterator[None]:
    """Compile into an empty inductor cache: no generated code from earlier runs is reused.

    Kernels this process already built (the bf16 fast path) still are, so a fresh Python takes
    longer; the note names that.
    """
    saved = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    with tempfile.TemporaryDirectory(prefix="hfllm-bench-inductor-") as folder:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = folder
        try:
            yield
        finally:
            if saved is None:
                os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
            else:
                os.environ["TORCHINDUCTOR_CACHE_DIR"] = saved


def _hf_row(config: models.Config, tokens: int, text_tokens: int) -> Row:
    llm = config.llm

    def decode() -> float:
        llm.generate(PROMPT, max_new_tokens=tokens, min_new_tokens=tokens)
        stats = llm.last_stats
        return (tokens - 1) / (stats.seconds - (stats.time_to_first_token or 0.0))

    row = Row(config.name, config.label, config.footprint, decode)
    row.texts = [
        llm.generate(p, max_new_tokens=text_tokens, min_new_tokens=text_tokens, return_full_text=False) for p in PROMPTS
    ]
    if config.compile_seconds is not None:
        row.note = f"compile {config.compile_seconds:.0f} s (empty inductor cache; this process compiled before)"
    return row


def _llama_cpp_row(tokens: int, text_tokens: int) -> Row | None:
    """llama.cpp on the same GGUF (llama-cpp-python, installed by .ci/llama-cpp.sh); None where it is missing.

    Its ggml links ``libgomp.so.1``, which resolves to the copy torch already loaded: so it loads
    and runs on the model thread (``on_model_thread``), as hfllm-nb's models do.
    """
    try:
        from llama_cpp import Llama
    except ImportError:
        return None
    from hfllm_nb.default_model import find_default_gguf

    gguf = find_default_gguf()
    model = on_model_thread(
        lambda: Llama(model_path=str(gguf), n_ctx=512, n_threads=torch.get_num_threads(), verbose=False)
    )

    def complete(prompt: str, count: int) -> tuple[float, str]:
        def here() -> tuple[float, str]:
            model.reset()  # no prompt reuse between calls: each pays its prefill
            started = time.perf_counter()
            out = model.create_completion(prompt, max_tokens=count, temperature=0.0, top_k=1)
            return time.perf_counter() - started, out["choices"][0]["text"]

        return on_model_thread(here)

    def decode() -> float:
        one, _ = complete(PROMPT, 1)
        full, _ = complete(PROMPT, tokens)
        return (tokens - 1) / max(full - one, 1e-9)

    row = Row("llama.cpp", f"{gguf.name} (Q4_1), llama-cpp-python", gguf.stat().st_size, decode, fixed_threads=True)
    row.texts.extend(complete(prompt, text_tokens)[1] for prompt in PROMPTS)
    return row


def _rows(report: Report, settings: Settings) -> list[Row]:
    rows = []
    for name, kwargs in ROWS:
        config = models.load(report, models.Config(name, kwargs))
        if config is not None:
            rows.append(_hf_row(config, settings.tokens, settings.text_tokens))
    if settings.quant_compile:
        for name, kwargs in COMPILED:
            with _cold_inductor_cache():
                config = models.load(report, models.Config(name, kwargs))
            if config is not None:
                rows.append(_hf_row(config, settings.tokens, settings.text_tokens))
    try:
        llama = _llama_cpp_row(settings.tokens, settings.text_tokens)
    except Exception as exc:  # measured in every full run: a failure is a failed check, not a gap
        report.check(False, f"llama.cpp row failed: {type(exc).__name__}: {exc}")
        llama = None
    if llama is not None:
        rows.append(llama)
    elif not settings.quick:
        report.check(False, "llama.cpp row: llama-cpp-python is not installed (bash .ci/llama-cpp.sh .venv/bin/python)")
    return rows


def _measure(rows: list[Row], settings: Settings, thread_counts: list[int]) -> int:
    """Interleaved rounds until ``quant_rounds`` quiet ones (or the extra budget) ran; returns rounds.

    Each round times every row at each thread count, the row order rotated every round.
    """
    default = torch.get_num_threads()
    quiet, done = 0, 0
    try:
        while quiet < settings.quant_rounds and done < settings.quant_rounds + settings.quant_extra_rounds:
            order = rows[done % len(rows) :] + rows[: done % len(rows)]
            contended = False
            for threads in thread_counts:
                torch.set_num_threads(threads)
                for row in order:
                    if row.fixed_threads and threads != default:
                        continue
                    measured, rate = sample(row.decode)
                    row.samples.setdefault(threads, []).append(measured)
                    row.rates.setdefault(threads, []).append(rate)
                    contended |= measured.contended
            done += 1
            quiet += not contended
    finally:
        torch.set_num_threads(default)
    return done


def _same_text(row: Row, reference: Row | None) -> list[bool]:
    if reference is None:
        return [False] * len(PROMPTS)
    return [a == b for a, b in zip(row.texts, reference.texts, strict=True)]


def _ratio(row: Row, fp32: Row, threads: int) -> str:
    return f"{row.best(threads) / fp32.best(threads):.2f}×" if threads in row.rates else "—"


def quantization_section(report: Report, settings: Settings) -> None:
    rows = _rows(report, settings)
    named = {r.name: r for r in rows}
    fp32, bf16 = named.get("fp32"), named.get("bf16")
    if fp32 is None:
        report.check(False, "quantization section: the fp32 reference did not load")
        return
    many = torch.get_num_threads()
    counts = sorted({many, 1}, reverse=True)
    rounds = _measure(rows, settings, counts)
    lines, texts = [], []
    for row in rows:
        per_round = statistics.median(r / f for r, f in zip(row.rates[many], fp32.rates[many], strict=True))
        as_fp32 = [a or b for a, b in zip(_same_text(row, fp32), _same_text(row, bf16), strict=True)]
        cells = [row.name, row.label, f"{row.footprint / 2**20:.0f}", f"{row.footprint / fp32.footprint:.2f}×"]
        cells += [f"{row.best(many):.1f}", _ratio(row, fp32, many), f"{per_round:.2f}×"]
        if many != 1:
            cells += [f"{row.best(1):.1f}" if 1 in row.rates else "—", _ratio(row, fp32, 1)]
        cells += [f"{sum(as_fp32)}/{len(PROMPTS)}", contention_note(row.samples[many]), row.note]
        lines.append(cells)
        texts.append(f"- **{row.name}**: " + " · ".join(repr(t[:70]) for t in row.texts))
    header = ["row", "weights", "footprint MiB", "÷ fp32", f"decode tok/s, {many} threads", "÷ fp32 (best)"]
    header += ["÷ fp32 (median of rounds)"]
    if many != 1:
        header += ["decode tok/s, 1 thread", "÷ fp32"]
    header += [f"greedy text = fp32 or bf16 ({settings.text_tokens} tokens, {len(PROMPTS)} prompts)"]
    header += [f"samples ({many} threads)", ""]
    report.add(
        "CPU quantization against float32",
        table(header, lines)
        + "\n\n"
        + _targets(report, rows, many)
        + f"\n\n{rounds} interleaved rounds of {settings.tokens} greedy tokens on {PROMPT!r}, each at "
        f"{' and '.join(map(str, counts))} torch thread(s); decode tok/s leaves out the first token and is "
        "the best round (a busy neighbour only ever slows a run down). One thread shows what each format "
        "does per core: with two threads, each matrix product also waits for the slower thread, which a "
        "busy neighbour makes much slower. Footprints are `hfllm_nb.footprint_bytes` "
        "(quantized tensors at their stored size; the tied embedding once). Greedy continuations:\n\n"
        + "\n".join(texts),
    )


def _targets(report: Report, rows: list[Row], threads: int) -> str:
    """Issue 12's targets: speed ones reported, footprint ones checked (they are exact)."""
    named = {r.name: r for r in rows}
    fp32 = named["fp32"]
    lines = []

    def speed(row: Row) -> str:
        one = f"; 1 thread {row.best(1) / fp32.best(1):.2f}×" if threads != 1 and 1 in row.rates else ""
        return f"{threads} threads {row.best(threads) / fp32.best(threads):.2f}×{one}"

    def target(what: str, ok: bool, enforce: bool = False) -> None:
        lines.append(f"- {what}: {'✓' if ok else '✗'}")
        if enforce:
            report.check(ok, f"target missed: {what}")

    for name, fast, size in (("8-bit", 1.5, 0.40), ("4-bit", 2.0, 0.30)):
        row = named.get(name)
        if row is None:
            continue
        ratio = row.best(threads) / fp32.best(threads)
        target(f"{name} ({row.label}) decodes ≥ {fast}× float32 ({speed(row)})", ratio >= fast)
        share = row.footprint / fp32.footprint
        target(f"{name} footprint ≤ {size}× float32 (measured {share:.2f}×)", share <= size, enforce=True)
    defaults = [r for r in rows if r.name not in ("fp32", "bf16", "llama.cpp") and "bitsandbytes" not in r.name]
    slowest = min(defaults, key=lambda r: r.best(threads), default=None)
    if slowest is not None:
        ok = slowest.best(threads) >= fp32.best(threads)
        target(f"no default quantized mode slower than float32 (slowest: {slowest.name}, {speed(slowest)})", ok)
    for row in (r for r in rows if "bitsandbytes" in r.name):  # forced with "backend": reported, not a default
        ok = row.best(threads) >= fp32.best(threads)
        target(f"{row.name} (forced) not slower than float32 ({speed(row)})", ok)
    eight = named.get("8-bit")
    if eight is not None:
        same = [a or b for a, b in zip(_same_text(eight, fp32), _same_text(eight, named.get("bf16")), strict=True)]
        target(f"8-bit greedy text equals fp32 or bf16 on ≥ 2 of 3 prompts ({sum(same)}/3)", sum(same) >= 2)
    fastest = max((r for r in rows if r.name != "llama.cpp"), key=lambda r: max(r.best(t) for t in r.rates))
    top = max(fastest.best(t) for t in fastest.rates)
    target(f"stretch: ≥ 64 decode tok/s in some mode (fastest: {fastest.name}, {top:.1f})", top >= 64)
    return "Targets (issue 12; speed targets are reported, footprint targets fail the run):\n\n" + "\n".join(lines)
