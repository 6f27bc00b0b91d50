"""The hfllm-nb command, run as a user would: a subprocess, its output and exit code."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from hfllm_nb import cli


def run_cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "hfllm_nb", *args], capture_output=True, text=True, timeout=timeout, env=env
    )


def test_generate_prints_the_same_text_as_the_api(llm):
    result = run_cli("generate", "Once upon a time,", "--max-new-tokens", "8")
    assert result.returncode == 0, result.stderr
    assert result.stdout.rstrip("\n") == llm.generate("Once upon a time,", max_new_tokens=8)


def test_generate_stream_and_chat(llm):
    streamed = run_cli("generate", "The future of AI is", "--max-length", "16", "--stream")
    assert streamed.returncode == 0, streamed.stderr
    assert streamed.stdout.rstrip("\n") == llm.generate("The future of AI is", max_length=16)
    chat = run_cli("generate", "What is the capital of France?", "--chat", "--max-new-tokens", "12")
    assert chat.returncode == 0, chat.stderr
    assert "Paris" in chat.stdout


@pytest.mark.parametrize(
    "args, words",
    [
        (["generate", "hi", "--max-length", "0"], "max_length must be at least 1"),
        (["generate", "hi", "--max-length", "abc"], "invalid int value"),
        (["generate", "hi", "--max-length", "5", "--max-new-tokens", "5"], "not allowed with argument"),
        (["generate", "   "], "empty or only whitespace"),
        (["generate", "hi", "--temperature", "0.5"], "add --sample"),
        (["generate", "hi", "--sample", "--top-p", "2"], "top_p"),
        (["generate", "hi", "--device", "cuda:3"], "not available"),
        (["generate", "hi", "--dtype", "float8"], "Unknown dtype"),
        (["explode"], "invalid choice"),
        ([], "required"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(args, words):
    # In-process: argparse and validation run before any model load, so this stays fast.
    result = run_in_process(args)
    assert result[0] == 2
    assert words in result[2]
    assert "Traceback" not in result[2]


def test_a_load_failure_exits_1_with_one_line_and_no_traceback(tmp_path):
    result = run_cli("generate", "hi", "--model", str(tmp_path / "missing" / "model"))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hfllm-nb: error: Could not load model")
    assert "Traceback" not in result.stderr


def test_info_reports_versions_devices_memory_and_the_cache(default_model_dir):
    result = run_cli("info")
    assert result.returncode == 0, result.stderr
    for words in ("torch", "transformers", "devices       cpu", "ram", "iB /", str(default_model_dir), "(ready)"):
        assert words in result.stdout


def test_prepare_is_quick_when_the_cache_is_ready(default_model_dir):
    result = run_cli("prepare")
    assert result.returncode == 0, result.stderr
    assert str(default_model_dir) in result.stdout


def run_in_process(args: list[str]) -> tuple[int, str, str]:
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(args)
    return code, out.getvalue(), err.getvalue()
