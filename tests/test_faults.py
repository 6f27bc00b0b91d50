"""Faults: errors and Ctrl-C inside generation, out of memory, and a damaged default-model cache."""

from __future__ import annotations

import _thread
import errno
import gc
import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import types
import weakref
from pathlib import Path

import pytest
import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from hfllm_nb import GenerationError, HuggingFaceLLM, LLMPanel, cli, default_model
from hfllm_nb.engines.local.loading import resolve_source

PROMPT = "Hello world"


@pytest.fixture(scope="module")
def baseline(tiny_llm):
    return tiny_llm.generate(PROMPT, max_new_tokens=6)


class _FailAt(StoppingCriteria):
    """Runs after each generated token; at step ``step`` it raises ``error`` or calls ``action``."""

    def __init__(self, step: int, error: BaseException | None = None, action=None) -> None:
        self.step, self.error, self.action, self.calls = step, error, action, 0

    def __call__(self, input_ids, scores, **kwargs):
        self.calls += 1
        if self.calls == self.step:
            if self.action is not None:
                self.action()
            else:
                raise self.error
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


def inject(monkeypatch, llm, step: int, error: BaseException | None = None, action=None) -> _FailAt:
    """Make ``llm.model.generate`` fail after ``step`` real tokens (so some text streams first)."""
    original = llm.model.generate
    fault = _FailAt(step, error, action)

    def generate(*args, stopping_criteria=None, **kwargs):
        criteria = StoppingCriteriaList([*(stopping_criteria or []), fault])
        return original(*args, stopping_criteria=criteria, **kwargs)

    monkeypatch.setattr(llm.model, "generate", generate)
    return fault


def generation_threads() -> list[threading.Thread]:
    """Threads a run left behind: anything of ours but the one model thread and memory readouts."""
    kept = ("hfllm_nb-engine", "hfllm_nb-memory")
    return [t for t in threading.enumerate() if t.name.startswith("hfllm_nb") and t.name not in kept]


def assert_usable(llm, baseline) -> None:
    assert not llm.is_busy, "the lock was left held"
    assert not generation_threads(), "a generation thread is still running"
    assert llm._engine.model_thread.thread.is_alive(), "the model thread must outlive a failed run"
    assert llm.generate(PROMPT, max_new_tokens=6) == baseline


# ------------------------------------------------------------------------------ errors in generation


def test_an_error_in_the_generation_thread_surfaces_in_the_stream_caller(tiny_llm, monkeypatch, baseline):
    with monkeypatch.context() as patch:
        inject(patch, tiny_llm, step=4, error=RuntimeError("boom in the generation thread"))
        pieces = []
        with pytest.raises(RuntimeError, match="boom in the generation thread"):
            for piece in tiny_llm.stream(PROMPT, max_new_tokens=50):
                pieces.append(piece)
    assert "".join(pieces).strip(), "tokens generated before the error should have streamed"
    assert_usable(tiny_llm, baseline)


def test_an_error_in_the_generation_thread_shows_in_the_panel_error_widget(tiny_llm, monkeypatch, baseline):
    panel = LLMPanel(tiny_llm, prompt=PROMPT, max_length=40)
    try:
        with monkeypatch.context() as patch:
            inject(patch, tiny_llm, step=3, error=RuntimeError("boom <b>in</b> the thread"))
            assert panel.generate()
            assert panel.wait(60)
        assert isinstance(panel.last_error, RuntimeError)
        shown = panel.error.value
        assert "RuntimeError" in shown
        assert "boom &lt;b&gt;in&lt;/b&gt; the thread" in shown  # escaped, short, red
        assert "color" in shown and "Traceback" not in shown
        assert not panel.is_busy and not panel.generate_button.disabled
        # The same panel works again and clears the error.
        panel.max_length.value = tiny_llm.count_tokens(PROMPT) + 6
        assert panel.generate() and panel.wait(60)
        assert panel.error.value == ""
        assert PROMPT + panel.result_text == baseline
    finally:
        panel.close()
    assert_usable(tiny_llm, baseline)


# ------------------------------------------------------------------------------ Ctrl-C


