"""Cost as the work grows: long prompts, long chats, decode over a long context, the KV cache, and
which dtype ``dtype="auto"`` picks here.

Every number is one of a set of interleaved rounds (each round times every configuration once, in
rotated order), so a busy machine slows all rows alike; the tables give the best round and the
ratios between rows of the same run. Each fresh prefill forgets the kept prefix first, so prefix
reuse (which the chat table measures on purpose) never shortens it.

    python benchmarks/run.py --only cost --output /tmp/cost.md
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import torch

from benchmarks import models
from benchmarks._timing import Report, Settings, best, on_model_thread, table
from hfllm_nb import HuggingFaceLLM
from hfllm_nb.engines.local import device as device_rules

logger = logging.getLogger("hfllm_nb.benchmarks")

# Prose the model reads easily; repeated with numbered sections to make prompts of any length.
_PARAGRAPH = (
    "Section {n}. The printing press spread across Europe in the fifteenth century. Workshops in "
    "Mainz, Venice and Paris printed books, pamphlets and maps, and the price of a book fell. "
)
_QUESTIONS = [
    "Who built the first printing press in Europe?",
    "Which cities had early print workshops?",
    "Why did the price of books fall?",
    "What kinds of things were printed?",
    "How fast did printing spread?",
    "Name one famous early printed book.",
    "What did scribes do after printing arrived?",
    "How did printing change science?",
    "What is movable type?",
    "Summarise our conversation in one sentence.",
]
DECODE_TOKENS = 32


def prompt_ids(llm: HuggingFaceLLM, tokens: int) -> list[int]:
    """Token ids of a coherent prompt exactly ``tokens`` long."""
    text = "".join(_PARAGRAPH.format(n=n) for n in range(tokens // 20 + 2))
    ids = llm.tokenizer(text)["input_ids"]
    assert len(ids) >= tokens, (len(ids), tokens)
    return ids[:tokens]


def _fresh(llm: HuggingFaceLLM, ids: list[int], new_tokens: int) -> Any:
    """One call on a prompt given as token ids, with no prefix kept from earlier calls."""
    llm._engine.forget_prefix()
    prompt = llm.tokenizer.decode(ids)
    llm.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens)
    return llm.last_stats


def _rounds(calls: dict[str, Callable[[], Any]], rounds: int) -> dict[str, list[Any]]:
    """Each call once per round, the order rotated every round (no warm-up: callers warm up)."""
    results: dict[str, list[Any]] = {name: [] for name in calls}
    names = list(calls)
    for done in range(rounds):
        for name in names[done % len(names) :] + names[: done % len(names)]:
            started = time.perf_counter()
            results[name].append(calls[name]())
            # Logged as it goes: a run cut short (a CI timeout) still leaves its measurements.
            logger.info("round %d, %s: %.2f s", done + 1, name, time.perf_counter() - started)
    return results


def _llama_cpp(context: int) -> Any:
    """llama.cpp on the default model's GGUF, loaded on the model thread; None when not installed."""
    try:
        from llama_cpp import Llama
    except ImportError:
        return None
    from hfllm_nb.default_model import find_default_gguf

    gguf = find_default_gguf()
    return on_model_thread(
        lambda: Llama(model_path=str(gguf), n_ctx=context, n_threads=torch.get_num_threads(), verbose=False)
    )


def _llama_cpp_prefill(model: Any, ids: list[int]) -> float:
    """Seconds llama.cpp takes to its first token on the same token ids (prefill, one sample)."""

    def here() -> float:
        model.reset()  # no prompt reuse between calls
        started = time.perf_counter()
        model.create_completion(ids, max_tokens=1, temperature=0.0, top_k=1)
        return time.perf_counter() - started

    return on_model_thread(here)


