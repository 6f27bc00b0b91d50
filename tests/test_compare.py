"""llm.compare: each lane's text is generate's, its probabilities those of a separate forward pass,
the parting position is where the token ids first differ; bad lanes are refused before anything runs."""

from __future__ import annotations

import math
import re

import pytest
import torch
from _fake_server import FakeServer

from hfllm_nb import Comparison, HuggingFaceLLM

PROMPT = "The capital of France is"
NEW = 6
LANES = {
    "greedy": {},
    "beam 2": {"num_beams": 2},
    "T=0.7, seed 1": {"do_sample": True, "temperature": 0.7, "seed": 1},
    "top-p 0.5": {"do_sample": True, "top_p": 0.5, "seed": 0},
}


@pytest.fixture(scope="module")
def comparison(llm32):
    return llm32.compare(PROMPT, LANES, max_new_tokens=NEW)


class ForwardCounter:
    """Counts the model's forward passes while active."""

    def __init__(self, model):
        self.calls = 0
        self.handle = model.register_forward_pre_hook(self.record)

    def record(self, *_args):
        self.calls += 1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


@pytest.mark.parametrize("name", list(LANES))
def test_each_lanes_text_equals_generate_with_its_options(llm32, comparison, name):
    expected = llm32.generate(PROMPT, max_new_tokens=NEW, return_full_text=False, **LANES[name])
    assert comparison.texts[name] == expected
    assert comparison.lanes[name].options == LANES[name]


def test_beam_search_found_another_text_than_greedy(comparison):
    # Otherwise the beam lane's own test could not tell beam search from greedy.
    assert comparison.texts["beam 2"] != comparison.texts["greedy"]


@pytest.mark.parametrize("name", list(LANES))
def test_each_tokens_probability_equals_a_separate_forward_pass(llm32, comparison, name):
    lane = comparison.lanes[name]
    prompt_ids = llm32.tokenizer(PROMPT)["input_ids"]
    new_ids = [token.token_id for token in lane.tokens]
    assert llm32.tokenizer.decode(new_ids) == lane.text
    if "num_beams" not in LANES[name]:
        assert len(new_ids) == NEW  # the tokens as generated, not the text split again
    with torch.inference_mode():
        logits = llm32.model(torch.tensor([prompt_ids + new_ids], device=llm32.device)).logits[0].float().cpu()
    probabilities = torch.softmax(logits[len(prompt_ids) - 1 : -1], dim=-1)  # row i scores new token i
    expected = [float(probabilities[i, token_id]) for i, token_id in enumerate(new_ids)]
    assert [token.probability for token in lane.tokens] == pytest.approx(expected, abs=1e-5)
    assert lane.log_probability == pytest.approx(sum(math.log(p) for p in expected), abs=1e-4)
    assert all(token.alternatives for token in lane.tokens)


def test_beam_search_scores_higher_than_greedy_here(comparison):
    # What beam search is for: a likelier whole sequence than greedy's token-by-token choice.
    assert comparison.lanes["beam 2"].log_probability > comparison.lanes["greedy"].log_probability


def test_parting_is_the_first_position_where_the_lanes_token_ids_differ(comparison):
    sequences = [[t.token_id for t in lane.tokens] for lane in comparison.lanes.values()]
    first = next(i for i in range(NEW) if len({ids[i] for ids in sequences}) > 1)
    assert comparison.parting == first
    same = Comparison(PROMPT, {"a": comparison.lanes["greedy"], "b": comparison.lanes["greedy"]})
    assert same.parting is None


def test_the_view_has_one_column_per_lane_coloured_tokens_totals_and_the_parting_mark(comparison):
    page = comparison._repr_html_()
    columns = page.split('class="hfllm-compare-lane"')[1:]
    assert len(columns) == len(LANES)
    for (name, lane), column in zip(comparison.lanes.items(), columns, strict=True):
        assert column.count('class="hfllm-token hfllm-generated-token"') == NEW
        assert len(set(re.findall(r"background-color:(#[0-9a-f]{6})", column))) > 1
        assert f"{NEW} tokens · total log-probability {lane.log_probability:.2f}" in column
        assert name in column and column.count("hfllm-compare-parting") == 1
        before = column.split("hfllm-compare-parting")[0]
        assert before.count("hfllm-generated-token") == comparison.parting
    assert f"the lanes part at new token {comparison.parting + 1}" in page


@pytest.mark.parametrize(
    ("prompt", "lanes", "kwargs", "error", "match"),
    [
        (PROMPT, [{}], {}, TypeError, "lanes must be a dict of name -> generate options"),
        (PROMPT, {}, {}, ValueError, "lanes is empty"),
        (PROMPT, {"a": 3}, {}, TypeError, "lane 'a': options must be a dict"),
        (PROMPT, {1: {}}, {}, TypeError, "non-empty str name"),
        (PROMPT, {"a": {}, "b": {"bogus": 1}}, {}, TypeError, "lane 'b': Unknown generation option"),
        (PROMPT, {"a": {"num_beams": 2, "do_sample": True}}, {}, ValueError, "lane 'a': num_beams > 1 with do_sample"),
        (PROMPT, {"a": {"temperature": -1, "do_sample": True}}, {}, ValueError, "lane 'a': temperature"),
        (PROMPT, {"a": {"max_new_tokens": 3}}, {}, TypeError, "lane 'a': max_new_tokens cannot be passed"),
        ("", {"a": {}}, {}, ValueError, "empty"),
        (PROMPT, {"a": {}}, {"max_new_tokens": 0}, ValueError, "max_new_tokens must be at least 1"),
    ],
)
def test_bad_input_is_refused_before_anything_runs_and_compare_still_works(llm32, prompt, lanes, kwargs, error, match):
    with ForwardCounter(llm32.model) as counter, pytest.raises(error, match=match):
        llm32.compare(prompt, lanes, **kwargs)
    assert counter.calls == 0
    assert llm32.compare(PROMPT, {"g": {}}, max_new_tokens=1).texts == {"g": " Paris"}


def test_on_a_server_sampling_lanes_run_without_probabilities_and_beam_lanes_are_refused(default_model_dir):
    with FakeServer() as server, HuggingFaceLLM(endpoint=server.url) as remote:
        with pytest.raises(ValueError, match="lane 'beam': num_beams needs the model in this process"):
            remote.compare(PROMPT, {"T": {"do_sample": True, "seed": 1}, "beam": {"num_beams": 2}})
        assert server.requests == []  # refused before the sampling lane ran
        lanes = {"T=0.7": {"do_sample": True, "temperature": 0.7, "seed": 1}, "greedy": {}}
        remote_comparison = remote.compare(PROMPT, lanes, max_new_tokens=4)
        for name, options in lanes.items():
            assert remote_comparison.texts[name] == remote.generate(
                PROMPT, max_new_tokens=4, return_full_text=False, **options
            )
        lane = remote_comparison.lanes["T=0.7"]
        assert lane.log_probability is None and all(t.probability is None for t in lane.tokens)
        assert server.requests[0]["seed"] == 1 and server.requests[0]["temperature"] == 0.7
        page = remote_comparison._repr_html_()
        assert "probabilities need the model in this process" in page and "total log-probability unknown" in page