@pytest.mark.parametrize("how", ["raised-in-generate", "interrupt_main"])
def test_keyboard_interrupt_during_generate_releases_the_lock(tiny_llm, monkeypatch, baseline, how):
    with monkeypatch.context() as patch:
        if how == "interrupt_main":
            # What Ctrl-C in a kernel does: a KeyboardInterrupt at the next bytecode of the main thread.
            inject(patch, tiny_llm, step=3, action=_thread.interrupt_main)
        else:
            inject(patch, tiny_llm, step=3, error=KeyboardInterrupt())
        with pytest.raises(KeyboardInterrupt):
            tiny_llm.generate(PROMPT, max_new_tokens=200)
    assert_usable(tiny_llm, baseline)


def test_keyboard_interrupt_in_the_generation_thread_reaches_the_stream_caller(tiny_llm, monkeypatch, baseline):
    with monkeypatch.context() as patch:
        inject(patch, tiny_llm, step=3, error=KeyboardInterrupt())
        with pytest.raises(KeyboardInterrupt):
            for _ in tiny_llm.stream(PROMPT, max_new_tokens=200):
                pass
    assert_usable(tiny_llm, baseline)


def test_ctrl_c_while_reading_a_stream_stops_generation_and_releases_the_lock(tiny_llm, monkeypatch, baseline):
    budget = 250  # long enough that only the interrupt can end it early
    with monkeypatch.context() as patch:
        # The generation thread sends Ctrl-C to the main thread, which is waiting for text.
        inject(patch, tiny_llm, step=3, action=_thread.interrupt_main)
        with pytest.raises(KeyboardInterrupt):
            for _ in tiny_llm.stream(PROMPT, max_new_tokens=budget):
                pass
    stats = tiny_llm.last_stats
    assert stats.stopped and stats.new_tokens < budget, stats
    assert_usable(tiny_llm, baseline)


# ------------------------------------------------------------------------------ out of memory


MiB = 2**20


def _oom() -> torch.OutOfMemoryError:
    return torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (GPU 0; 15.77 GiB total capacity)")


