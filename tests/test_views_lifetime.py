"""What a view holds and whom its Stop reaches: its own request only, and nothing after close or a dropped model."""

from __future__ import annotations

import gc
import threading
import time

import ipywidgets as widgets
import pytest
from _waits import run_with_deadline, wait_until

from hfllm_nb import ChatPanel, HuggingFaceLLM, LLMPanel, NextTokenExplorer


def _open_models() -> set[int]:
    """ids of the widget models ipywidgets still holds open (7.7 and 8 keep them in different places)."""
    registry = getattr(widgets.Widget, "widgets", None)
    if registry is None:
        registry = widgets.widget._instances  # ipywidgets 8
    return set(registry)


def _slow_criterion():
    import torch

    def slow(input_ids, scores, **kwargs):
        time.sleep(0.02)
        return torch.zeros(input_ids.shape[0], dtype=torch.bool)

    return slow


@pytest.mark.parametrize("kind", ["panel", "chat"])
def test_a_panels_stop_stops_its_own_run_and_no_other_callers(llm, kind):
    # Break caught: the panel's Stop called llm.stop(), which also stopped another thread's queued
    # generate (it returned 1 token, "stopped").
    if kind == "panel":
        panel = LLMPanel(llm, prompt="Once upon a time,", max_length=200)
    else:
        panel = ChatPanel(llm, max_length=300)
    other: dict = {}
    try:
        if kind == "panel":
            assert panel.generate()
        else:
            panel.send("Tell me a long story about a dragon.")
        wait_until(lambda: llm.is_busy, 30, "the panel's run to start")

        def queued() -> None:
            llm.generate("Hi", max_new_tokens=20, min_new_tokens=20)
            other["stats"] = llm.last_stats

        waiter = threading.Thread(target=queued)
        waiter.start()
        time.sleep(0.2)  # queued behind the panel's run
        assert panel.is_busy, "the panel's run ended before Stop: the test shows nothing"
        panel.stop()
        assert panel.wait(30)
        waiter.join(60)
        assert other["stats"].finish_reasons == ("length",) and other["stats"].new_tokens == 20
    finally:
        panel.close()


@pytest.mark.parametrize("make", ["panel", "chat", "explorer"])
def test_close_closes_every_widget_model_the_view_made(tiny_llm, make):
    # Break caught: close() closed the top box only; its children's Layout and Style models (53-173
    # of them) stayed open in the registry, keeping the view and its tensors alive.
    before = _open_models()
    if make == "panel":
        view = LLMPanel(tiny_llm)
    elif make == "chat":
        view = ChatPanel(tiny_llm)
    else:
        view = NextTokenExplorer(tiny_llm, "Hello", top_k=5)
    assert len(_open_models() - before) > 10
    view.close()
    assert _open_models() - before == set()


def test_a_dropped_model_is_freed_with_its_panel_and_readout(tiny_model_dir):
    # Break caught: the panel held the model strongly, so `llm = HuggingFaceLLM(); llm.panel()` run
    # again kept every old model's weights and its memory-readout thread.
    def readouts() -> int:
        return sum(t.name.startswith("hfllm_nb-memory") for t in threading.enumerate())

    before = readouts()
    llm = HuggingFaceLLM(str(tiny_model_dir), dtype="float32")
    panel = llm.panel()
    model = llm.model
    import weakref

    dropped = weakref.ref(model)
    del model, llm
    gc.collect()
    assert dropped() is None, "the model's weights outlived the dropped HuggingFaceLLM"
    wait_until(lambda: readouts() == before, 10, "the panel's memory readout to end")
    with pytest.raises(Exception, match="dropped|closed"):
        panel.generate() or panel.llm
    panel.close()


def test_ctrl_c_while_a_panel_is_built_leaves_no_readout_running(tiny_llm, monkeypatch):
    # Break caught: an interrupt after the memory readout started left its thread running.
    from hfllm_nb.widgets import panel as panel_module

    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt

    before = {t.ident for t in threading.enumerate()}
    monkeypatch.setattr(panel_module.LLMPanel, "_show_prompt_tokens", lambda self, change=None: None)
    monkeypatch.setattr(tiny_llm, "register_view", interrupted.__get__(tiny_llm))
    with pytest.raises(KeyboardInterrupt):
        LLMPanel(tiny_llm)
    monkeypatch.undo()
    def new_readouts() -> list:
        return [t for t in threading.enumerate() if t.ident not in before and t.name.startswith("hfllm_nb-memory")]

    run_with_deadline(lambda: wait_until(lambda: not new_readouts(), 10, "the readout thread to end"), 20)
