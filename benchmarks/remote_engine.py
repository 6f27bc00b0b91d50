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

``--vllm-only``: the same three ways against vLLM's CPU server (float32; HFLLM_NB_VLLM_URL: a running one).

A second table serves the default model's GGUF with llama.cpp (llama-cpp-python's server):
the server's own rate (one non-streamed request), our client streaming from it, and a bare
``openai`` stream with the same neutral sampler fields (``repeat_penalty`` 1, ``min_p`` 0).

Our client's overhead target: remote ours / bare openai <= 1.05 in total time per request.
Exits non-zero when the three texts differ.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the transformers serve launcher the tests use

from _server import LlamaCppProcess, ServeProcess, VllmProcess  # noqa: E402

from hfllm_nb import HuggingFaceLLM  # noqa: E402
from hfllm_nb.default_model import find_default_gguf, prepare_default_model  # noqa: E402

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


def _bare_openai(client: Any, model: str, tokens: int, extra: dict | None = None) -> Any:
    stream = client.completions.create(
        model=model, prompt=PROMPT, max_tokens=tokens, temperature=0, stream=True, extra_body=extra
    )
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


_LLAMA_NEUTRAL = {"repeat_penalty": 1.0, "min_p": 0.0}  # what our client sends llama.cpp for greedy


def measure_llama_served(quick: bool) -> dict[str, Any]:
    """llama.cpp's server on the GGUF: its own rate, our client streaming from it, a bare openai stream."""
    server = LlamaCppProcess(find_default_gguf()).start()
    try:
        return measure_served(
            server.url, "llama.cpp server (llama-cpp-python, the GGUF as shipped) and our client", _LLAMA_NEUTRAL, quick
        )
    finally:
        server.stop()


def measure_vllm_served(quick: bool) -> dict[str, Any]:
    """vLLM's CPU server (float32): the same three ways; HFLLM_NB_VLLM_URL uses a running one."""
    external = os.environ.get("HFLLM_NB_VLLM_URL")
    server = None if external else VllmProcess(prepare_default_model()).start()
    try:
        return measure_served(external or server.url, "vLLM server (CPU build, float32) and our client", None, quick)
    finally:
        if server is not None:
            server.stop()


def measure_served(url: str, title: str, extra: dict | None, quick: bool) -> dict[str, Any]:
    """One server: its own rate (one non-streamed request), our client streaming, a bare openai stream."""
    import openai

    tokens, reps = (16, 3) if quick else (64, 6)
    remote = HuggingFaceLLM(endpoint=url)
    bare = openai.OpenAI(base_url=url, api_key="EMPTY", max_retries=0, timeout=120)
    served = remote.engine_description.rsplit(" · ", 1)[-1]
    ours, plain, whole = "our client (stream)", "bare openai (stream)", "server (one non-streamed request)"

    def server_call():
        reply = bare.completions.create(model=served, prompt=PROMPT, max_tokens=tokens, temperature=0, extra_body=extra)
        yield reply.choices[0].text

    try:
        runs, texts = _interleave(
            {
                whole: server_call,
                ours: lambda: remote.stream(PROMPT, max_new_tokens=tokens),
                plain: lambda: _bare_openai(bare, served, tokens, extra),
            },
            reps,
        )
    finally:
        bare.close()
        remote.close()
    rows = [
        {"engine": name, "seconds": min(t for _, t in samples), "ttft_s": min(f for f, _ in samples)}
        for name, samples in runs.items()
    ]
    best = {row["engine"]: row["seconds"] for row in rows}
    paired = [a[1] / b[1] for a, b in zip(runs[ours], runs[plain], strict=True)]
    ratios = {
        "ours_vs_bare": best[ours] / best[plain],
        "ours_vs_bare_paired_median": statistics.median(paired),
        "ours_vs_server": best[ours] / best[whole],
    }
    result = {
        "rows": rows,
        "ratios": ratios,
        "tokens": tokens,
        "reps": reps,
        "checks": {
            "same_text": len(set(texts.values())) == 1,
            "overhead_within_target": ratios["ours_vs_bare"] <= OVERHEAD_TARGET,
        },
    }
    lines = [
        f"## {title}",
        "",
        f"{tokens} greedy tokens on {PROMPT!r}; best of {reps} interleaved rounds; the server and this "
        "client share the machine's CPU.",
        "",
        "| way | tokens/s | time to first token (s) | seconds |",
        "|---|---|---|---|",
        *(f"| {r['engine']} | {tokens / r['seconds']:.1f} | {r['ttft_s']:.3f} | {r['seconds']:.2f} |" for r in rows),
        "",
        f"Ours / bare openai stream: {ratios['ours_vs_bare']:.3f} (target ≤ {OVERHEAD_TARGET}; paired median "
        f"{ratios['ours_vs_bare_paired_median']:.3f}); ours / the server's own rate: {ratios['ours_vs_server']:.3f}. "
        f"Same text all three ways: {'yes' if result['checks']['same_text'] else 'NO'}.",
    ]
    result["markdown"] = "\n".join(lines)
    return result


def remote_section(report: Any, settings: Any) -> None:
    """The section of ``benchmarks/run.py``: the full run only, since it starts servers (``--quick`` skips it)."""
    if settings.quick:
        return
    result = measure_remote(quick=False)
    report.check(result["checks"]["same_text"], "remote, bare openai and in-process texts differ")
    title, _, body = result["markdown"].partition("\n")
    report.add(title.removeprefix("## "), body)
    served = measure_llama_served(quick=False)
    report.check(served["checks"]["same_text"], "llama.cpp: server, our client and bare openai texts differ")
    title, _, body = served["markdown"].partition("\n")
    report.add(title.removeprefix("## "), body)
    from _server import VLLM_VENV

    if (VLLM_VENV / ".hfllm-nb-vllm").is_file():  # built by .ci/vllm.sh (dev.sh setup)
        served = measure_vllm_served(quick=False)
        report.check(served["checks"]["same_text"], "vLLM: server, our client and bare openai texts differ")
        title, _, body = served["markdown"].partition("\n")
        report.add(title.removeprefix("## "), body)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer tokens and rounds: checks every code path")
    parser.add_argument("--llama-only", action="store_true", help="only the llama.cpp server table")
    parser.add_argument("--vllm-only", action="store_true", help="only the vLLM server table")
    args = parser.parse_args(argv)
    if args.vllm_only:
        results = [measure_vllm_served(args.quick)]
    else:
        results = [] if args.llama_only else [measure_remote(args.quick)]
        results.append(measure_llama_served(args.quick))
    print("\n\n".join(result["markdown"] for result in results))
    return 0 if all(result["checks"]["same_text"] for result in results) else 1


if __name__ == "__main__":
    sys.exit(main())
