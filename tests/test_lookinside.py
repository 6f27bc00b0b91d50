"""Token probabilities, the streamed explanation and the logit lens, against separate float32 forward passes."""

from __future__ import annotations

import html
import threading

import pytest
import torch

from hfllm_nb import ExplainedToken, Explanation, HuggingFaceLLM, LogitLens
from hfllm_nb.core.tokens import split_characters
from hfllm_nb.engines.local.distributions import reshape
from hfllm_nb.inside.explain import explain_stream
from hfllm_nb.inside.html import probability_colour, render_explanation, render_logit_lens, render_tokens_html

PROMPT = "The capital of France is"
TOLERANCE = 1e-4
NEW = 4  # " Paris", ".", "\n", "\n": a line break among them


@pytest.fixture(scope="module")
def greedy(llm32):
    return llm32.explain(PROMPT, max_new_tokens=NEW, top_k=5)


def next_token_logits(llm: HuggingFaceLLM, ids: list[int]) -> torch.Tensor:
    """A fresh forward pass of the prefix ``ids``: the raw logits for the token after it."""
    with torch.inference_mode():
        return llm.model(torch.tensor([ids], device=llm.device)).logits[0, -1].float().cpu()


def entropy_of(probs: torch.Tensor) -> float:
    return float(-(probs * probs.log()).nan_to_num().sum())


def test_each_probability_and_entropy_match_a_separate_forward_of_its_prefix(llm32, greedy):
    ids = [token.token_id for token in greedy.tokens]
    assert greedy.tokens[0].probability is None and greedy.tokens[0].entropy is None
    assert sum(token.is_prompt for token in greedy.tokens) == llm32.count_tokens(PROMPT)
    for position in range(1, len(ids)):
        token = greedy.tokens[position]
        probs = torch.softmax(next_token_logits(llm32, ids[:position]), dim=-1)
        assert token.probability == pytest.approx(float(probs[ids[position]]), abs=TOLERANCE), position
        assert token.entropy == pytest.approx(entropy_of(probs), abs=TOLERANCE), position
        top = probs.topk(5)
        assert token.alternative_ids[0] == int(probs.argmax()), position
        assert [p for _, p in token.alternatives] == pytest.approx(top.values.tolist(), abs=TOLERANCE)
        assert token.alternatives[0][0] == llm32.tokenizer.decode(top.indices[0])


def test_greedy_tokens_are_the_argmax_and_the_text_equals_generate(llm32, greedy):
    assert greedy.text == llm32.generate(PROMPT, max_new_tokens=NEW)
    generated = greedy.generated
    assert len(generated) == NEW
    assert all(token.token_id == token.alternative_ids[0] for token in generated)
    assert all(token.sampled_probability is None for token in greedy.tokens)
    assert greedy.settings == {"do_sample": False}


def test_sampling_keeps_the_raw_and_the_sampled_probability(llm32):
    settings = {"do_sample": True, "seed": 3, "temperature": 0.5, "top_p": 0.9}
    explained = llm32.explain(PROMPT, max_new_tokens=4, **settings)
    assert explained.text == llm32.generate(PROMPT, max_new_tokens=4, **settings)  # same draw as generate
    ids = [token.token_id for token in explained.tokens]
    top_k = llm32.model.generation_config.top_k  # generate's default top-k applies when sampling
    for position in range(len(ids) - 4, len(ids)):
        token = explained.tokens[position]
        logits = next_token_logits(llm32, ids[:position])
        raw = torch.softmax(logits, dim=-1)
        sampled = reshape(logits, temperature=0.5, top_k=top_k, top_p=0.9)
        assert token.probability == pytest.approx(float(raw[token.token_id]), abs=TOLERANCE)
        assert token.sampled_probability == pytest.approx(float(sampled[token.token_id]), abs=TOLERANCE)
    assert explained.settings["seed"] == 3


def test_temperature_reshape_is_softmax_of_scaled_logits(llm32):
    logits = next_token_logits(llm32, llm32.tokenizer(PROMPT)["input_ids"])
    assert torch.allclose(reshape(logits, temperature=0.5), torch.softmax(logits / 0.5, dim=-1), atol=1e-6)
    kept = reshape(logits, top_p=0.5)
    assert kept.sum() == pytest.approx(1.0, abs=1e-5)
    assert 0 < int((kept > 0).sum()) < 10  # a handful of tokens carry half the mass


