"""The wrapper against raw transformers: interleaved ratios, and where one call's time goes."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from benchmarks import models
from benchmarks._timing import PROMPT, Report, Settings, interleaved, ratio_row, table, timed


def _main(report: Report, settings: Settings) -> models.Config:
    loaded = models.by_name(report, settings)
    return loaded.get("auto") or next(iter(loaded.values()))


def _panel_calls(llm: Any, max_length: int) -> tuple[Any, dict[str, Callable[[], Any]], str]:
    """The panel driven from code, and the generate call it must equal (ipywidgets may be missing)."""
    try:
        from hfllm_nb.widgets.panel import LLMPanel

        panels = [LLMPanel(llm, prompt=PROMPT, max_length=max_length, probabilities=p) for p in (False, True)]
    except Exception as exc:
        return [], {}, f"\n\nPanel: not available ({type(exc).__name__}: {exc})."

    def via(panel: Any) -> Callable[[], str]:
        def run() -> str:
            if not panel.generate():
                raise RuntimeError(f"panel refused to start: {panel.error.value}")
            panel.wait()
            if panel.last_error is not None:
                raise panel.last_error
            return panel.result_text

        return run

    def by_length() -> str:
        return llm.generate(PROMPT, max_length=max_length, return_full_text=False)

    calls = {"panel": via(panels[0]), "panel+probabilities": via(panels[1]), "generate(max_length)": by_length}
    return panels, calls, ""


def ratio_section(report: Report, settings: Settings) -> None:
    """Wrapper vs raw transformers, stream vs generate, panel vs generate: interleaved."""
    config = _main(report, settings)
    llm, tokens = config.llm, settings.tokens

    def raw_generate(model: Any, tokenizer: Any) -> str:
        ids = tokenizer(PROMPT, return_tensors="pt")
        with torch.inference_mode():
            out = model.generate(
                **ids,
                max_new_tokens=tokens,
                min_new_tokens=tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )
        return tokenizer.decode(out[0], skip_special_tokens=True)

    def raw() -> str:
        # On the model thread, as every hfllm-nb call runs: a torch call on this thread would
        # give the process a second OpenMP team and slow every row after it.
        return llm.run(raw_generate)

    calls: dict[str, Callable[[], Any]] = {
        "raw": raw,
        "wrapper": lambda: llm.generate(PROMPT, max_new_tokens=tokens, min_new_tokens=tokens),
        "continuation": lambda: llm.generate(
            PROMPT, max_new_tokens=tokens, min_new_tokens=tokens, return_full_text=False
        ),
        "stream": lambda: "".join(llm.stream(PROMPT, max_new_tokens=tokens, min_new_tokens=tokens)),
    }
    max_length = llm.count_tokens(PROMPT) + tokens
    panels, panel_calls, panel_note = _panel_calls(llm, max_length)
    calls.update(panel_calls)
    times, outputs = interleaved(calls, settings.ratio_reps)
    report.check(outputs["raw"] == outputs["wrapper"], "llm.generate text differs from raw model.generate")
    report.check(outputs["stream"] == outputs["continuation"], "joined llm.stream differs from llm.generate")
    rows = [
        ratio_row(
            "`llm.generate` ÷ raw `model.generate` (tokenize + generate + decode)", times, "wrapper", "raw", 1.03
        ),
        ratio_row(
            "`''.join(llm.stream(...))` ÷ `llm.generate(..., return_full_text=False)`",
            times,
            "stream",
            "continuation",
            1.05,
        ),
    ]
    if panels:
        report.check(outputs["panel"] == outputs["generate(max_length)"], "panel text differs from llm.generate")
        report.check(outputs["panel+probabilities"] == outputs["panel"], "the probabilities toggle changed the text")
        label = "`panel.generate(); panel.wait()` ÷ `llm.generate(max_length=…)`"
        rows.append(ratio_row(label, times, "panel", "generate(max_length)", 1.05))
        # ≤ 10 % fewer tokens/s is at most 1/0.9 ≈ 1.11× the time.
        label = "panel with the probabilities toggle ÷ panel without"
        rows.append(ratio_row(label, times, "panel+probabilities", "panel", 1.11))
        for panel in panels:
            panel.close()
    rows += _explorer_rows(llm, settings)
    report.add(
        "Wrapper, stream and panel against the direct call",
        table(["ratio", "A best ms", "B best ms", "A ÷ B (best)", "A ÷ B (median of rounds)", "target"], rows)
        + f"\n\nModel: {config.name}; {tokens} new tokens; each pair timed in the same rounds "
        f"({settings.ratio_reps}), order rotated every round. The panel run uses "
        f"`max_length={max_length}` (prompt + {tokens}) since that is its control. Every call runs the "
        "model on the one model thread (raw `model.generate` too, through `llm.run`): had two threads "
        "run torch's parallel ops, each would own an OpenMP team, the process would hold more OpenMP "
        "threads than cores, and the GNU OpenMP runtime would stop spinning between ops (1.26× slower "
        "streams and panel before the model thread). The explorer row: `explorer.step()` (its forward "
        "pass, the next position's numbers and the redrawn bars; `explorer.reset()` between rounds, untimed) "
        "against one forward pass of one token over the same prompt's KV cache on the model thread." + panel_note,
    )


def _explorer_rows(llm: Any, settings: Settings) -> list[list[Any]]:
    """NextTokenExplorer's step against the one forward pass it needs (ipywidgets may be missing)."""
    try:
        from hfllm_nb import NextTokenExplorer
    except ImportError:
        return []
    from transformers import DynamicCache

    explorer = NextTokenExplorer(llm, PROMPT)
    prompt_ids = llm.tokenizer(PROMPT)["input_ids"]

    def prefill(model: Any, tokenizer: Any) -> Any:
        cache = DynamicCache(config=model.config)
        with torch.inference_mode():
            model(input_ids=torch.tensor([prompt_ids[:-1]]), cache=cache, use_cache=True)
        return cache

    cache = llm.run(prefill)

    def one_token(model: Any, tokenizer: Any) -> None:
        with torch.inference_mode():
            model(input_ids=torch.tensor([prompt_ids[-1:]]), cache=cache, use_cache=True)
        cache.crop(-1)  # back to the prompt: every call reads the same token

    def forward() -> None:
        llm.run(one_token)

    times: dict[str, list[float]] = {"explorer step": [], "forward": []}
    explorer.step(), forward()  # warm-up
    for round_number in range(settings.ratio_reps * 3):
        explorer.reset()  # back to the prompt, untimed: every step reads the same token
        pairs = [("explorer step", explorer.step), ("forward", forward)]
        for name, call in pairs if round_number % 2 == 0 else pairs[::-1]:
            times[name].append(timed(call)[0])
    explorer.close()
    label = "`NextTokenExplorer.step()` ÷ one forward pass of one token (model thread)"
    return [ratio_row(label, times, "explorer step", "forward", 1.10)]


