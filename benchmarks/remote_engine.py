"""Remote engine vs in-process, and our client vs a bare ``openai`` stream, side by side.

Starts ``transformers serve`` on this machine (the default model, float32, CPU), loads the same
model in-process in float32, and times three ways of streaming the same greedy continuation.
Two pairs, each interleaved with its order reversed every other round, so a busy machine slows
both sides alike: first our client against a bare openai stream, with nothing else in this
process (in-process OpenMP threads spinning after a run would steal the server's cores), then
remote against in-process:

- in-process ``HuggingFaceLLM(dtype="float32").stream``
- remote ``HuggingFaceLLM(endpoint=...).stream`` (our client: a reader thread, Stop checks)
- a bare ``openai`` client stream against the same server (the floor for any HTTP client)

    python benchmarks/remote_engine.py            # ~4 min on 2 idle cores
    python benchmarks/remote_engine.py --quick    # every code path, ~1 min

Our client's overhead target: remote ours / bare openai <= 1.05 in total time per request.
Exits non-zero when the three texts differ.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the transformers serve launcher the tests use

from _server import ServeProcess  # noqa: E402

from hfllm_nb import HuggingFaceLLM  # noqa: E402
from hfllm_nb.default_model import prepare_default_model  # noqa: E402

PROMPT = "The history of the printing press began in"  # SmolLM2 continues it for well over 64 tokens
OVERHEAD_TARGET = 1.05


def _time_stream(pieces: Any) -> tuple[str, float, float]:
    """(text, seconds to the first piece, seconds in all) for an iterator of text pieces."""
    started = time.perf_counter()
    first = None
    text = []
    for piece in pieces:
        if piece and first is None:
            first = time.perf_counter() - started
        text.append(piece)
    return "".join(text), first or 0.0, time.perf_counter() - started


def _bare_openai(client: Any, model: str, tokens: int) -> Any:
    stream = client.completions.create(model=model, prompt=PROMPT, max_tokens=tokens, temperature=0, stream=True)
    for chunk in stream:
        if chunk.choices:
            yield chunk.choices[0].text or ""


def _interleave(calls: dict[str, Any], reps: int) -> tuple[dict[str, list[tuple[float, float]]], dict[str, str]]:
    """Run each call once per round, the order reversed every other round; (first, total) per call."""
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in calls}
    texts: dict[str, str] = {}
    for call in calls.values():  # warm-up: first-request costs on both sides
        _time_stream(call())
    names = list(calls)
    for rep in range(reps):
        for name in names if rep % 2 == 0 else names[::-1]:
            text, first, total = _time_stream(calls[name]())
            texts[name] = text
            runs[name].append((first, total))
    return runs, texts


def measure_remote(quick: bool) -> dict[str, Any]:
    """Run the comparison; return rows, ratios, checks and a markdown section.

    Two interleaved pairs, so neither comparison pays for the other: our client against a bare
    openai stream (nothing else runs in this process meanwhile), then remote against in-process.

    >>> result = measure_remote(quick=True)   # doctest: +SKIP
    >>> print(result["markdown"])             # doctest: +SKIP
    """
    import openai

    tokens, reps = (16, 4) if quick else (64, 6)
    folder = prepare_default_model()
    server = ServeProcess(folder).start()
    try:
        remote = HuggingFaceLLM(endpoint=server.url)
        bare = openai.OpenAI(base_url=server.url, api_key="EMPTY", max_retries=0, timeout=120)
        served = remote.engine_description.rsplit(" · ", 1)[-1]
        ours = "remote (hfllm-nb)"

        def ours_call():
            return remote.stream(PROMPT, max_new_tokens=tokens)

        client_runs, client_texts = _interleave(
            {ours: ours_call, "remote (bare openai)": lambda: _bare_openai(bare, served, tokens)}, reps
        )
        full_length = remote.last_stats.new_tokens == tokens  # the text ran to the budget, not to an end token
        local = HuggingFaceLLM(dtype="float32", device="cpu")  # where the server runs
        engine_runs, engine_texts = _interleave(
            {"in-process": lambda: local.stream(PROMPT, max_new_tokens=tokens), ours: ours_call}, reps
        )
        bare.close()
        local.close()
        remote.close()
    finally:
        server.stop()
    best = {}
    for name, samples in [*client_runs.items(), *engine_runs.items()]:
        first = min(s[0] for s in samples)
        total = min(s[1] for s in samples)
        if name not in best or total < best[name]["seconds"]:
            best[name] = {
                "engine": name,
                "tokens": tokens,
                "seconds": total,
                "tokens_per_s": tokens / total,
                "ttft_s": first,
            }
    paired = [a[1] / b[1] for a, b in zip(client_runs[ours], client_runs["remote (bare openai)"], strict=True)]
    ratios = {
        "remote_vs_in_process_seconds": min(s[1] for s in engine_runs[ours]) / best["in-process"]["seconds"],
        "remote_vs_in_process_ttft": min(s[0] for s in engine_runs[ours]) / best["in-process"]["ttft_s"],
        "ours_vs_bare_openai_seconds": min(s[1] for s in client_runs[ours]) / best["remote (bare openai)"]["seconds"],
        "ours_vs_bare_openai_ttft": min(s[0] for s in client_runs[ours]) / best["remote (bare openai)"]["ttft_s"],
        "ours_vs_bare_openai_paired_median": statistics.median(paired),
    }
    same_text = len({*client_texts.values(), *engine_texts.values()}) == 1 and full_length
    result = {
        "rows": [best["in-process"], best[ours], best["remote (bare openai)"]],
        "ratios": ratios,
        "checks": {
            "same_text": same_text,
            "overhead_within_target": ratios["ours_vs_bare_openai_seconds"] <= OVERHEAD_TARGET,
        },
        "reps": reps,
        "command": "python benchmarks/remote_engine.py" + (" --quick" if quick else ""),
    }
    result["markdown"] = _markdown(result)
    return result


def _markdown(result: dict[str, Any]) -> str:
    lines = [
        "## Remote engine (`transformers serve` on this machine) vs in-process",
        "",
        f"Default model, float32, CPU, greedy, {result['rows'][0]['tokens']} new tokens; best of {result['reps']} "
        "interleaved rounds per pair (our client vs bare openai first, then remote vs in-process). "
        f"Command: `{result['command']}`.",
        "",
        "| engine | tokens/s | time to first token (s) | seconds |",
        "|---|---|---|---|",
    ]
    for row in result["rows"]:
        lines.append(f"| {row['engine']} | {row['tokens_per_s']:.1f} | {row['ttft_s']:.3f} | {row['seconds']:.2f} |")
    r = result["ratios"]
    lines += [
        "",
        "| ratio | value | target |",
        "|---|---|---|",
        f"| remote (ours) / in-process, seconds | {r['remote_vs_in_process_seconds']:.2f} | (report) |",
        f"| remote (ours) / in-process, time to first token | {r['remote_vs_in_process_ttft']:.2f} | (report) |",
        f"| ours / bare openai stream, seconds | {r['ours_vs_bare_openai_seconds']:.3f} | ≤ {OVERHEAD_TARGET} |",
        f"| ours / bare openai stream, time to first token | {r['ours_vs_bare_openai_ttft']:.3f} | (report) |",
        f"| ours / bare openai stream, median of paired rounds | {r['ours_vs_bare_openai_paired_median']:.3f} "
        "| (report) |",
        "",
        f"Same text from all three: {'yes' if result['checks']['same_text'] else 'NO'}.",
    ]
    return "\n".join(lines)


def remote_section(report: Any, settings: Any) -> None:
    """The section of ``benchmarks/run.py``: the full run only, since it starts a server (``--quick`` skips it)."""
    if settings.quick:
        return
    result = measure_remote(quick=False)
    report.check(result["checks"]["same_text"], "remote, bare openai and in-process texts differ")
    title, _, body = result["markdown"].partition("\n")
    report.add(title.removeprefix("## "), body)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer tokens and rounds: checks every code path")
    args = parser.parse_args(argv)
    result = measure_remote(args.quick)
    print(result["markdown"])
    return 0 if result["checks"]["same_text"] else 1


if __name__ == "__main__":
    sys.exit(main())
