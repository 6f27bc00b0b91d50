"""Soak: hundreds of generations and Generate/Stop cycles leak neither memory nor threads."""

from __future__ import annotations

import gc
import threading
import time

import psutil
import pytest
import torch
from _waits import wait_until

from hfllm_nb import LLMPanel

PROMPTS = ["The capital of France is", "Once upon a time,", "def fibonacci(n):", "Water boils at"]
PROMPT = PROMPTS[0]
MIB = 2**20
OUR_THREADS = ("hfllm_nb-engine", "hfllm_nb-panel", "hfllm_nb-memory")


def rss() -> int:
    gc.collect()
    return psutil.Process().memory_info().rss


def our_threads() -> list[str]:
    return sorted(t.name for t in threading.enumerate() if t.name in OUR_THREADS)


def settle(expected: int, timeout: float = 10.0) -> int:
    """Thread count once finished threads are gone (a joined thread may linger for a moment)."""
    deadline = time.monotonic() + timeout
    while threading.active_count() > expected and time.monotonic() < deadline:
        time.sleep(0.01)
    return threading.active_count()




@pytest.fixture
def one_intra_op_thread():
    """Leaks do not depend on torch's thread count, but time does: on a busy 2-core machine two
    OpenMP threads in the main thread make each tiny generate 3-6x slower than one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.slow
def test_200_generations_keep_rss_flat_and_leak_no_threads(llm, one_intra_op_thread):
    full = {p: llm.generate(p, max_new_tokens=2) for p in PROMPTS}
    new = {p: llm.generate(p, max_new_tokens=2, return_full_text=False) for p in PROMPTS}
    reply = llm.chat("Say hi.", max_new_tokens=2)
    for prompt in PROMPTS * 2:  # warm-up: allocator and tokenizer caches fill here
        "".join(llm.stream(prompt, max_new_tokens=2))
    threads = threading.active_count()
    before = rss()
    for i in range(200):
        prompt = PROMPTS[i % len(PROMPTS)]
        if i % 10 == 3:
            assert "".join(llm.stream(prompt, max_new_tokens=2)) == new[prompt]
        elif i % 10 == 7:
            assert llm.chat("Say hi.", max_new_tokens=2) == reply
        else:
            assert llm.generate(prompt, max_new_tokens=2) == full[prompt]
    after = rss()
    growth = (after - before) / MIB
    print(f"\nRSS over 200 generations: {before / MIB:.1f} -> {after / MIB:.1f} MiB ({growth:+.2f} MiB)")
    assert growth < 64, f"RSS grew {growth:.1f} MiB over 200 generations"
    assert settle(threads) == threads, our_threads()
    assert not llm.is_busy


@pytest.mark.slow
def test_50_generate_stop_cycles_keep_the_model_correct_and_leak_no_threads(llm):
    expected = llm.generate(PROMPT, max_new_tokens=8)
    threads = threading.active_count()
    budget = 300  # far more than a cycle lasts: only Stop ends a run
    panel = LLMPanel(llm, prompt=PROMPT, max_length=llm.count_tokens(PROMPT) + budget)
    with_panel = threading.active_count()  # + the memory readout
    try:
        for i in range(50):
            assert panel.generate(), f"cycle {i}: Generate was refused: {panel.error.value}"
            if i % 2:  # stop mid-stream; on even cycles stop at once, before any text
                wait_until(lambda: panel.result_text or not panel.is_busy)
            panel.stop()
            assert panel.wait(30), f"cycle {i}: the panel did not become idle"
            assert panel.error.value == "", panel.error.value
            assert not llm.is_busy
            stats = panel.last_stats
            assert stats is None or stats.new_tokens < budget, f"cycle {i}: Stop did not stop"
            assert settle(with_panel) == with_panel, our_threads()
        assert llm.generate(PROMPT, max_new_tokens=8) == expected
        # The panel itself still gives the greedy text after all that stopping.
        panel.max_length.value = llm.count_tokens(PROMPT) + 8
        assert panel.generate() and panel.wait(60)
        assert PROMPT + panel.result_text == expected
    finally:
        panel.close()
    count = settle(threads)
    print(f"\nthreads: {threads} before, {with_panel} with the panel, {count} after close")
    assert count == threads, our_threads()


@pytest.mark.slow
def test_closing_a_panel_mid_generation_ends_its_thread_and_memory_timer(llm):
    expected = llm.generate(PROMPT, max_new_tokens=8)
    threads, names = threading.active_count(), our_threads()
    panel = LLMPanel(llm, prompt=PROMPT, max_length=llm.count_tokens(PROMPT) + 300, memory_interval=0.05)
    assert panel.generate()
    wait_until(lambda: panel.result_text)
    assert {"hfllm_nb-panel", "hfllm_nb-engine", "hfllm_nb-memory"} <= set(our_threads())
    started = time.perf_counter()
    panel.close()
    assert time.perf_counter() - started < 10
    assert not panel.memory.running
    assert not llm.is_busy and llm.last_stats.stopped
    assert settle(threads) == threads, our_threads()
    assert our_threads() == names
    assert llm.generate(PROMPT, max_new_tokens=8) == expected