def test_a_character_split_over_tokens_reads_as_escapes_not_replacement_characters(llm32):
    explained = llm32.explain("日本語 café", max_new_tokens=2)
    partial = [token for token in explained.tokens if token.partial_bytes is not None]
    assert partial, "the prompt should split 日 and 語 over several byte-level tokens"
    assert all("\ufffd" not in token.text for token in explained.tokens)
    assert partial[0].text == "".join(f"\\x{b:02x}" for b in partial[0].partial_bytes)
    joined = split_characters(explained.tokens)
    assert "日" in joined and "語" in joined
    page = explained._repr_html_()
    assert "\ufffd" not in page and "&#x27;日&#x27;" in page  # the hover text names the whole character


def test_logit_lens_last_row_is_the_models_own_prediction(llm32):
    lens = llm32.logit_lens(PROMPT)
    ids = llm32.tokenizer(PROMPT)["input_ids"]
    layers = llm32.model.config.num_hidden_layers
    assert lens.probabilities.shape == lens.top_ids.shape == (layers + 1, len(ids))
    assert len(lens.top_tokens) == len(lens.layer_names) == layers + 1
    with torch.inference_mode():
        probs = torch.softmax(llm32.model(torch.tensor([ids], device=llm32.device)).logits[0].float(), dim=-1).cpu()
    best = probs.max(dim=-1)
    assert lens.top_ids[-1].tolist() == best.indices.tolist()
    assert torch.allclose(lens.probabilities[-1], best.values, atol=TOLERANCE)
    assert lens.top_tokens[-1][-1] == llm32.generate(PROMPT, max_new_tokens=1, return_full_text=False)


def test_logit_lens_row_i_reads_the_output_of_block_i(llm32):
    """Checked with a hook on one block, so an off-by-one between rows and layers shows."""
    lens = llm32.logit_lens(PROMPT)
    block = 10
    seen = {}
    handle = llm32.model.model.layers[block - 1].register_forward_hook(
        lambda _m, _a, out: seen.setdefault("h", out[0] if isinstance(out, tuple) else out)
    )
    try:
        with torch.inference_mode():
            llm32.model(torch.tensor([llm32.tokenizer(PROMPT)["input_ids"]], device=llm32.device))
            logits = llm32.model.lm_head(llm32.model.model.norm(seen["h"]))[0].cpu()
    finally:
        handle.remove()
    assert lens.layer_names[block] == f"layer {block}"
    assert lens.top_ids[block].tolist() == logits.argmax(dim=-1).tolist()


def test_explain_stream_yields_what_explain_records(llm32, greedy):
    streamed = list(explain_stream(llm32, PROMPT, max_new_tokens=NEW))
    assert streamed == greedy.generated  # same ids, texts, probabilities, alternatives


def test_closing_the_stream_stops_generation_and_frees_the_model(llm32):
    stream = explain_stream(llm32, PROMPT, max_new_tokens=200)
    next(stream)
    stream.close()
    assert not llm32.is_busy
    assert llm32.generate(PROMPT, max_new_tokens=2)


def test_stop_event_ends_the_stream_within_a_step(llm32):
    stop = threading.Event()
    stream = explain_stream(llm32, PROMPT, max_new_tokens=200, stop_event=stop)
    first = [next(stream), next(stream)]
    stop.set()
    rest = list(stream)
    assert len(first) + len(rest) <= 4, len(rest)


def test_an_error_in_the_generation_thread_is_raised_in_the_reader(llm32):
    def broken(input_ids, scores):
        raise RuntimeError("processor failed on purpose")

    with pytest.raises(RuntimeError, match="on purpose"):
        list(explain_stream(llm32, PROMPT, max_new_tokens=5, logits_processor=[broken]))
    assert not llm32.is_busy
    assert llm32.generate(PROMPT, max_new_tokens=2)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"prompt": "   "}, ValueError, "empty"),
        ({"prompt": ["a", "b"]}, TypeError, "one prompt"),
        ({"top_k": 0}, ValueError, "between 1 and the vocabulary"),
        ({"top_k": 10**6}, ValueError, "vocabulary size 49152"),
        ({"top_k": "5"}, TypeError, "top_k must be an int"),
        ({"max_new_tokens": 0}, ValueError, "at least 1"),
        ({"temperature": 0.5}, ValueError, "do_sample=True"),
        ({"no_such_option": 1}, TypeError, "no_such_option"),
    ],
)
def test_bad_input_raises_a_clear_error_and_leaves_the_model_free(llm32, kwargs, error, match):
    kwargs = {"prompt": PROMPT, "max_new_tokens": 2, **kwargs}
    with pytest.raises(error, match=match):
        llm32.explain(**kwargs)
    assert not llm32.is_busy