def _dtype_table(report: Report, settings: Settings, llms: dict[str, HuggingFaceLLM]) -> str:
    """1000-token prefill and 32-token decode per dtype, and where ``dtype="auto"`` lands."""
    auto = str(device_rules.resolve_dtype("auto", torch.device("cpu"))).replace("torch.", "")
    flags = sorted(device_rules.cpu_flags() & device_rules.NATIVE_BF16_FLAGS) or ["none"]
    size = settings.cost_dtype_prompt
    calls = {}
    for name, llm in llms.items():
        ids = prompt_ids(llm, size)
        calls[f"{name} prefill"] = lambda llm=llm, ids=ids: _fresh(llm, ids, 1).time_to_first_token
        short = prompt_ids(llm, 16)
        calls[f"{name} decode"] = lambda llm=llm, ids=short: _fresh(llm, ids, DECODE_TOKENS + 1)
    for fn in calls.values():  # warm-up
        fn()
    results = _rounds(calls, settings.cost_rounds)
    prefill = {name: best(results[f"{name} prefill"]) for name in llms}
    decode = {
        name: max(DECODE_TOKENS / (s.seconds - s.time_to_first_token) for s in results[f"{name} decode"])
        for name in llms
    }
    best_prefill, best_decode = min(prefill.values()), max(decode.values())
    rows = []
    for name in llms:
        rows.append(
            [
                name + (" ← auto" if name == auto else ""),
                f"{prefill[name]:.2f}",
                f"{size / prefill[name]:.0f}",
                f"{best_prefill / prefill[name]:.2f}",
                f"{decode[name]:.1f}",
                f"{decode[name] / best_decode:.2f}",
            ]
        )
    ok_prefill = best_prefill / prefill[auto] >= 0.8 if auto in prefill else False
    ok_decode = decode[auto] / best_decode >= 0.8 if auto in decode else False
    header = ["dtype", f"{size}-token TTFT s", "prefill tok/s", "× best", f"decode tok/s ({DECODE_TOKENS})", "× best"]
    return (
        f'`dtype="auto"` here: **{auto}** (native-bf16 CPU flags: {", ".join(flags)}; torch capability '
        f"{torch.backends.cpu.get_cpu_capability()}). Target: auto ≥ 0.8 × the best dtype for both — "
        f"prefill {'✓' if ok_prefill else '✗'}, decode {'✓' if ok_decode else '✗'}.\n\n"
        + table(header, rows)
        + f"\n\nBest of {settings.cost_rounds} interleaved rounds; × best is a ratio within this run."
    )


def _growth_table(
    report: Report, settings: Settings, llms: dict[str, HuggingFaceLLM]
) -> tuple[str, dict[str, list[float]]]:
    """TTFT and prefill tok/s per prompt size and dtype, llama.cpp alongside; decode at both ends."""
    sizes = settings.cost_sizes
    decode_at = (sizes[0], sizes[-1])
    llama = _llama_cpp(sizes[-1] + 64)
    calls: dict[str, Callable[[], Any]] = {}
    for name, llm in llms.items():
        for size in sizes:
            ids = prompt_ids(llm, size)
            new = DECODE_TOKENS + 1 if size in decode_at else 1
            calls[f"{name}@{size}"] = lambda llm=llm, ids=ids, new=new: _fresh(llm, ids, new)
    if llama is not None:
        any_llm = next(iter(llms.values()))
        for size in sizes:
            ids = prompt_ids(any_llm, size)
            calls[f"llama.cpp@{size}"] = lambda ids=ids: _llama_cpp_prefill(llama, ids)
    calls[f"{next(iter(llms))}@{sizes[0]}"]()  # warm-up of the smallest only: big ones are their own warm-up
    results = _rounds(calls, settings.cost_rounds)

    def ttft(name: str, size: int) -> float:
        values = results[f"{name}@{size}"]
        return best([v if isinstance(v, float) else v.time_to_first_token for v in values])

    names = [*llms, *(["llama.cpp"] if llama is not None else [])]
    curves = {name: [ttft(name, size) for size in sizes] for name in names}
    header = ["prompt tokens", *[f"{n} TTFT s" for n in names], *[f"{n} prefill tok/s" for n in names]]
    rows = [
        [size, *[f"{curves[n][i]:.2f}" for n in names], *[f"{size / curves[n][i]:.0f}" for n in names]]
        for i, size in enumerate(sizes)
    ]
    decode_rows = []
    for name in llms:
        rates = []
        for size in decode_at:
            stats = results[f"{name}@{size}"]
            rates.append(max(DECODE_TOKENS / (s.seconds - s.time_to_first_token) for s in stats))
        decode_rows.append([name, f"{rates[0]:.1f}", f"{rates[1]:.1f}", f"{rates[1] / rates[0]:.2f}"])
    best_in_process = sizes[-1] / min(curves[n][-1] for n in llms)
    text = table(header, rows)
    if llama is not None:
        ratio = min(curves["llama.cpp"][-1] / min(curves[n][-1] for n in llms), 99.0)
        text += (
            f"\n\nBest in-process prefill at {sizes[-1]} tokens: {best_in_process:.0f} tok/s, "
            f"{ratio:.2f} × llama.cpp's (same token ids, same GGUF weights as Q4_1; target ≥ 1)."
        )
    text += f"\n\nDecode over a long context ({DECODE_TOKENS} tokens after the prompt):\n\n" + table(
        ["dtype", f"decode tok/s @ {decode_at[0]}", f"@ {decode_at[1]}", "ratio"], decode_rows
    )
    report.facts["cost_curves"] = (sizes, curves)
    return text, curves


