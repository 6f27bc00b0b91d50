"""One model thread per in-process engine: every torch op runs there, callbacks fail fast, close ends it."""

from __future__ import annotations

import _thread
import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest
import torch
from _waits import run_with_deadline
from transformers import StoppingCriteria

from hfllm_nb import GenerationError, HuggingFaceLLM, LLMPanel, NextTokenExplorer
from hfllm_nb.inside.explain import explain_stream

PROMPT = "Once upon a time,"


class ForwardThreads:
    """Records the thread of every forward pass of ``model`` while active."""

    def __init__(self, model) -> None:
        self.names: list[str] = []
        self.idents: set[int] = set()
        self._handle = model.register_forward_pre_hook(self._record)

    def _record(self, *args) -> None:
        self.names.append(threading.current_thread().name)
        self.idents.add(threading.get_ident())

    def remove(self) -> None:
        self._handle.remove()


def engine_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "hfllm_nb-engine"]


def test_every_way_to_run_the_model_runs_it_on_the_one_engine_thread(tiny_llm):
    # Catches any path that runs the model on the caller's or a fresh thread (two OpenMP teams).
    engine_thread = tiny_llm._engine.model_thread.thread
    watch = ForwardThreads(tiny_llm.model)
    try:
        tiny_llm.generate(PROMPT, max_new_tokens=3)
        "".join(tiny_llm.stream(PROMPT, max_new_tokens=3))
        "".join(tiny_llm.chat("Hi", stream=True, max_new_tokens=3))
        tiny_llm.explain(PROMPT, max_new_tokens=3)
        list(explain_stream(tiny_llm, PROMPT, max_new_tokens=3))
        tiny_llm.logit_lens(PROMPT)
        tiny_llm.run(lambda model, tokenizer: model(torch.tensor([[1, 2]])))
        explorer = NextTokenExplorer(tiny_llm, PROMPT)
        explorer.step()
        explorer.close()
        panel = LLMPanel(tiny_llm, prompt=PROMPT, max_length=12)
        assert panel.generate() and panel.wait(60)
        panel.close()
    finally:
        watch.remove()
    assert len(watch.names) > 20
    assert watch.idents == {engine_thread.ident}, set(watch.names)


def test_the_torch_thread_setting_of_the_caller_applies_on_the_engine_thread(tiny_llm):
    # torch.set_num_threads is per OS thread under OpenMP: a notebook's setting must still count.
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert tiny_llm.run(lambda model, tokenizer: torch.get_num_threads()) == 1
    finally:
        torch.set_num_threads(before)
    assert tiny_llm.run(lambda model, tokenizer: torch.get_num_threads()) == before


class CallsTheModel(StoppingCriteria):
    """A callback that calls back into the model, as issue 18's reproduction does."""

    def __init__(self, call) -> None:
        self.call, self.errors = call, []

    def __call__(self, input_ids, scores, **kwargs):
        try:
            self.call()
        except GenerationError as exc:
            self.errors.append(exc)
            raise
        return torch.zeros(input_ids.shape[0], dtype=torch.bool)


@pytest.mark.parametrize("how", ["stream", "generate", "explain"])
def test_a_callback_that_calls_the_model_fails_at_once_instead_of_hanging(tiny_llm, how):
    callback = CallsTheModel(lambda: tiny_llm.generate("hi", max_new_tokens=2))
    runs = {
        "stream": lambda: "".join(tiny_llm.stream("Hello", max_new_tokens=5, stopping_criteria=[callback])),
        "generate": lambda: tiny_llm.generate("Hello", max_new_tokens=5, stopping_criteria=[callback]),
        "explain": lambda: tiny_llm.explain("Hello", max_new_tokens=5, stopping_criteria=[callback]),
    }
    started = time.perf_counter()
    with pytest.raises(GenerationError, match="inside a running generation"):
        run_with_deadline(runs[how], seconds=30)
    assert time.perf_counter() - started < 10
    assert callback.errors, "the inner call itself must raise"
    assert not tiny_llm.is_busy
    assert tiny_llm.generate("Hello", max_new_tokens=2)


@pytest.mark.parametrize("inner", ["run", "explain", "close"])
def test_views_and_close_called_from_a_callback_fail_at_once(tiny_llm, inner):
    calls = {
        "run": lambda: tiny_llm.run(lambda model, tokenizer: None),
        "explain": lambda: tiny_llm.explain("hi", max_new_tokens=1),
        "close": tiny_llm.close,
    }
    callback = CallsTheModel(calls[inner])
    with pytest.raises(GenerationError, match="inside a running generation|inside a generation callback"):
        run_with_deadline(lambda: tiny_llm.generate("Hello", max_new_tokens=3, stopping_criteria=[callback]), 30)
    assert tiny_llm.generate("Hello", max_new_tokens=2), "the object keeps working (and was not closed)"


def test_a_closed_model_says_so_and_closing_twice_is_harmless(tiny_model_dir):
    llm = HuggingFaceLLM(str(tiny_model_dir), dtype="float32")
    llm.generate(PROMPT, max_new_tokens=2)
    llm.close()
    with pytest.raises(GenerationError, match="was closed"):
        llm.generate(PROMPT, max_new_tokens=2)
    llm.close()


