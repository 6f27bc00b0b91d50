"""The GPU check's tests section: pytest on the suite, minus what this machine cannot run.

A test that fails only because a package or the default model is missing here is *excluded*
(counted, with the reason); any other failure fails the check. The CUDA out-of-memory test runs
first and must pass.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import subprocess
import sys
import time
from collections import Counter, defaultdict

from benchmarks._timing import table
from benchmarks.gpu.common import ROOT, TOKENIZER_ENV, Context, Section
from benchmarks.gpu.sections import child_env

OOM_TEST = "test_out_of_memory_becomes_a_friendly_error"


def _exclusion(text: str) -> str | None:
    """Why a failed test is not a failure here: a package or the default model this machine lacks."""
    from hfllm_nb.default_model import INSTALL_COMMAND

    for name in re.findall(r"No module named '([\w.]+)'", text):
        if importlib.util.find_spec(name.split(".")[0]) is None:
            return f"needs {name.split('.')[0]}"
    return "needs the default model" if INSTALL_COMMAND in text else None


def tests_section(ctx: Context, out: Section) -> None:
    """pytest on the suite with the GPU-check plugin; missing packages exclude tests, nothing else may fail."""
    from benchmarks.gpu import pytest_plugin

    seconds = min(ctx.plan.test_seconds, ctx.left() - 15)
    results = ctx.work / "pytest.json"
    command = [sys.executable, "-m", "pytest", *ctx.plan.tests, "-p", "benchmarks.gpu.pytest_plugin"]
    command += ["-m", "not browser"]
    command += ["-q", "-p", "no:cacheprovider", "--continue-on-collection-errors", f"--basetemp={ctx.work / 'pt'}"]
    command.append("--ignore=tests/test_gpu_check.py")  # that is this check's own dry run
    extra = {
        TOKENIZER_ENV: str(ctx.tokenizer_dir),
        pytest_plugin.RESULTS_ENV: str(results),
        pytest_plugin.FIRST_ENV: OOM_TEST,
        pytest_plugin.DEADLINE_ENV: str(time.time() + seconds),
        # Plugins the GPU image lacks (pytest-timeout, hypothesis's) must not change what runs here.
        "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",
    }
    env = child_env(**extra)
    try:
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=seconds + 60)
        status, log = done.returncode, done.stdout[-2500:] + done.stderr[-1500:]
    except subprocess.TimeoutExpired:  # one test ran on past the deadline: report what finished
        running = results.with_suffix(".running")
        stuck = running.read_text() if running.is_file() else "?"
        out.check(False, f"pytest was stopped after {seconds + 60:.0f} s, in {stuck}")
        status, log = None, ""
    if not out.check(results.is_file() and status in (0, 1, None), f"pytest exited {status}"):
        out.body = f"```\n{log}\n```"
        return
    payload = json.loads(results.read_text())
    counts, excluded, failures = Counter(), defaultdict(list), []
    for record in payload["records"]:
        reason = _exclusion(record["text"]) if record["outcome"] in ("failed", "error") else None
        if reason:
            excluded[reason].append(record["nodeid"])
        elif record["outcome"] == "skipped" and pytest_plugin.OUT_OF_TIME in record["text"]:
            counts["not run: out of time"] += 1
        else:
            counts[record["outcome"]] += 1
            if record["outcome"] in ("failed", "error"):
                failures.append(record)
    oom = [r for r in payload["records"] if r["nodeid"].endswith(OOM_TEST)]
    out.figures.update(counts=dict(counts), deselected=len(payload["deselected"]), exit_status=status)
    out.figures["excluded"] = {reason: len(ids) for reason, ids in excluded.items()}
    out.figures["oom_test"] = oom[0]["outcome"] if oom else "not run"
    out.check(counts["passed"] > 0, "no test passed")
    out.check(out.figures["oom_test"] == "passed", f"{OOM_TEST}: {out.figures['oom_test']}")
    for record in failures:
        out.check(False, f"{record['nodeid']} ({record['when']}): {record['text'].strip().splitlines()[-1:]}")
    rows = [[outcome, n] for outcome, n in sorted(counts.items())]
    rows += [[f"excluded, {reason}", f"{len(ids)} ({_files(ids)})"] for reason, ids in sorted(excluded.items())]
    rows.append(["deselected: use the default model (`llm`, `default_model_dir` fixtures)", len(payload["deselected"])])
    out.body = (
        table(["outcome", "tests"], rows)
        + f"\n\n`{shlex.join(['pytest', *ctx.plan.tests, '-m', 'not browser', '-p', 'benchmarks.gpu.pytest_plugin'])}` "
        f"on {ctx.device} ({'tiny models on the CPU' if ctx.plan.dry_run else 'tiny_llm and friends run on CUDA'}), "
        f"within {seconds:.0f} s. `{OOM_TEST}`: **{out.figures['oom_test']}**."
    )


def _files(nodeids: list[str]) -> str:
    return ", ".join(sorted({n.split("::")[0].removeprefix("tests/") for n in nodeids}))