def _chat_table(report: Report, settings: Settings, reuse: HuggingFaceLLM, fresh: HuggingFaceLLM) -> str:
    """A chat of N turns after a long system prompt: TTFT per turn with prefix reuse and without."""
    history_text = "".join(_PARAGRAPH.format(n=n) for n in range(settings.cost_chat_history // 40 + 1))
    messages = [{"role": "system", "content": "Answer briefly, using these notes. " + history_text}]
    rows, with_reuse, without, same = [], [], [], True
    for turn, question in enumerate(_QUESTIONS[: settings.cost_chat_turns], start=1):
        messages.append({"role": "user", "content": question})
        fresh._engine.forget_prefix()
        order = [("reuse", reuse), ("fresh", fresh)] if turn % 2 else [("fresh", fresh), ("reuse", reuse)]
        replies, stats = {}, {}
        for name, llm in order:
            replies[name] = llm.chat(messages, max_new_tokens=settings.cost_reply_tokens)
            stats[name] = llm.last_stats
        same = same and replies["reuse"] == replies["fresh"]
        with_reuse.append(stats["reuse"].time_to_first_token)
        without.append(stats["fresh"].time_to_first_token)
        rows.append(
            [
                turn,
                stats["reuse"].prompt_tokens,
                stats["reuse"].prompt_tokens_reused,
                f"{without[-1]:.2f}",
                f"{with_reuse[-1]:.2f}",
                f"{with_reuse[-1] / without[-1]:.2f}",
                "same" if replies["reuse"] == replies["fresh"] else "differs",
            ]
        )
        messages.append({"role": "assistant", "content": replies["reuse"]})
        logger.info("chat turn %d: %s", turn, " | ".join(map(str, rows[-1])))
    report.check(same, "chat with prefix reuse gave other replies than without")
    tokens, nbytes = reuse._engine.cached_prefix
    turn2 = with_reuse[1] / without[1] if len(with_reuse) > 1 else float("nan")
    spread = max(with_reuse) / with_reuse[0]
    later = max(with_reuse[1:]) / with_reuse[1] if len(with_reuse) > 2 else float("nan")
    report.facts["cost_chat"] = (turn2, spread, later)
    header = ["turn", "prompt tokens", "reused", "TTFT s fresh", "TTFT s reuse", "reuse ÷ fresh", "reply"]
    return (
        table(header, rows) + f"\n\nTurn 2 with reuse: **{turn2:.2f} ×** a fresh object's TTFT (target ≤ 0.30 "
        f"{'✓' if turn2 <= 0.30 else '✗'}); every turn within {spread:.2f} × turn 1's (target ≤ 2 "
        f"{'✓' if spread <= 2 else '✗'}); turns 2+ within {later:.2f} × turn 2's. Greedy replies of "
        f"{settings.cost_reply_tokens} tokens, the two objects alternating which goes first. Kept after "
        f"the last turn: {tokens} tokens, {nbytes / 2**20:.1f} MiB."
    )


def _kv_table(llms: dict[str, HuggingFaceLLM], size: int) -> str:
    """KV-cache bytes per token as measured on the kept cache, against the config's prediction."""
    rows = []
    for name, llm in llms.items():
        config = llm.model.config
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        element = torch.tensor([], dtype=llm.dtype).element_size()
        predicted = 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim * element
        _fresh(llm, prompt_ids(llm, size), 1)
        tokens, nbytes = llm._engine.cached_prefix
        rss = psutil.Process().memory_info().rss
        rows.append(
            [
                name,
                f"{predicted}",
                f"{nbytes / max(tokens, 1):.0f}",
                tokens,
                f"{nbytes / 2**20:.0f}",
                f"{rss / 2**30:.2f}",
            ]
        )
        llm._engine.forget_prefix()
    header = ["dtype", "predicted bytes/token", "measured", "tokens kept", "KV MiB", "process RSS GiB"]
    return (
        table(header, rows)
        + "\n\nPredicted: 2 (keys and values) × layers × KV heads × head size × bytes per element, from "
        "the config; measured: the kept prefix cache's tensors after a call on the prompt. RSS is the "
        "whole benchmark process (every model it has loaded)."
    )


def _plot(path: Path, sizes: list[int], curves: dict[str, list[float]]) -> str:
    """Prompt tokens against seconds to the first token, one line per row; '' when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return ""
    figure, axes = plt.subplots(figsize=(6, 3.6))
    for name, seconds in curves.items():
        axes.plot(sizes, seconds, marker="o", label=name)
    axes.set_xlabel("prompt tokens")
    axes.set_ylabel("seconds to first token")
    axes.set_title("Prefill cost as the prompt grows (one run, best of rounds)")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, format="svg")
    plt.close(figure)
    return f"\n\n![prompt tokens against seconds to the first token]({path.name})"


def cost_section(report: Report, settings: Settings) -> None:
    names = {"float32": "fp32", "bfloat16": "bf16"}
    llms = {}
    for dtype, name in names.items():
        config = models.load(report, models.Config(name, {"dtype": dtype}))
        if config is not None:
            llms[dtype] = config.llm
    if not llms:
        return
    dtype_text = _dtype_table(report, settings, llms)
    logger.info("cost, dtype table:\n%s", dtype_text)
    growth_text, curves = _growth_table(report, settings, llms)
    logger.info("cost, prompt-length table:\n%s", growth_text)
    auto = str(device_rules.resolve_dtype("auto", torch.device("cpu"))).replace("torch.", "")
    chat_dtype = "float32" if "float32" in llms else next(iter(llms))  # prefix reuse is float32-only
    second = HuggingFaceLLM(dtype=chat_dtype)  # the object without reuse: its own weights, same dtype
    try:
        chat_text = _chat_table(report, settings, llms[chat_dtype], second)
    finally:
        second.close()
    kv_text = _kv_table(llms, settings.cost_sizes[-1])
    plot = ""
    output = report.facts.get("output")
    if output is not None and not settings.quick:
        plot = _plot(Path(output).with_name("cost_prefill.svg"), list(settings.cost_sizes), curves)
    turn2, spread, _ = report.facts["cost_chat"]
    logger.info("cost: auto=%s, chat turn-2 ratio %.2f, spread %.2f", auto, turn2, spread)
    report.add(
        "Cost as the work grows",
        '### Which dtype `dtype="auto"` picks, and what it costs\n\n'
        + dtype_text
        + "\n\n### Prompt length: time to first token and prefill speed\n\n"
        + growth_text
        + plot
        + f"\n\n### A chat of {settings.cost_chat_turns} turns, with and without prefix reuse ({chat_dtype})\n\n"
        + chat_text
        + "\n\n### KV cache per token\n\n"
        + kv_text,
    )


def main() -> None:
    """One table alone, printed: ``python -m benchmarks.cost dtype|chat [rounds] [dtype]`` from the repository root.

    A cross-check of a full run's figures. Under ``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2``
    the dtype table shows what a CPU without native bf16 pays in each dtype (its "auto" label still
    follows this CPU's flags).
    """
    import sys

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    part = sys.argv[1] if len(sys.argv) > 1 else "dtype"
    settings = Settings(cost_rounds=int(sys.argv[2]) if len(sys.argv) > 2 else 3)
    report = Report()
    if part == "dtype":
        llms = {dtype: HuggingFaceLLM(dtype=dtype) for dtype in ("float32", "bfloat16")}
        print(_dtype_table(report, settings, llms))
    elif part == "chat":
        dtype = sys.argv[3] if len(sys.argv) > 3 else "float32"
        print(_chat_table(report, settings, HuggingFaceLLM(dtype=dtype), HuggingFaceLLM(dtype=dtype)))
    else:
        raise SystemExit(f"unknown part {part!r}: dtype or chat")
    for failure in report.failures:
        print("FAILED:", failure)


if __name__ == "__main__":
    main()
