"""Out of memory where generate is not involved: the views and llm.run say what to do, and the model goes on."""

from __future__ import annotations

import pytest
import torch

from hfllm_nb import GenerationError, NextTokenExplorer


def _out_of_memory(*args, **kwargs):
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")


@pytest.mark.parametrize("view", ["attention", "logit_lens", "run"])
def test_out_of_memory_in_a_view_is_a_generation_error_and_the_model_keeps_working(tiny_llm, monkeypatch, view):
    # Break caught: the raw torch.OutOfMemoryError escaped from the views' forward passes.
    model = tiny_llm.model
    monkeypatch.setattr(model, "forward", _out_of_memory)
    with pytest.raises(GenerationError, match="Out of memory"):
        if view == "run":
            tiny_llm.run(lambda m, t: m(torch.tensor([[1, 2]])))
        else:
            getattr(tiny_llm, view)("Hello there")
    monkeypatch.undo()
    assert tiny_llm.generate("Hello", max_new_tokens=2)


def test_out_of_memory_in_the_explorer_shows_on_its_error_line(tiny_llm, monkeypatch):
    # Break caught: the error escaped the click handler and the error line stayed empty.
    explorer = NextTokenExplorer(tiny_llm, "Hello", top_k=5)
    try:
        monkeypatch.setattr(tiny_llm.model, "forward", _out_of_memory)
        explorer._act(explorer.step)
        assert "Out of memory" in explorer.error.value
    finally:
        monkeypatch.undo()
        explorer.close()


def test_the_logit_lens_reads_a_prompt_that_fills_the_whole_context(tiny_llm):
    # Break caught: the lens budgeted a token it never generates and refused a full-context prompt.
    prompt = "a" + " a" * (tiny_llm.context_length - 1)
    assert tiny_llm.count_tokens(prompt) == tiny_llm.context_length
    lens = tiny_llm.logit_lens(prompt)
    assert lens.top_ids.shape[1] == tiny_llm.context_length