def _oom_holding(held: list, device: torch.device | str = "cpu", mib: int = 1):
    """An action for ``inject``: allocate ``mib`` MiB in its own frame, as a failing step's activations
    and KV cache are, then run out of memory. ``held`` gets a weak reference to that tensor."""

    def fail() -> None:
        activations = torch.ones(mib * MiB // 4, device=device)  # float32: 4 bytes each
        held.append(weakref.ref(activations))
        raise _oom()

    return fail


def _assert_friendly_oom(exc: GenerationError) -> None:
    message = str(exc)
    assert "Out of memory" in message
    assert "max_length" in message, "should suggest a smaller max_length"
    assert "load_in_4bit" in message, "should suggest quantization"
    assert exc.__cause__ is None
    assert exc.__context__ is None or exc.__suppress_context__, "no chained traceback from inside generate"


def test_out_of_memory_in_generate_becomes_a_generation_error(tiny_llm, monkeypatch, baseline):
    # On CPU there is no CUDA cache to free: this checks the message; the next test checks the freeing.
    with monkeypatch.context() as patch:
        inject(patch, tiny_llm, step=2, error=_oom())
        with pytest.raises(GenerationError) as excinfo:
            tiny_llm.generate(PROMPT, max_new_tokens=50)
    _assert_friendly_oom(excinfo.value)
    assert_usable(tiny_llm, baseline)


def test_out_of_memory_in_a_stream_becomes_a_generation_error_in_the_caller(tiny_llm, monkeypatch, baseline):
    with monkeypatch.context() as patch:
        inject(patch, tiny_llm, step=2, error=_oom())
        with pytest.raises(GenerationError) as excinfo:
            for _ in tiny_llm.stream(PROMPT, max_new_tokens=50):
                pass
    _assert_friendly_oom(excinfo.value)
    assert_usable(tiny_llm, baseline)


def test_out_of_memory_shows_the_friendly_message_in_the_panel(tiny_llm, monkeypatch, baseline):
    panel = LLMPanel(tiny_llm, prompt=PROMPT, max_length=40)
    try:
        with monkeypatch.context() as patch:
            inject(patch, tiny_llm, step=2, error=_oom())
            assert panel.generate() and panel.wait(60)
        assert "GenerationError" in panel.error.value
        assert "Out of memory" in panel.error.value and "load_in_4bit" in panel.error.value
    finally:
        panel.close()
    assert_usable(tiny_llm, baseline)


@pytest.mark.parametrize("how", ["generate", "stream"])
def test_the_out_of_memory_error_does_not_keep_the_failed_frames_alive(tiny_llm, monkeypatch, how):
    held: list = []
    with monkeypatch.context() as patch:
        inject(patch, tiny_llm, step=2, action=_oom_holding(held))
        with pytest.raises(GenerationError) as excinfo:
            if how == "generate":
                tiny_llm.generate(PROMPT, max_new_tokens=50)
            else:
                "".join(tiny_llm.stream(PROMPT, max_new_tokens=50))
    gc.collect()
    assert excinfo.value is not None  # the error the notebook keeps (sys.last_value, Out[...])
    assert held[0]() is None, "the error still reaches the failed step's tensors through a chained traceback"


def test_out_of_memory_empties_the_cuda_cache_after_the_failed_tensors_are_gone(tiny_llm, monkeypatch, baseline):
    """The freeing path, run without a GPU: the engine is told it is on CUDA, torch.cuda's calls are
    recorded. empty_cache() only returns blocks no tensor uses, so it must come after the error (and
    the frames holding the failed step's tensors) has been dropped, not inside the except block."""
    engine = tiny_llm._engine
    real_left_pad = engine._left_pad
    held: list = []
    calls: list = []

    def left_pad_then_pretend_cuda(encoded):
        inputs = real_left_pad(encoded)  # real tensors on the real device
        monkeypatch.setattr(engine, "device", types.SimpleNamespace(type="cuda", index=0))
        return inputs

    def empty_cache():
        calls.append("released" if held and held[0]() is None else "still held")

    with monkeypatch.context() as patch:
        patch.setattr(engine, "_left_pad", left_pad_then_pretend_cuda)
        patch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device=None: calls.append("reset"))
        patch.setattr(torch.cuda, "empty_cache", empty_cache)
        inject(patch, tiny_llm, step=2, action=_oom_holding(held))
        with pytest.raises(GenerationError) as excinfo:
            tiny_llm.generate(PROMPT, max_new_tokens=50)
    monkeypatch.undo()  # the real device again
    _assert_friendly_oom(excinfo.value)
    assert calls == ["reset", "released"]
    assert_usable(tiny_llm, baseline)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_out_of_memory_on_cuda_returns_the_failed_steps_memory_to_the_driver(tiny_model_dir, monkeypatch):
    gpu_llm = HuggingFaceLLM(str(tiny_model_dir), device="cuda", dtype="float32")
    expected = gpu_llm.generate(PROMPT, max_new_tokens=6)
    torch.cuda.empty_cache()
    reserved = torch.cuda.memory_reserved(gpu_llm.device)
    held: list = []
    with monkeypatch.context() as patch:
        inject(patch, gpu_llm, step=2, action=_oom_holding(held, gpu_llm.device, mib=256))
        with pytest.raises(GenerationError) as excinfo:
            gpu_llm.generate(PROMPT, max_new_tokens=50)
    _assert_friendly_oom(excinfo.value)
    assert held[0]() is None
    # Without empty_cache(), or with it before the failed step's tensors are gone, torch would keep
    # those 256 MiB reserved: gone from the tensors, still taken from every other process.
    assert torch.cuda.memory_reserved(gpu_llm.device) < reserved + 256 * MiB
    assert gpu_llm.generate(PROMPT, max_new_tokens=6) == expected


# ------------------------------------------------------------------------------ damaged default-model cache


def _link_or_copy(src: str, dst: str) -> None:
    # Hard links make the copy free; every corruption below replaces a file instead of editing it,
    # so the real cache (the other name of the same inode) is never touched.
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _replace_file(path: Path, data: bytes) -> None:
    path.unlink()
    path.write_bytes(data)


@pytest.fixture
def temp_cache(tmp_path, monkeypatch, default_model_dir):
    """A private HFLLM_NB_CACHE holding a (linked) copy of the good default-model cache."""
    monkeypatch.setenv(default_model.CACHE_ENV, str(tmp_path / "cache"))
    target = default_model.default_model_dir()
    shutil.copytree(default_model_dir, target, copy_function=_link_or_copy)
    assert default_model.cache_state() == "ready"
    return target


@pytest.fixture
def fake_build(monkeypatch, default_model_dir):
    """Replace the ~30 s conversion by a copy of the good cache; records each call."""
    calls = []

    def build(gguf, target):
        calls.append(target)
        building = target.parent / f".{target.name}.building-fake"
        shutil.copytree(default_model_dir, building, copy_function=_link_or_copy)
        os.replace(building, target)

    monkeypatch.setattr(default_model, "_build", build)
    return calls