def test_after_a_bad_call_the_same_object_explains_as_before(llm32, greedy):
    with pytest.raises(ValueError):
        llm32.explain(PROMPT, max_new_tokens=NEW, top_k=10**6)  # fails after the model is taken
    assert llm32.explain(PROMPT, max_new_tokens=NEW, top_k=5) == greedy


def test_explain_stream_checks_its_input_before_the_first_token(llm32):
    with pytest.raises(ValueError, match="alternatives must be between 1"):
        explain_stream(llm32, PROMPT, alternatives=0)  # raised by the call itself, not by next()
    with pytest.raises(TypeError, match="add_special_tokens"):
        explain_stream(llm32, PROMPT, add_special_tokens="no")


def test_results_hold_numbers_not_vocabulary_rows(greedy):
    """Each step was cut down to top-k and a few floats: no tensor survives in the result."""
    for token in greedy.tokens:
        for value in vars(token).values():
            assert not isinstance(value, torch.Tensor)
        assert len(token.alternatives) in (0, 5)


# ----------------------------------------------------------------------------- HTML


EVIL = '<script>alert("x")</script>'


def _evil_token(is_prompt: bool, probability: float | None) -> ExplainedToken:
    return ExplainedToken(EVIL, 7, is_prompt, probability, 1.0 if probability else None, ((EVIL, 0.5),), (7,))


def test_explanation_html_escapes_model_text_and_uses_no_script_or_stylesheet():
    explanation = Explanation([_evil_token(True, None), _evil_token(False, 0.25)], EVIL, {"do_sample": False})
    page = render_explanation(explanation)
    assert "<script" not in page and "<style" not in page
    assert html.escape(EVIL) in page
    assert page.count('title="') == 2  # each token carries its hover text as an attribute
    assert "&lt;script&gt;alert(&quot;x&quot;)" in page  # quotes escaped inside the title too


def test_logit_lens_html_escapes_tokens():
    lens = LogitLens([EVIL], ["embeddings"], torch.tensor([[7]]), [[EVIL]], torch.tensor([[0.5]]))
    page = render_logit_lens(lens)
    assert "<script" not in page and "&lt;script" in page


def test_logit_lens_html_carries_a_colour_legend_from_the_cells_own_scale():
    # Break caught: a heatmap whose colours can only be read by hovering (issue 29, item 7).
    lens = LogitLens(["a"], ["embeddings"], torch.tensor([[7]]), [["b"]], torch.tensor([[0.5]]))
    page = render_logit_lens(lens)
    assert "hfllm-legend" in page and "linear-gradient" in page
    assert probability_colour(0.0) in page and probability_colour(1.0) in page and probability_colour(0.5) in page


def test_token_colour_follows_probability():
    unlikely, likely = probability_colour(0.01), probability_colour(0.99)
    assert unlikely != likely
    assert probability_colour(None) == "#ffffff"
    spans = render_tokens_html([_evil_token(False, 0.01), _evil_token(False, 0.99)])
    assert unlikely in spans and likely in spans


def test_explanation_view_of_the_real_model(greedy):
    page = greedy._repr_html_()
    assert page.count('class="hfllm-token ') == len(greedy.tokens)
    assert "entropy" in page and " Paris" in page
    assert any(token.text == "\n" for token in greedy.generated)
    assert ">↵\n</span>" in page  # a line break stays a visible, hoverable token


def test_public_names(greedy):
    import hfllm_nb
    from hfllm_nb.widgets.explorer import NextTokenExplorer

    assert hfllm_nb.NextTokenExplorer is NextTokenExplorer
    assert isinstance(greedy, hfllm_nb.Explanation)
    assert {"NextTokenExplorer", "Explanation", "LogitLens"} <= set(hfllm_nb.__all__)
