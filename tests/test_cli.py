"""The hfllm-nb command, run as a user would: a subprocess, its output and exit code."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from _fake_server import FakeServer

import hfllm_nb.llm
from hfllm_nb import cli
from hfllm_nb.engines.local.device import available_devices


def run_cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "hfllm_nb", *args], capture_output=True, text=True, timeout=timeout, env=env
    )


def test_generate_prints_the_same_text_as_the_api_and_says_why_it_ended(llm):
    result = run_cli("-v", "generate", "Once upon a time,", "--max-new-tokens", "8")
    assert result.returncode == 0, result.stderr
    assert result.stdout == llm.generate("Once upon a time,", max_new_tokens=8) + "\n"
    stats = llm.last_stats
    line = rf"^{stats.new_tokens} tokens in \d+\.\d\d s \(\d+\.\d tokens/s\); ended: {re.escape(stats.ended_because)}$"
    assert re.search(line, result.stderr, re.M), result.stderr


def test_generate_stream_and_chat(llm):
    streamed = run_cli("generate", "The future of AI is", "--max-length", "16", "--stream")
    assert streamed.returncode == 0, streamed.stderr
    assert streamed.stdout == llm.generate("The future of AI is", max_length=16) + "\n"
    chat = run_cli("generate", "What is the capital of France?", "--chat", "--max-new-tokens", "12")
    assert chat.returncode == 0, chat.stderr
    assert chat.stdout == llm.chat("What is the capital of France?", max_new_tokens=12) + "\n"
    assert "Paris" in chat.stdout


@pytest.fixture
def cli_model(llm, monkeypatch):
    """The CLI in-process, handed the session's model instead of loading its own (that is tested above)."""
    loads = []
    monkeypatch.setattr(hfllm_nb.llm, "HuggingFaceLLM", lambda *a, **k: loads.append((a, k)) or llm)
    return loads


