"""Ctrl-C, garbage collection, close and exit: no wait outlives one step, and the model keeps working.

Signals go to a child process (its main thread, as Jupyter's interrupt does), so a Ctrl-C landing
at the wrong moment can never take pytest itself down.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from _waits import run_with_deadline

from hfllm_nb import HuggingFaceLLM
from hfllm_nb.engines.local import model_thread

# A stopping criterion that makes every step of the tiny model take SLOW_STEP_S: a run that lasts.
SLOW = """
import time
from transformers import StoppingCriteria
class Slow(StoppingCriteria):
    def __call__(self, input_ids, scores, **kw):
        time.sleep(0.05)
        return False
"""


def _child(code: str, *args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    script = textwrap.dedent(SLOW) + textwrap.dedent(code)
    return subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_ctrl_c_storm_with_a_contending_thread_leaves_the_model_usable(tiny_model_dir, seed):
    # Breaks caught: the turn taken before its try (a KeyboardInterrupt right after acquire left it
    # held for good), a job queued before its try in stream(), a turn not given back after Ctrl-C.
    done = _child(
        """
        import random, signal, sys, threading, time
        from hfllm_nb import HuggingFaceLLM
        llm = HuggingFaceLLM(sys.argv[1], dtype="float32")
        random.seed(int(sys.argv[2]))
        busy = threading.Event()
        def contend():
            while not busy.is_set():
                llm.generate("Hello", max_new_tokens=2)
        worker = threading.Thread(target=contend, daemon=True)
        worker.start()
        main = threading.main_thread().ident
        interrupts, timers = 0, []
        deadline = time.monotonic() + 20
        while interrupts < 40 and time.monotonic() < deadline:
            try:
                timers.append(threading.Timer(random.uniform(0, 0.02), signal.pthread_kill, (main, signal.SIGINT)))
                timers[-1].start()
                how = random.choice(["generate", "stream", "count"])
                if how == "generate":
                    llm.generate("Hi", max_new_tokens=3)
                elif how == "stream":
                    "".join(llm.stream("Hi", max_new_tokens=3))
                else:
                    llm.count_tokens("Hi")
                time.sleep(0.03)  # a Ctrl-C still pending lands here
            except KeyboardInterrupt:
                interrupts += 1
        while True:  # the last Ctrl-C may come after the last call
            try:
                for timer in timers:
                    timer.cancel()
                    if timer.ident is not None:
                        timer.join()
                time.sleep(0.1)
                break
            except KeyboardInterrupt:
                pass
        busy.set()
        worker.join(10)
        start = time.monotonic()
        text = llm.generate("Hello", max_new_tokens=3)
        print("ok", interrupts, round(time.monotonic() - start, 2), not worker.is_alive())
        """,
        str(tiny_model_dir),
        str(seed),
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    word, interrupts, seconds, worker_ended = done.stdout.split()[-4:]
    assert word == "ok" and int(interrupts) >= 10 and float(seconds) < 5 and worker_ended == "True"


def test_a_half_read_stream_collected_on_the_model_thread_stalls_nothing(llm):
    # Break caught: the stream's finalizer waiting (30 s) for the job its own thread is running.
    import gc

    import torch

    collect = threading.Event()

    def collect_once(input_ids, scores, **kwargs):
        if collect.is_set():
            collect.clear()
            gc.collect()  # the cycle holding the stream dies here, on the model thread
        return torch.zeros(input_ids.shape[0], dtype=torch.bool)

    long = {"max_new_tokens": 200, "min_new_tokens": 200, "stopping_criteria": [collect_once]}
    stream = llm.stream("Once upon a time,", **long)  # a story: words, so pieces come at once
    next(stream)
    holder = {"stream": stream}
    holder["self"] = holder
    del stream, holder
    collect.set()
    started = time.perf_counter()
    run_with_deadline(lambda: llm.generate("Hello", max_new_tokens=2), 25)  # from another thread: waits its turn
    assert time.perf_counter() - started < 10


def test_ctrl_c_on_a_call_queued_behind_another_models_run_arrives_at_once(tiny_model_dir):
    # Break caught: a queued job waited the whole after-interrupt bound (30 s) for a job that never started.
    done = _child(
        """
        import signal, sys, threading, time
        from hfllm_nb import HuggingFaceLLM
        a = HuggingFaceLLM(sys.argv[1], dtype="float32")
        b = HuggingFaceLLM(sys.argv[1], dtype="float32")
        long = threading.Thread(target=lambda: a.generate("Hi", max_new_tokens=200, min_new_tokens=200,
                                                          stopping_criteria=[Slow()]), daemon=True)
        long.start()
        time.sleep(0.5)
        threading.Timer(0.5, signal.pthread_kill, (threading.main_thread().ident, signal.SIGINT)).start()
        start = time.monotonic()
        try:
            b.generate("Hi", max_new_tokens=2)
        except KeyboardInterrupt:
            pass
        queued = time.monotonic() - start
        threading.Timer(0.5, signal.pthread_kill, (threading.main_thread().ident, signal.SIGINT)).start()
        start = time.monotonic()
        try:
            HuggingFaceLLM(sys.argv[1], dtype="float32")
        except KeyboardInterrupt:
            pass
        loading = time.monotonic() - start
        a.stop()
        long.join(10)
        print("ok", round(queued, 2), round(loading, 2), b.generate("Hi", max_new_tokens=2) != "")
        """,
        str(tiny_model_dir),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    word, queued, loading, works = done.stdout.split()[-4:]
    assert word == "ok" and float(queued) < 3 and float(loading) < 3 and works == "True"


def test_close_does_not_wait_for_another_models_run(tiny_model_dir, tiny_llm):
    # Break caught: close() queued its free() behind the other model's whole run.
    from transformers import StoppingCriteria

    class Slow(StoppingCriteria):
        def __call__(self, input_ids, scores, **kw):
            time.sleep(0.05)
            return False

    other = HuggingFaceLLM(str(tiny_model_dir), dtype="float32")
    slow = threading.Thread(
        target=lambda: tiny_llm.generate("Hi", max_new_tokens=200, min_new_tokens=200, stopping_criteria=[Slow()])
    )
    slow.start()
    try:
        time.sleep(0.3)
        started = time.perf_counter()
        run_with_deadline(other.close, 30)
        assert time.perf_counter() - started < 3
        assert tiny_llm.is_busy  # the other model's run went on
    finally:
        tiny_llm.stop()
        slow.join(30)


def test_an_interrupted_close_still_lets_go_of_the_model_thread(tiny_model_dir, monkeypatch):
    # Break caught: close() marked itself done before releasing, so a Ctrl-C in between left the
    # engine thread held for good and a second close() did nothing.
    llm = HuggingFaceLLM(str(tiny_model_dir), dtype="float32")
    engine = llm._engine
    monkeypatch.setattr(engine, "_free", lambda: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        llm.close()
    assert engine not in model_thread._users
    monkeypatch.undo()
    llm.close()  # a second close is harmless


@pytest.mark.parametrize("how", ["open stream", "daemon generate"])
def test_a_script_ending_mid_generation_exits_cleanly(default_model_dir, how):
    # Break caught: the interpreter tore down while the model thread ran torch (exit 134,
    # "terminate called without an active exception").
    done = _child(
        """
        import sys, threading
        from hfllm_nb import HuggingFaceLLM
        llm = HuggingFaceLLM(sys.argv[1], dtype="float32")
        if sys.argv[2] == "open stream":
            stream = llm.stream("Once upon a time,", max_new_tokens=400, min_new_tokens=400)
            next(stream)
        else:
            threading.Thread(target=lambda: llm.generate("Once upon a time,", max_new_tokens=400,
                                                         min_new_tokens=400), daemon=True).start()
            import time; time.sleep(1)
        print("leaving")
        """,
        str(default_model_dir),
        how,
    )
    assert done.returncode == 0 and "terminate called" not in done.stderr, (done.returncode, done.stderr[-2000:])


def test_two_quick_ctrl_cs_on_the_command_exit_130(default_model_dir):
    # Break caught: the second Ctrl-C landed in the clean-up and the process aborted (exit -6).
    command = [sys.executable, "-m", "hfllm_nb", "generate", "Once upon a time,", "--max-new-tokens", "2000",
               "--stream", "--model", str(default_model_dir)]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        process.stdout.read(20)  # generating
        process.send_signal(signal.SIGINT)
        time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        assert process.wait(30) == 130
    finally:
        process.kill()
        process.wait()


def test_ctrl_c_right_after_the_turn_is_taken_gives_it_back(monkeypatch):
    # Break caught: the turn's lock was acquired before the try that releases it, so a
    # KeyboardInterrupt landing between the two (here: in recording the holder) left it held for good.
    import itertools

    from hfllm_nb.core import turns as turns_module

    turns = turns_module.Turns()
    calls = itertools.count()
    real = threading.current_thread

    def interrupted_once():
        if next(calls) == 1:  # the call that records the holder, after the turn is taken
            raise KeyboardInterrupt
        return real()

    monkeypatch.setattr(turns_module.threading, "current_thread", interrupted_once)
    with pytest.raises(KeyboardInterrupt), turns.turn():
        pass
    monkeypatch.undo()
    assert not turns.busy
    run_with_deadline(lambda: turns.turn().__enter__(), 5)  # the next call gets it