def overhead_section(report: Report, settings: Settings) -> None:
    """Where one ``llm.generate`` call's time goes: the wrapper, generate's loop, the model."""
    config = _main(report, settings)
    llm, tokens, model = config.llm, settings.tokens, config.llm.model
    generate_times: list[float] = []
    forward_times: list[float] = []
    state: dict[str, float] = {}
    real_generate = model.generate

    def timed_generate(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return real_generate(*args, **kwargs)
        finally:
            generate_times.append(time.perf_counter() - started)

    def before(*_: Any) -> None:
        state["t"] = time.perf_counter()

    def after(*_: Any) -> None:
        forward_times.append(time.perf_counter() - state["t"])

    handles = [model.register_forward_pre_hook(before), model.register_forward_hook(after)]
    model.generate = timed_generate  # an instance attribute: shadows the method until deleted
    rounds = []
    try:
        for _ in range(max(2, settings.reps)):
            generate_times.clear()
            forward_times.clear()
            started = time.perf_counter()
            llm.generate(PROMPT, max_new_tokens=tokens, min_new_tokens=tokens)
            rounds.append((time.perf_counter() - started, sum(generate_times), sum(forward_times)))
    finally:
        del model.generate
        for handle in handles:
            handle.remove()
    total, inside_generate, forward = min(rounds)
    wrapper, loop = total - inside_generate, inside_generate - forward
    rows = [
        [f"one `llm.generate` call, {tokens} tokens", f"{total * 1e3:.0f}"],
        ["… the wrapper's own work (checks, tokenize, decode to text, stats)", f"{wrapper * 1e3:.2f}"],
        ["… inside `model.generate`", f"{inside_generate * 1e3:.0f}"],
        ["…… of which inside `model.forward`", f"{forward * 1e3:.0f}"],
        [
            "…… generate's own loop per token (logits processors, stopping criteria, cache bookkeeping)",
            f"{loop / tokens * 1e3:.2f}",
        ],
    ]
    report.facts["forward_share"] = f"{100 * forward / total:.0f} % of a generate call is inside `model.forward`"
    report.add(
        "Per-call cost of the wrapper",
        table(["step", "ms"], rows)
        + f"\n\nModel: {config.name}; fastest of {len(rounds)} calls. The wrapper's own work is "
        f"{100 * wrapper / total:.2f} % of a {tokens}-token call; generate's loop outside the model is "
        f"{100 * loop / total:.1f} %.",
    )