def run_generate(capsys, *args: str) -> tuple[int, str, str]:
    code = cli.main(["generate", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_chat_honours_stream_and_prints_the_unstripped_reply(llm, cli_model, capsys, monkeypatch):
    question = "What is the capital of France?"
    real_chat, streams = llm.chat, []
    monkeypatch.setattr(
        llm, "chat", lambda *a, stream=False, **k: streams.append(stream) or real_chat(*a, stream=stream, **k)
    )
    code, plain, _ = run_generate(capsys, question, "--chat", "--max-new-tokens", "12")
    assert code == 0
    code, streamed, _ = run_generate(capsys, question, "--chat", "--max-new-tokens", "12", "--stream")
    assert code == 0
    assert streams == [False, True]  # --stream reaches chat(): pieces are printed as they come
    assert streamed == plain == real_chat(question, max_new_tokens=12) + "\n"


def test_chat_with_only_new_is_refused_before_loading(cli_model, capsys):
    code, out, err = run_generate(capsys, "hi", "--chat", "--only-new")
    assert (code, out) == (2, "")
    assert err.count("\n") == 1 and "--only-new" in err and "--chat" in err
    assert cli_model == []  # refused before any model load


def test_stream_prints_the_prompt_as_the_model_read_it_like_generate(llm, cli_model, capsys):
    prompt = "Ring\x06 the bell <|im_start|>twice"  # a control character the tokenizer drops, a special token
    decoded = llm.tokenizer.decode(llm.tokenizer(prompt)["input_ids"], skip_special_tokens=True)
    assert decoded != prompt
    _, plain, _ = run_generate(capsys, prompt, "--max-new-tokens", "5")
    _, streamed, _ = run_generate(capsys, prompt, "--max-new-tokens", "5", "--stream")
    assert streamed == plain == decoded + llm.generate(prompt, max_new_tokens=5, return_full_text=False) + "\n"


def test_only_new_prints_the_continuation_alone(llm, cli_model, capsys):
    for stream in ([], ["--stream"]):
        code, out, _ = run_generate(capsys, "Once upon a time,", "--max-new-tokens", "6", "--only-new", *stream)
        assert code == 0
        assert out == llm.generate("Once upon a time,", max_new_tokens=6, return_full_text=False) + "\n"


def test_ctrl_c_exits_130_with_one_line(monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(hfllm_nb.llm, "HuggingFaceLLM", interrupted)
    code, out, err = run_generate(capsys, "hi")
    assert (code, out, err) == (130, "", "hfllm-nb: interrupted\n")


@pytest.mark.parametrize(
    "args, words",
    [
        (["generate", "hi", "--max-length", "0"], "max_length must be at least 1"),
        (["generate", "hi", "--max-length", "abc"], "invalid int value"),
        (["generate", "hi", "--max-length", "5", "--max-new-tokens", "5"], "not allowed with argument"),
        (["generate", "   "], "empty or only whitespace"),
        (["generate", "hi", "--temperature", "0.5"], "add --sample"),
        (["generate", "hi", "--sample", "--top-p", "2"], "top_p"),
        (["generate", "hi", "--device", "cuda:99"], "not available"),
        (["generate", "hi", "--dtype", "float8"], "Unknown dtype"),
        (["explode"], "invalid choice"),
        ([], "required"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(args, words):
    # In-process: argparse and validation run before any model load, so this stays fast.
    code, out, err = run_in_process(args)
    assert code == 2 and out == ""
    assert err.endswith("\n") and err.count("\n") == 1, f"not one line: {err!r}"
    assert re.match(r"hfllm-nb( generate)?: error: ", err) and words in err


def test_a_load_failure_exits_1_with_one_line_and_no_traceback(tmp_path):
    result = run_cli("generate", "hi", "--model", str(tmp_path / "missing" / "model"))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hfllm-nb: error: Could not load model")
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(("mode", "code"), [("status:500", 1), ("status:400", 1), ("bad_shape", 1)])
@pytest.mark.parametrize("stream", [[], ["--stream"]], ids=["plain", "stream"])
def test_a_server_error_exits_1_with_nothing_on_stdout(default_model_dir, mode, code, stream):
    with FakeServer() as fake:
        fake.mode = mode
        result = run_in_process(["generate", "Hello", "--endpoint", fake.url, "--max-new-tokens", "3", *stream])
    assert result[:2] == (code, "")
    assert result[2].count("\n") == 1 and result[2].startswith("hfllm-nb: error: ") and fake.url in result[2]


def test_device_with_endpoint_is_refused_like_dtype(default_model_dir):
    with FakeServer() as fake:
        for flag, value in (("--device", "cpu"), ("--dtype", "float32")):
            code, out, err = run_in_process(["generate", "Hi", "--endpoint", fake.url, flag, value])
            assert (code, out) == (2, "")
            assert err.count("\n") == 1 and flag[2:] in err and "endpoint" in err
        assert fake.requests == []  # refused before any request
        code, out, _ = run_in_process(["generate", "Hi", "--endpoint", fake.url, "--max-new-tokens", "3"])
        assert (code, out) == (0, "HiHello there.\n")


def test_info_reports_versions_devices_memory_and_the_cache(default_model_dir):
    result = run_cli("info")
    assert result.returncode == 0, result.stderr
    devices = f"devices       {', '.join(available_devices())}"
    for words in ("torch", "transformers", devices, "ram", "iB /", str(default_model_dir), "(ready)"):
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


def test_served_model_without_an_endpoint_is_refused_not_ignored():
    # Break caught: --served-model was silently dropped when --endpoint was missing.
    result = run_cli("generate", "Hello", "--served-model", "smol")
    assert result.returncode == 2
    assert "--served-model" in result.stderr and "--endpoint" in result.stderr
    assert result.stdout == ""


def test_a_prompt_of_non_utf8_bytes_is_a_clear_error(tmp_path):
    # Break caught: bytes that are not UTF-8 reach Python as lone surrogates, and the tokenizer raised
    # "TextEncodeInput must be Union[...]".
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(
        [sys.executable.encode(), b"-m", b"hfllm_nb", b"generate", b"caf\xe9"], capture_output=True, env=env,
        timeout=180,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert b"surrogate" in result.stderr and b"Traceback" not in result.stderr