def _truncate(target: Path) -> None:
    weights = target / "model.safetensors"
    _replace_file(weights, weights.read_bytes()[: weights.stat().st_size // 3])


def _overwrite_header(target: Path) -> None:
    weights = target / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[8:200] = b"\x00" * 192  # same size, so only the header check can tell
    _replace_file(weights, bytes(data))


def _rewrite_manifest(target: Path, **changes) -> None:
    path = target / default_model._MANIFEST
    manifest = json.loads(path.read_text())
    manifest.update(changes)
    _replace_file(path, json.dumps(manifest).encode())


CORRUPTIONS = {
    "truncated-weights": _truncate,
    "overwritten-header": _overwrite_header,
    "missing-weights": lambda t: (t / "model.safetensors").unlink(),
    "missing-tokenizer": lambda t: (t / "tokenizer.json").unlink(),
    "missing-manifest": lambda t: (t / default_model._MANIFEST).unlink(),
    "manifest-not-json": lambda t: _replace_file(t / default_model._MANIFEST, b"{not json"),
    "manifest-old-format": lambda t: _rewrite_manifest(t, format=0),
    "manifest-other-gguf": lambda t: _rewrite_manifest(t, gguf_size=123),
    "manifest-without-files": lambda t: _rewrite_manifest(t, files={}),
    "empty-folder": lambda t: [p.unlink() for p in t.iterdir()],
}


@pytest.mark.parametrize("corrupt", CORRUPTIONS.values(), ids=CORRUPTIONS.keys())
def test_a_damaged_cache_is_detected_and_rebuilt_with_a_warning(temp_cache, fake_build, caplog, corrupt):
    corrupt(temp_cache)
    assert default_model.cache_state() == "corrupt"
    with caplog.at_level(logging.WARNING, logger="hfllm_nb"):
        assert default_model.prepare_default_model() == temp_cache
    assert fake_build == [temp_cache], "the cache should be rebuilt exactly once"
    assert "corrupt; rebuilding" in caplog.text and str(temp_cache) in caplog.text
    assert default_model.cache_state() == "ready"
    assert not list(temp_cache.parent.glob(f".{temp_cache.name}.old-*")), "the damaged copy was left behind"


def test_leftovers_of_a_killed_conversion_are_cleaned_up(temp_cache, fake_build):
    shutil.rmtree(temp_cache)
    stale = temp_cache.parent / f".{temp_cache.name}.building-killed"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half written")
    assert default_model.cache_state() == "missing"
    assert default_model.prepare_default_model() == temp_cache
    assert not stale.exists()
    assert default_model.cache_state() == "ready"


class _HalfWritingModel:
    """Stands in for the converted model: writes part of its weights, then gets Ctrl-C."""

    config = types.SimpleNamespace()

    def save_pretrained(self, folder):
        (Path(folder) / "model.safetensors").write_bytes(b"half written")
        raise KeyboardInterrupt


def _raise(error):
    def fail(*args, **kwargs):
        raise error

    return fail


def test_ctrl_c_during_conversion_leaves_no_partial_cache(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.setenv(default_model.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(AutoTokenizer, "from_pretrained", lambda *a, **k: object())
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", lambda *a, **k: _HalfWritingModel())
    with pytest.raises(KeyboardInterrupt):
        default_model.prepare_default_model()
    target = default_model.default_model_dir()
    assert not target.exists()
    assert [p.name for p in target.parent.iterdir() if not p.name.endswith(".lock")] == []
    assert default_model.cache_state() == "missing"


@pytest.mark.slow
def test_a_truncated_cache_is_really_rebuilt_and_gives_the_same_text(temp_cache, llm, caplog):
    expected = llm.generate("The capital of France is", max_new_tokens=8)
    _truncate(temp_cache)
    with caplog.at_level(logging.WARNING, logger="hfllm_nb"):
        rebuilt = HuggingFaceLLM()  # the real ~30 s conversion
    assert "corrupt; rebuilding" in caplog.text
    assert default_model.cache_state() == "ready"
    assert rebuilt.generate("The capital of France is", max_new_tokens=8) == expected


_CONVERT_AND_GENERATE = textwrap.dedent(
    """
    import logging, sys
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from hfllm_nb import HuggingFaceLLM
    llm = HuggingFaceLLM()
    print(llm.generate("The capital of France is", max_new_tokens=8))
    """
)


@pytest.mark.slow
def test_two_processes_converting_at_once_share_one_good_cache(tmp_path, llm):
    expected = llm.generate("The capital of France is", max_new_tokens=8)
    env = {**os.environ, default_model.CACHE_ENV: str(tmp_path / "cache"), "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CONVERT_AND_GENERATE],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = [proc.communicate(timeout=540) for proc in procs]
    for proc, (out, err) in zip(procs, results, strict=True):
        assert proc.returncode == 0, err[-2000:]
        assert out == expected + "\n"
    conversions = sum(err.count("to safetensors in") for _out, err in results)  # the INFO line of _build
    assert conversions == 1, "exactly one process should convert; the other waits on the lock"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(default_model.CACHE_ENV, str(tmp_path / "cache"))
        assert default_model.cache_state() == "ready"
    leftovers = [
        p.name for p in (tmp_path / "cache").iterdir() if p.name.startswith(".") and not p.name.endswith(".lock")
    ]
    assert leftovers == []


# ------------------------------------------------------------------------------ unwritable cache
# Root ignores file permissions, so these inject the errors a read-only cache gives an ordinary
# user; test_a_chmod_read_only_cache_falls_back does it for real when not run as root.


def _raise_on_mkdir(error):
    def mkdir(self, *args, **kwargs):
        raise error

    return mkdir


class _LockThatFails:
    def __init__(self, *args, **kwargs):
        pass

    def __enter__(self):
        raise PermissionError(errno.EACCES, "Permission denied", "cache/.lock")

    def __exit__(self, *exc):
        return False


UNWRITABLE = {
    "mkdir-permission-denied": lambda p: p.setattr(
        Path, "mkdir", _raise_on_mkdir(PermissionError(errno.EACCES, "Permission denied"))
    ),
    "read-only-file-system": lambda p: p.setattr(
        Path, "mkdir", _raise_on_mkdir(OSError(errno.EROFS, "Read-only file system"))
    ),
    "lock-permission-denied": lambda p: p.setattr(default_model, "FileLock", _LockThatFails),
    "disk-full-during-conversion": lambda p: p.setattr(
        default_model, "_build", _raise(OSError(errno.ENOSPC, "No space left on device"))
    ),
}


@pytest.mark.parametrize("make_unwritable", UNWRITABLE.values(), ids=UNWRITABLE.keys())
def test_an_unwritable_cache_falls_back_to_the_gguf_file_with_a_warning(tmp_path, monkeypatch, caplog, make_unwritable):
    monkeypatch.setenv(default_model.CACHE_ENV, str(tmp_path / "cache"))
    make_unwritable(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="hfllm_nb"):
        assert default_model.prepare_default_model() is None
        source = resolve_source(None)
    assert source.is_gguf, "HuggingFaceLLM() should load straight from the GGUF file"
    assert default_model.CACHE_ENV in caplog.text and "GGUF" in caplog.text


def test_an_unexpected_os_error_is_not_hidden_by_the_fallback(tmp_path, monkeypatch):
    monkeypatch.setenv(default_model.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(default_model, "_build", _raise(OSError(errno.EIO, "Input/output error")))
    with pytest.raises(OSError, match="Input/output error"):
        default_model.prepare_default_model()


def test_cli_prepare_with_an_unwritable_cache_exits_1_with_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(default_model.CACHE_ENV, str(tmp_path / "cache"))
    UNWRITABLE["mkdir-permission-denied"](monkeypatch)
    assert cli.main(["prepare"]) == 1
    _out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("hfllm-nb: error:") and default_model.CACHE_ENV in lines[0]
    assert "Traceback" not in err


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root ignores file permissions")
def test_a_chmod_read_only_cache_falls_back(tmp_path, monkeypatch, caplog):
    root = tmp_path / "cache"
    root.mkdir()
    root.chmod(0o500)
    monkeypatch.setenv(default_model.CACHE_ENV, str(root))
    try:
        with caplog.at_level(logging.WARNING, logger="hfllm_nb"):
            assert default_model.prepare_default_model() is None
        assert default_model.CACHE_ENV in caplog.text
    finally:
        root.chmod(0o700)