def test_models_share_one_thread_and_the_last_close_ends_it(tiny_model_dir):
    # In a fresh process: the suite's own models hold the thread here. Two models, one OpenMP team.
    code = f"""
        import threading
        from hfllm_nb import HuggingFaceLLM
        def engine_threads():
            return [t for t in threading.enumerate() if t.name == "hfllm_nb-engine"]
        first = HuggingFaceLLM({str(tiny_model_dir)!r}, dtype="float32")
        second = HuggingFaceLLM({str(tiny_model_dir)!r}, dtype="bfloat16")
        assert first._engine.model_thread is second._engine.model_thread
        assert len(engine_threads()) == 1
        first.generate("Hi", max_new_tokens=2)
        second.generate("Hi", max_new_tokens=2)
        first.close()
        assert len(engine_threads()) == 1 and second.generate("Hi", max_new_tokens=2)
        second.close()
        assert engine_threads() == [], engine_threads()
        third = HuggingFaceLLM({str(tiny_model_dir)!r}, dtype="float32")  # starts a new one
        assert third.generate("Hi", max_new_tokens=2) and len(engine_threads()) == 1
        third.close()
        assert not [t for t in threading.enumerate() if t.name.startswith("hfllm_nb")]
        print("ok")
    """
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]


def test_close_during_a_stream_in_another_thread_returns_promptly(default_model_dir):
    llm = HuggingFaceLLM()  # the real model: 200 tokens take seconds, so close() comes mid-run
    started = threading.Event()
    outcome: dict = {}

    def reader() -> None:
        try:
            for _ in llm.stream(PROMPT, max_new_tokens=200, min_new_tokens=200):
                started.set()
        except GenerationError as exc:
            outcome["error"] = exc
        outcome["stats"] = llm.last_stats

    worker = threading.Thread(target=reader)
    worker.start()
    assert started.wait(30)
    began = time.perf_counter()
    llm.close()
    assert time.perf_counter() - began < 10
    worker.join(30)
    assert not worker.is_alive()
    assert "error" in outcome or outcome["stats"].stopped


def test_ctrl_c_while_waiting_leaves_the_engine_thread_running_and_usable(tiny_llm):
    thread = tiny_llm._engine.model_thread.thread

    class Interrupts(StoppingCriteria):
        calls = 0

        def __call__(self, input_ids, scores, **kwargs):
            Interrupts.calls += 1
            if Interrupts.calls == 3:
                _thread.interrupt_main()  # what Jupyter's interrupt button does to the kernel
            return torch.zeros(input_ids.shape[0], dtype=torch.bool)

    with pytest.raises(KeyboardInterrupt):
        tiny_llm.generate(PROMPT, max_new_tokens=200, min_new_tokens=200, stopping_criteria=[Interrupts()])
    assert tiny_llm.last_stats is None or tiny_llm.last_stats.new_tokens < 200
    assert not tiny_llm.is_busy
    assert thread.is_alive() and engine_threads().count(thread) == 1
    assert tiny_llm.generate(PROMPT, max_new_tokens=2)


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts OS threads through Linux's /proc")
def test_no_surface_gives_the_caller_an_openmp_team_of_its_own(default_model_dir):
    # A parallel torch op on a second OS thread starts a second OpenMP team (one more OS thread
    # here), and with more OpenMP threads than cores every op slows down (1.26-1.37x measured).
    code = """
        import os, time, torch
        def threads(): return len(os.listdir("/proc/self/task"))
        def settled(target):  # a joined Python thread leaves /proc a moment after join() returns; a team stays
            deadline = time.monotonic() + 3
            while threads() > target and time.monotonic() < deadline:
                time.sleep(0.02)
            return threads()
        from hfllm_nb import HuggingFaceLLM, NextTokenExplorer
        llm = HuggingFaceLLM()
        llm.generate("Hi there", max_new_tokens=4)
        start = threads()
        "".join(llm.stream("Hi there", max_new_tokens=4))
        llm.chat("Hi", max_new_tokens=3)
        llm.explain("Hi there", max_new_tokens=3)
        explorer = NextTokenExplorer(llm, "The capital of France is")
        explorer.temperature = 0.5; explorer.top_p = 0.9; explorer.top_k = 5
        explorer.step(); explorer.sample(seed=1); explorer.undo(); explorer.candidates; explorer.kept
        llm.logit_lens("The capital of France is")
        llm.attention("The capital of France is")
        llm.compare("The capital", {"g": {}, "s": {"do_sample": True, "seed": 1}}, max_new_tokens=4)
        panel = llm.panel(prompt="Hi there", max_length=12, probabilities=True)
        assert panel.generate() and panel.wait(60)
        panel.close()
        after = settled(start)
        torch.randn(200_000).mul_(2)  # the control: the same measure sees a caller's own team
        print(start, after, threads())
    """
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    start, after, control = map(int, result.stdout.split()[-3:])
    assert after == start, f"{after - start} more OS threads: a surface ran torch on the caller's thread"
    if torch.get_num_threads() > 1:
        assert control > after, "the control op should have started a team (is the measure blind?)"
