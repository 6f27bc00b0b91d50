"""A catalogue of bad input to the API, the CLI and the panel.

Each entry must raise the documented exception type from hfllm_nb's own code (no traceback
from deep inside transformers), with a message that names the bad value and the fix, and
leave the object giving the same greedy text as before.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

import hfllm_nb
from hfllm_nb import HuggingFaceLLM, LLMPanel, ModelLoadError, cli

PACKAGE_DIR = Path(hfllm_nb.__file__).resolve().parent
REPO = PACKAGE_DIR.parent
PROMPT = "Hello world"


@dataclass(frozen=True)
class Case:
    """One bad call: ``call(llm, model_dir)`` must raise ``error`` with every word in ``words``."""

    call: Callable[[HuggingFaceLLM, str], Any]
    error: type[BaseException]
    words: tuple[str, ...]


def case(id_: str, call, error, *words) -> Any:
    return pytest.param(Case(call, error, words), id=id_)


@pytest.fixture(scope="module")
def baseline(tiny_llm):
    """Greedy text before any bad input: every case must leave the model giving exactly this."""
    return tiny_llm.generate(PROMPT, max_new_tokens=6)


@pytest.fixture(scope="module")
def not_a_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("not-a-model")
    (folder / "notes.txt").write_text("just some text\n")
    (folder / "broken.gguf").write_bytes(b"this is not GGUF data")
    (folder / "empty").mkdir()
    return folder


def assert_raised_by_hfllm_nb(exc: BaseException) -> None:
    """The error comes from our validation, with no chained traceback from transformers/torch."""
    frames = traceback.extract_tb(exc.__traceback__)
    innermost = Path(frames[-1].filename).resolve()
    assert innermost.is_relative_to(PACKAGE_DIR), f"raised from {innermost}, not from hfllm_nb"
    assert exc.__cause__ is None
    assert exc.__context__ is None or exc.__suppress_context__, "a chained traceback would show"


def check_error(excinfo: pytest.ExceptionInfo, expected: Case) -> None:
    assert excinfo.type is expected.error, f"{excinfo.type.__name__}: {excinfo.value}"
    message = str(excinfo.value)
    for word in expected.words:
        assert word in message, f"{word!r} not in {message!r}"
    assert_raised_by_hfllm_nb(excinfo.value)


# ------------------------------------------------------------------------------ API catalogue

LONG = "hello " * 9000  # longer than the context of the tiny model (256) and SmolLM2 (8192)

GENERATE_CASES = [
    # prompt: wrong types, empty text
    case("prompt-None", lambda m, d: m.generate(None), TypeError, "NoneType", "str or a list of str"),
    case("prompt-int", lambda m, d: m.generate(42), TypeError, "int", "(42)", "str"),
    case("prompt-float", lambda m, d: m.generate(1.5), TypeError, "float", "str"),
    case("prompt-empty", lambda m, d: m.generate(""), ValueError, "''", "pass some text"),
    case("prompt-whitespace", lambda m, d: m.generate(" \n\t "), ValueError, "whitespace", "pass some text"),
    case("prompt-bytes", lambda m, d: m.generate(b"hello"), TypeError, "bytes", "b'hello'", ".decode('utf-8')"),
    case("prompt-dict", lambda m, d: m.generate({"text": "hi"}), TypeError, "dict", "'text'", "str"),
    case("prompt-set", lambda m, d: m.generate({"hi"}), TypeError, "set", "list of str"),
    case("prompt-list-int", lambda m, d: m.generate(["ok", 3]), TypeError, "prompt[1]", "int", "must be a str"),
    case("prompt-list-None", lambda m, d: m.generate([None]), TypeError, "prompt[0]", "NoneType"),
    case("prompt-list-bytes", lambda m, d: m.generate(["ok", b"x"]), TypeError, "prompt[1]", "bytes"),
    case("prompt-list-empty", lambda m, d: m.generate([]), ValueError, "empty", "at least one"),
    case("prompt-list-blank", lambda m, d: m.generate(["ok", "  "]), ValueError, "prompt[1]", "whitespace"),
    # lengths: zero, negative, bool, float, str, huge, both at once
    case(
        "max_length-0", lambda m, d: m.generate(PROMPT, max_length=0), ValueError, "max_length", "at least 1", "got 0"
    ),
    case("max_length-negative", lambda m, d: m.generate(PROMPT, max_length=-5), ValueError, "max_length", "-5"),
    case(
        "max_length-bool",
        lambda m, d: m.generate(PROMPT, max_length=True),
        TypeError,
        "max_length",
        "bool",
        "positive int",
    ),
    case(
        "max_length-float",
        lambda m, d: m.generate(PROMPT, max_length=7.5),
        TypeError,
        "max_length",
        "7.5",
        "positive int",
    ),
    case("max_length-str", lambda m, d: m.generate(PROMPT, max_length="10"), TypeError, "max_length", "'10'"),
    case(
        "max_length-huge",
        lambda m, d: m.generate(PROMPT, max_length=10**12),
        ValueError,
        "1000000000000",
        "at most 256",
    ),
    case(
        "max_new_tokens-0",
        lambda m, d: m.generate(PROMPT, max_new_tokens=0),
        ValueError,
        "max_new_tokens",
        "at least 1",
    ),
    case(
        "max_new_tokens-negative",
        lambda m, d: m.generate(PROMPT, max_new_tokens=-1),
        ValueError,
        "max_new_tokens",
        "-1",
    ),
    case(
        "max_new_tokens-bool",
        lambda m, d: m.generate(PROMPT, max_new_tokens=False),
        TypeError,
        "max_new_tokens",
        "bool",
    ),
    case(
        "max_new_tokens-float", lambda m, d: m.generate(PROMPT, max_new_tokens=2.0), TypeError, "max_new_tokens", "2.0"
    ),
    case(
        "max_new_tokens-huge",
        lambda m, d: m.generate(PROMPT, max_new_tokens=10**6),
        ValueError,
        "1000000",
        "at most 256",
    ),
    case(
        "max_new_tokens-tensor",
        lambda m, d: m.generate(PROMPT, max_new_tokens=torch.tensor(3)),
        TypeError,
        "max_new_tokens",
        "Tensor",
    ),
    case(
        "both-lengths",
        lambda m, d: m.generate(PROMPT, max_length=10, max_new_tokens=5),
        ValueError,
        "max_length (10",
        "max_new_tokens (5",
        "not both",
    ),
    # prompt longer than the context, or than max_length
    case(
        "prompt-over-context",
        lambda m, d: m.generate(LONG, max_new_tokens=5),
        ValueError,
        "tokens",
        "context of 256",
        "Shorten the prompt",
    ),
    case("prompt-over-max_length", lambda m, d: m.generate(LONG), ValueError, "max_length=20", "max_new_tokens=N"),
    case(
        "prompt-fills-max_length",
        lambda m, d: m.generate(PROMPT, max_length=2),
        ValueError,
        "max_length=2",
        "Raise max_length above",
    ),
    # sampling settings
    case(
        "temperature-without-sampling",
        lambda m, d: m.generate(PROMPT, temperature=0.7),
        ValueError,
        "temperature",
        "do_sample=True",
    ),
    case("seed-without-sampling", lambda m, d: m.generate(PROMPT, seed=1), ValueError, "seed", "do_sample=True"),
    case(
        "temperature-0",
        lambda m, d: m.generate(PROMPT, do_sample=True, temperature=0),
        ValueError,
        "temperature",
        "≥ 0.01",
        "got 0",
    ),
    case(
        "temperature-negative",
        lambda m, d: m.generate(PROMPT, do_sample=True, temperature=-1.0),
        ValueError,
        "temperature",
        "-1.0",
    ),
    case(
        "temperature-nan",
        lambda m, d: m.generate(PROMPT, do_sample=True, temperature=float("nan")),
        ValueError,
        "temperature",
        "nan",
    ),
    case(
        "temperature-inf",
        lambda m, d: m.generate(PROMPT, do_sample=True, temperature=float("inf")),
        ValueError,
        "temperature",
        "inf",
    ),
    case(
        "temperature-str",
        lambda m, d: m.generate(PROMPT, do_sample=True, temperature="hot"),
        TypeError,
        "temperature",
        "'hot'",
        "number",
    ),
    case(
        "top_p-above-1", lambda m, d: m.generate(PROMPT, do_sample=True, top_p=1.5), ValueError, "top_p", "1.5", "≤ 1.0"
    ),
    case(
        "temperature-tiny",
        lambda m, d: m.generate(PROMPT, do_sample=True, temperature=1e-300),
        ValueError,
        "temperature",
        "1e-300",
        "≥ 0.01",
    ),
    case("top_p-0", lambda m, d: m.generate(PROMPT, do_sample=True, top_p=0.0), ValueError, "top_p", "> 0.0"),
    case(
        "top_k-negative",
        lambda m, d: m.generate(PROMPT, do_sample=True, top_k=-3),
        ValueError,
        "top_k",
        "-3",
        "0 turns it off",
    ),
    case("top_k-float", lambda m, d: m.generate(PROMPT, do_sample=True, top_k=2.5), TypeError, "top_k", "2.5", "int"),
    case("seed-negative", lambda m, d: m.generate(PROMPT, do_sample=True, seed=-1), ValueError, "seed", "-1", "2**63"),
    case("seed-str", lambda m, d: m.generate(PROMPT, do_sample=True, seed="x"), TypeError, "seed", "'x'", "int"),
    case(
        "do_sample-str",
        lambda m, d: m.generate(PROMPT, do_sample="yes"),
        TypeError,
        "do_sample",
        "'yes'",
        "True or False",
    ),
    case(
        "repetition_penalty-0",
        lambda m, d: m.generate(PROMPT, repetition_penalty=0),
        ValueError,
        "repetition_penalty",
        "got 0",
    ),
    # keywords
    case("unknown-keyword", lambda m, d: m.generate(PROMPT, temprature=0.5), TypeError, "'temprature'", "temperature"),
    case(
        "reserved-keyword",
        lambda m, d: m.generate(PROMPT, input_ids=[1, 2]),
        TypeError,
        "input_ids",
        "pass the prompt as text",
    ),
    case("streamer-keyword", lambda m, d: m.generate(PROMPT, streamer=object()), TypeError, "streamer"),
    case(
        "num_return_sequences",
        lambda m, d: m.generate(PROMPT, num_return_sequences=3),
        ValueError,
        "num_return_sequences=3",
        "different seeds",
    ),
    case(
        "return_full_text-str",
        lambda m, d: m.generate(PROMPT, return_full_text="no"),
        TypeError,
        "return_full_text",
        "'no'",
    ),
    # stream, chat, count_tokens
    case("stream-list", lambda m, d: m.stream(["a", "b"]), TypeError, "one prompt string", "generate()"),
    case("stream-bytes", lambda m, d: m.stream(b"hi"), TypeError, "bytes", ".decode('utf-8')"),
    case("stream-max_length-0", lambda m, d: m.stream(PROMPT, max_length=0), ValueError, "max_length", "at least 1"),
    case("stream-unknown-keyword", lambda m, d: m.stream(PROMPT, topp=0.9), TypeError, "'topp'"),
    case("chat-empty-list", lambda m, d: m.chat([]), TypeError, "messages", "non-empty list"),
    case("chat-int", lambda m, d: m.chat(3), TypeError, "messages", "not 3"),
    case(
        "chat-message-without-content", lambda m, d: m.chat([{"role": "user"}]), TypeError, "messages[0]", "'content'"
    ),
    case("chat-message-not-a-dict", lambda m, d: m.chat(["hi"]), TypeError, "messages[0]", "'hi'", "dict"),
    case(
        "chat-ends-with-assistant", lambda m, d: m.chat([{"role": "assistant", "content": "hi"}]), ValueError, "'user'"
    ),
    case("chat-blank", lambda m, d: m.chat("   "), ValueError, "message", "whitespace"),
    case("chat-bad-length", lambda m, d: m.chat("hi", max_new_tokens=-2), ValueError, "max_new_tokens", "-2"),
    case("count_tokens-int", lambda m, d: m.count_tokens(3), TypeError, "int", "str"),
]

CONSTRUCTOR_CASES = [
    # devices
    case(
        "device-unknown",
        lambda m, d: HuggingFaceLLM(d, device="tpu"),
        ValueError,
        "'tpu'",
        "Devices here",
        "cpu",
        "device=None",
    ),
    case(
        "device-missing-gpu",
        lambda m, d: HuggingFaceLLM(d, device="cuda:7"),
        ValueError,
        "'cuda:7'",
        "not available",
        "Devices here",
    ),
    case("device-int-index", lambda m, d: HuggingFaceLLM(d, device=7), ValueError, "7", "not available"),
    case("device-list", lambda m, d: HuggingFaceLLM(d, device=[0]), TypeError, "device", "list", "'cpu'"),
    case("device-bool", lambda m, d: HuggingFaceLLM(d, device=True), TypeError, "device", "bool"),
    case(
        "device-and-device_map",
        lambda m, d: HuggingFaceLLM(d, device="cpu", device_map="auto"),
        ValueError,
        "device_map",
        "not both",
    ),
    case("device_map-int", lambda m, d: HuggingFaceLLM(d, device_map=3), TypeError, "device_map", "int", "'auto'"),
    case(
        "device_map-unknown",
        lambda m, d: HuggingFaceLLM(d, device_map="sideways"),
        ModelLoadError,
        "sideways",
        "device_map='auto'",
    ),
    # model ids and paths
    case("model_id-int", lambda m, d: HuggingFaceLLM(42), TypeError, "model_id", "int", "None"),
    case("model_id-empty", lambda m, d: HuggingFaceLLM("  "), ValueError, "model_id is empty", "'gpt2'"),
    case(
        "model_id-missing-path",
        lambda m, d: HuggingFaceLLM("/no/such/model"),
        ModelLoadError,
        "'/no/such/model'",
        "no such file",
        "Check the path",
    ),
    case(
        "model_id-relative-missing",
        lambda m, d: HuggingFaceLLM("./no-such-model"),
        ModelLoadError,
        "'./no-such-model'",
        "no such file",
    ),
    # contradictory or bad quantization
    case(
        "quantization-4-and-8-bit",
        lambda m, d: HuggingFaceLLM(d, quantization_config={"load_in_4bit": True, "load_in_8bit": True}),
        ValueError,
        "4-bit and 8-bit",
        "choose one",
    ),
    case(
        "quantization-unknown-key",
        lambda m, d: HuggingFaceLLM(d, quantization_config={"load_in_3bit": True}),
        ValueError,
        "load_in_3bit",
        "Valid keys",
        "load_in_4bit",
    ),
    case(
        "quantization-not-a-dict",
        lambda m, d: HuggingFaceLLM(d, quantization_config=["4bit"]),
        TypeError,
        "quantization_config",
        "list",
        "{'load_in_4bit': True}",
    ),
    case(
        "quantization-empty",
        lambda m, d: HuggingFaceLLM(d, quantization_config={}),
        ValueError,
        "load_in_4bit=True or load_in_8bit=True",
    ),
    case(
        "quantization-flag-str",
        lambda m, d: HuggingFaceLLM(d, quantization_config={"load_in_4bit": "yes"}),
        TypeError,
        "load_in_4bit",
        "'yes'",
    ),
    # dtype, lengths, flags, keywords
    case("dtype-unknown", lambda m, d: HuggingFaceLLM(d, dtype="float8"), ValueError, "'float8'", "'bfloat16'"),
    case("dtype-int", lambda m, d: HuggingFaceLLM(d, dtype=3), TypeError, "dtype", "int"),
    case(
        "dtype-integer-torch",
        lambda m, d: HuggingFaceLLM(d, dtype=torch.int8),
        ValueError,
        "torch.int8",
        "torch.float32",
    ),
    case("ctor-max_length-0", lambda m, d: HuggingFaceLLM(d, max_length=0), ValueError, "max_length", "at least 1"),
    case("ctor-max_length-float", lambda m, d: HuggingFaceLLM(d, max_length=2.5), TypeError, "max_length", "2.5"),
    case(
        "ctor-max_length-over-context",
        lambda m, d: HuggingFaceLLM(d, max_length=10**6),
        ValueError,
        "1000000",
        "at most 256",
    ),
    case("compile-str", lambda m, d: HuggingFaceLLM(d, compile="yes"), TypeError, "compile", "'yes'"),
    case(
        "compile-with-quantization",
        lambda m, d: HuggingFaceLLM(
            d, compile=True, quantization_config={"load_in_4bit": True, "backend": "bitsandbytes"}
        ),
        ValueError,
        "compile=True",
        "quantization_config",
    ),
    case(
        "trust_remote_code-str",
        lambda m, d: HuggingFaceLLM(d, trust_remote_code="yes"),
        TypeError,
        "trust_remote_code",
        "'yes'",
    ),
    case(
        "ctor-unknown-keyword",
        lambda m, d: HuggingFaceLLM(d, colour="red"),
        TypeError,
        "'colour'",
        "Check the spelling",
    ),
]


@pytest.mark.parametrize("bad", GENERATE_CASES)
def test_bad_call_raises_a_precise_error_and_the_model_keeps_working(tiny_llm, tiny_model_dir, baseline, bad):
    # stream() must fail when called, not on the first next(): so no next() here.
    with pytest.raises(bad.error) as excinfo:
        bad.call(tiny_llm, str(tiny_model_dir))
    check_error(excinfo, bad)
    assert not tiny_llm.is_busy
    assert tiny_llm.generate(PROMPT, max_new_tokens=6) == baseline


@pytest.mark.parametrize("bad", CONSTRUCTOR_CASES)
def test_bad_constructor_argument_raises_a_precise_error(tiny_llm, tiny_model_dir, baseline, bad):
    with pytest.raises(bad.error) as excinfo:
        bad.call(tiny_llm, str(tiny_model_dir))
    check_error(excinfo, bad)
    assert tiny_llm.generate(PROMPT, max_new_tokens=6) == baseline


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("notes.txt", ("notes.txt", "not a .gguf model", "config.json")),
        ("broken.gguf", ("broken.gguf", "GGUF", "Check the model id or path")),
        ("empty", ("empty", "no config.json", "save_pretrained")),
    ],
)
def test_a_path_that_is_not_a_model_gives_a_load_error(not_a_model, name, words):
    with pytest.raises(ModelLoadError) as excinfo:
        HuggingFaceLLM(str(not_a_model / name))
    check_error(excinfo, Case(lambda m, d: None, ModelLoadError, words))


@pytest.mark.parametrize(
    "prompt",
    ["\x06", "\x04\x06\x13", ["ok", "\x06"], ["\x06", "\x06"]],
    ids=["control-char", "control-chars", "batch-item", "batch-all"],
)
def test_a_prompt_the_tokenizer_drops_entirely_is_a_clear_error(tiny_llm, baseline, prompt):
    with pytest.raises(ValueError) as excinfo:
        tiny_llm.generate(prompt, max_new_tokens=3)
    check_error(excinfo, Case(lambda m, d: None, ValueError, ("no tokens",)))
    assert tiny_llm.generate(PROMPT, max_new_tokens=6) == baseline


def test_an_unknown_hub_id_fails_fast_offline(monkeypatch):
    # Offline here; online it is a 404. Either way no 45 s of retries.
    started = time.perf_counter()
    with pytest.raises(ModelLoadError) as excinfo:
        HuggingFaceLLM("hfllm-nb-tests/no-such-model-4242")
    elapsed = time.perf_counter() - started
    assert elapsed < 10, f"took {elapsed:.1f} s"
    check_error(
        excinfo, Case(lambda m, d: None, ModelLoadError, ("'hfllm-nb-tests/no-such-model-4242'", "default model"))
    )


def test_the_real_model_survives_every_bad_call(llm):
    """Run the whole generate() catalogue against the default model, then compare greedy text."""
    before = llm.generate("The capital of France is", max_new_tokens=8)
    for param in GENERATE_CASES:
        bad = param.values[0]
        with pytest.raises(bad.error):
            result = bad.call(llm, "")
            if hasattr(result, "__next__"):
                next(result)
        assert not llm.is_busy, param.id
    assert llm.generate("The capital of France is", max_new_tokens=8) == before


# ------------------------------------------------------------------------------ CLI catalogue

CLI_CASES = [
    pytest.param([], 2, ("required", "COMMAND"), id="no-command"),
    pytest.param(["frobnicate"], 2, ("'frobnicate'", "generate"), id="unknown-command"),
    pytest.param(["generate"], 2, ("prompt",), id="missing-prompt"),
    pytest.param(["generate", "hi", "--max-length", "abc"], 2, ("--max-length", "'abc'"), id="length-not-int"),
    pytest.param(
        ["generate", "hi", "--max-length", "5", "--max-new-tokens", "3"],
        2,
        ("--max-new-tokens", "--max-length", "not allowed"),
        id="both-lengths",
    ),
    pytest.param(["generate", "hi", "--colour", "red"], 2, ("--colour",), id="unknown-option"),
    pytest.param(["generate", ""], 2, ("empty", "pass some text"), id="empty-prompt"),
    pytest.param(["generate", "  "], 2, ("whitespace",), id="blank-prompt"),
    pytest.param(["generate", "hi", "--max-length", "0"], 2, ("max_length", "at least 1"), id="length-0"),
    pytest.param(["generate", "hi", "--max-new-tokens", "-3"], 2, ("max_new_tokens", "-3"), id="negative-length"),
    pytest.param(
        ["generate", "hi", "--temperature", "0.5"], 2, ("--temperature", "--sample"), id="temperature-without-sample"
    ),
    pytest.param(["generate", "hi", "--sample", "--top-p", "2"], 2, ("top_p", "2.0"), id="top-p-above-1"),
    pytest.param(
        ["generate", "hi", "--sample", "--temperature", "nan"], 2, ("temperature", "nan"), id="temperature-nan"
    ),
    pytest.param(["generate", "hi", "--sample", "--top-k", "-1"], 2, ("top_k", "-1"), id="top-k-negative"),
    pytest.param(["generate", "hi", "--device", "tpu"], 2, ("'tpu'", "Devices here"), id="unknown-device"),
    pytest.param(["generate", "hi", "--dtype", "float8"], 2, ("'float8'", "bfloat16"), id="unknown-dtype"),
    pytest.param(
        ["generate", "hi", "--model", "/no/such/model"], 1, ("/no/such/model", "no such file"), id="missing-model"
    ),
    pytest.param(
        ["generate", "hi", "--model", "hfllm-nb-tests/no-such-model-4242"],
        1,
        ("no-such-model-4242",),
        id="unknown-hub-id",
    ),
]


def _one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, f"stderr is not one line:\n{stderr}"
    assert "Traceback" not in stderr
    return lines[0]


@pytest.mark.parametrize(("argv", "code", "words"), CLI_CASES)
def test_cli_bad_arguments_exit_with_one_line_on_stderr(capsys, argv, code, words):
    assert cli.main(argv) == code
    out, err = capsys.readouterr()
    line = _one_line(err)
    assert line.startswith("hfllm-nb")
    assert "error:" in line
    for word in words:
        assert word in line, f"{word!r} not in {line!r}"
    assert out == ""


def test_cli_a_file_that_is_not_a_model_exits_1(capsys, not_a_model):
    assert cli.main(["generate", "hi", "--model", str(not_a_model / "notes.txt")]) == 1
    _out, err = capsys.readouterr()
    assert "not a .gguf model" in _one_line(err)


def test_cli_a_prompt_longer_than_the_context_exits_2_without_progress_bars(capsys, tiny_model_dir):
    argv = ["generate", "hi", "--model", str(tiny_model_dir), "--max-new-tokens", "300"]
    assert cli.main(argv) == 2
    out, err = capsys.readouterr()
    assert "context of 256" in _one_line(err)  # no "Loading weights" bar before the error
    assert out == ""


def test_cli_subprocess_errors_are_one_line_without_traceback(not_a_model):
    script = REPO / ".venv" / "bin" / "hfllm-nb"
    console = [str(script)] if script.exists() else [sys.executable, "-m", "hfllm_nb.cli"]
    runs = [
        (console, ["generate", "hi", "--max-length", "abc"], 2),
        ([sys.executable, "-m", "hfllm_nb"], ["generate", "hi", "--model", str(not_a_model / "empty")], 1),
    ]
    # Started together: each process spends seconds importing torch.
    procs = [
        (subprocess.Popen([*cmd, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True), code)
        for cmd, argv, code in runs
    ]
    for proc, code in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == code, err
        assert _one_line(err).startswith("hfllm-nb")
        assert out == ""


# ------------------------------------------------------------------------------ panel catalogue

PANEL_SETTINGS = [
    pytest.param({"colour": "red"}, TypeError, ("'colour'", "max_length"), id="unknown-setting"),
    pytest.param({"prompt": 3}, TypeError, ("prompt", "int"), id="prompt-int"),
    pytest.param({"prompt": b"hi"}, TypeError, ("prompt", "bytes"), id="prompt-bytes"),
    pytest.param({"max_length": 0}, ValueError, ("max_length", "at least 1"), id="max_length-0"),
    pytest.param({"max_length": 10**6}, ValueError, ("max_length", "at most 256"), id="max_length-huge"),
    pytest.param({"max_length": 3.5}, TypeError, ("max_length", "3.5"), id="max_length-float"),
    pytest.param({"do_sample": "yes"}, TypeError, ("do_sample", "'yes'"), id="do_sample-str"),
    pytest.param({"temperature": 0}, ValueError, ("temperature",), id="temperature-0"),
    pytest.param({"top_p": 2.0}, ValueError, ("top_p", "2.0"), id="top_p-2"),
    pytest.param({"top_k": -1}, ValueError, ("top_k", "-1"), id="top_k-negative"),
    pytest.param({"seed": "x"}, TypeError, ("seed", "'x'"), id="seed-str"),
]


@pytest.mark.parametrize(("settings", "error", "words"), PANEL_SETTINGS)
def test_bad_panel_settings_raise_before_any_thread_starts(tiny_llm, baseline, settings, error, words):
    threads = threading.active_count()
    with pytest.raises(error) as excinfo:
        LLMPanel(tiny_llm, **settings)
    check_error(excinfo, Case(lambda m, d: None, error, words))
    assert threading.active_count() == threads, "a rejected panel started its memory thread"
    assert tiny_llm.generate(PROMPT, max_new_tokens=6) == baseline


@pytest.mark.parametrize(
    ("prompt", "words"),
    [
        pytest.param("", ("ValueError", "empty"), id="empty"),
        pytest.param(" \n ", ("ValueError", "whitespace"), id="blank"),
        pytest.param(LONG, ("ValueError", "max_length=20", "Raise max_length"), id="too-long"),
    ],
)
def test_bad_panel_prompt_shows_a_short_red_error_and_the_panel_stays_usable(tiny_llm, baseline, prompt, words):
    panel = LLMPanel(tiny_llm, prompt=prompt)
    try:
        assert panel.generate() is False
        assert not panel.is_busy
        message = panel.error.value
        assert "color" in message and len(message) < 400
        for word in words:
            assert word in message, f"{word!r} not in {message!r}"
        # Fix the prompt: the same panel now gives the model's greedy text.
        panel.prompt.value = PROMPT
        panel.max_length.value = tiny_llm.count_tokens(PROMPT) + 6
        assert panel.generate() is True
        assert panel.wait(60)
        assert panel.error.value == ""
        assert PROMPT + panel.result_text == baseline
    finally:
        panel.close()


@pytest.mark.parametrize(
    "call",
    [
        lambda llm: llm.generate("caf\udce9"),
        lambda llm: llm.count_tokens("caf\udce9"),
        lambda llm: llm.chat("caf\udce9"),
        lambda llm: llm.chat([{"role": "user", "content": "caf\udce9"}]),
        lambda llm: list(llm.stream("caf\udce9")),
    ],
    ids=["generate", "count_tokens", "chat", "chat messages", "stream"],
)
def test_a_lone_surrogate_is_refused_by_name_and_the_model_still_works(tiny_llm, call):
    # Break caught: the tokenizer's "TextEncodeInput must be Union[...]" TypeError from deep inside.
    with pytest.raises(ValueError, match="lone surrogate"):
        call(tiny_llm)
    assert tiny_llm.generate("Hello", max_new_tokens=2)
