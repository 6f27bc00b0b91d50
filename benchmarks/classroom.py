"""A classroom on one server: N clients (one ``HuggingFaceLLM(endpoint=...)`` each) streaming at once.

N = 1, 4 and 16 clients, each streaming 64 greedy tokens from the same server, all released
together; one client in each round (N > 1) presses Stop after its first tokens. Reported per N:
aggregate tokens/s (all tokens received ÷ the round's wall time), each client's time to first
token (median and worst), errors (must be 0), and whether Stop ended only that client's request
(every other client ran to its budget or to its end of text). vLLM batches concurrent requests (continuous batching);
llama-cpp-python's server runs one request at a time and, by default, lets a new request interrupt
the running one, so it is started with ``--interrupt_requests False`` and queues them instead.

    python benchmarks/classroom.py                      # both servers, N = 1, 4, 16 (~10 min on 2 cores)
    python benchmarks/classroom.py --quick              # N = 1, 4, 16 tokens: every code path
    python benchmarks/classroom.py --server vllm        # one of them (HFLLM_NB_VLLM_URL: a running vLLM)

Clients are threads in this process, as separate notebook kernels would be separate processes:
each has its own object, tokenizer and connection, and this process only parses the streams.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from _server import LlamaCppProcess, VllmProcess, running_vllm  # noqa: E402

from hfllm_nb import HuggingFaceLLM  # noqa: E402
from hfllm_nb.default_model import find_default_gguf, prepare_default_model  # noqa: E402
from hfllm_nb.engines import STOPPED  # noqa: E402

PROMPTS = [
    "The history of the printing press began in",
    "Once upon a time, in a land far away,",
    "The best way to learn a language is",
    "In the beginning of the twentieth century,",
]
STOP_AFTER = 3  # pieces the stopping client reads before it presses Stop


class QueueingLlamaCpp(LlamaCppProcess):
    """llama-cpp-python's server, queueing concurrent requests instead of interrupting the running one."""

    def command(self) -> list[str]:
        return [*super().command(), "--interrupt_requests", "False"]


def run_round(url: str, clients: int, tokens: int, stopper: bool) -> dict[str, Any]:
    """One round: ``clients`` objects stream ``tokens`` each at once; client 0 stops early if ``stopper``."""
    models = [HuggingFaceLLM(endpoint=url, timeout=600) for _ in range(clients)]  # loaded before the clock
    results: list[Any] = [None] * clients
    barrier = threading.Barrier(clients + 1)

    def client(index: int) -> None:
        llm = models[index]
        try:
            barrier.wait(120)
            started = time.perf_counter()
            first = None
            for count, _ in enumerate(llm.stream(PROMPTS[index % len(PROMPTS)], max_new_tokens=tokens), 1):
                first = first if first is not None else time.perf_counter() - started
                if stopper and index == 0 and count == STOP_AFTER:
                    llm.stop()
            stats = llm.last_stats
            results[index] = {"ttft": first, "tokens": stats.new_tokens, "reason": stats.finish_reasons[0]}
        except BaseException as exc:  # counted as an error of the round
            results[index] = exc

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    barrier.wait(120)
    started = time.perf_counter()
    for thread in threads:
        thread.join(900)
    wall = time.perf_counter() - started
    for llm in models:
        llm.close()
    errors = [r for r in results if not isinstance(r, dict)]
    done = [r for r in results if isinstance(r, dict)]
    others = done[1:] if stopper else done
    ttfts = [r["ttft"] for r in done if r["ttft"] is not None]
    return {
        "clients": clients,
        "tokens": sum(r["tokens"] for r in done),
        "wall_s": wall,
        "tokens_per_s": sum(r["tokens"] for r in done) / wall,
        "ttft_median_s": statistics.median(ttfts) if ttfts else float("nan"),
        "ttft_max_s": max(ttfts) if ttfts else float("nan"),
        "errors": len(errors),
        "error_text": [repr(e)[:200] for e in errors],
        # Stop ended client 0's request, and no other one: each of those ran to its budget or its end of text.
        "stop_own_only": (not stopper)
        or (bool(done) and done[0]["reason"] == STOPPED and all(r["reason"] != STOPPED for r in others)),
        "reasons": sorted({r["reason"] for r in others}),
    }


def measure(name: str, url: str, counts: list[int], tokens: int) -> list[dict[str, Any]]:
    rows = []
    run_round(url, 1, 4, stopper=False)  # warm-up: first-request costs
    for clients in counts:
        row = run_round(url, clients, tokens, stopper=clients > 1)
        row["server"] = name
        rows.append(row)
        print(
            f"{name}: N={clients} {row['tokens_per_s']:.1f} tok/s, TTFT median {row['ttft_median_s']:.2f} s "
            f"max {row['ttft_max_s']:.2f} s, errors {row['errors']}, Stop own only: {row['stop_own_only']} "
            f"(the others ended by {', '.join(row['reasons']) or '-'})",
            file=sys.stderr,
            flush=True,
        )
    return rows


def markdown(rows: list[dict[str, Any]], tokens: int, command: str) -> str:
    lines = [
        "## A classroom on one server: N clients streaming at once",
        "",
        f"Each client streams {tokens} greedy tokens (default model); in rounds with N > 1, client 0 presses "
        f"Stop after {STOP_AFTER} pieces. Aggregate = all tokens received ÷ the round's wall time. "
        f"Server, clients and this process share the machine's CPU. Command: `{command}`.",
        "",
        "| server | N | aggregate tokens/s | × N=1 | TTFT median (s) | TTFT worst (s) | errors "
        "| Stop ends only its own |",
        "|---|---|---|---|---|---|---|---|",
    ]
    single = {r["server"]: r["tokens_per_s"] for r in rows if r["clients"] == 1}
    for r in rows:
        scale = r["tokens_per_s"] / single[r["server"]] if r["server"] in single else float("nan")
        lines.append(
            f"| {r['server']} | {r['clients']} | {r['tokens_per_s']:.1f} | {scale:.2f} | {r['ttft_median_s']:.2f} "
            f"| {r['ttft_max_s']:.2f} | {r['errors']} | {'yes' if r['stop_own_only'] else 'NO'} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="16 tokens a client: checks every code path")
    parser.add_argument("--server", choices=["vllm", "llama.cpp", "both"], default="both")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    args = parser.parse_args(argv)
    tokens = 16 if args.quick else 64
    rows: list[dict[str, Any]] = []
    if args.server in ("vllm", "both"):
        external = os.environ.get("HFLLM_NB_VLLM_URL")
        server = running_vllm(external) if external else VllmProcess(prepare_default_model()).start()
        try:
            rows += measure("vLLM", server.url, args.clients, tokens)
        finally:
            if not external:
                server.stop()
    if args.server in ("llama.cpp", "both"):
        server = QueueingLlamaCpp(find_default_gguf()).start()
        try:
            rows += measure("llama.cpp (llama-cpp-python)", server.url, args.clients, tokens)
        finally:
            server.stop()
    command = "python benchmarks/classroom.py " + " ".join(argv if argv is not None else sys.argv[1:])
    print(markdown(rows, tokens, command.strip()))
    return 0 if all(r["errors"] == 0 and r["stop_own_only"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
