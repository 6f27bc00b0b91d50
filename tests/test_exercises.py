"""Exercise checks and the induction helpers: a check passes the reference, fails a wrong answer, reveals nothing."""

from __future__ import annotations

import torch

from hfllm_nb.exercises import check_beam_step, check_perplexity, check_top_p
from hfllm_nb.inside.induction import induction_scores, repeated_random_text, top_heads


def test_a_cell_left_as_given_runs_the_reference_and_passes():
    def not_written(*args):
        raise NotImplementedError

    for result in (check_top_p(not_written), check_beam_step(None)):
        assert result.passed and result.reference_used


def test_top_p_check_fails_an_answer_without_renormalizing():
    # Break caught: a check that passes anything (or a reference that is itself wrong).
    def unnormalized(probs, p):
        order = probs.argsort(descending=True)
        keep = order[(probs[order].cumsum(0) - probs[order]) < p]
        out = torch.zeros_like(probs)
        out[keep] = probs[keep]
        return out

    def normalized(probs, p):
        out = unnormalized(probs, p)
        return out / out.sum()

    failed = check_top_p(unnormalized)
    assert not failed.passed and "renormalized" in failed.message
    assert check_top_p(normalized).passed and not check_top_p(normalized).reference_used


def test_beam_check_fails_a_beam_step_that_ranks_only_the_new_token():
    def greedy_scores(beams, rows, width):
        out = [([*ids, t], float(row[t])) for (ids, _), row in zip(beams, rows, strict=False) for t in range(len(row))]
        return sorted(out, key=lambda b: -b[1])[:width]

    assert not check_beam_step(greedy_scores).passed


def test_perplexity_check_does_not_print_the_value(tiny_llm):
    text = "The cat sat on the mat."
    wrong = check_perplexity(tiny_llm, text, 3.0)
    assert not wrong.passed
    assert not any(ch.isdigit() for ch in wrong.message), wrong.message


def test_induction_score_is_one_for_a_perfect_copying_head():
    period, n = 5, 10
    weights = torch.zeros(2, 3, n, n)
    weights[:, :, torch.arange(n), 0] = 1.0  # every head: the first-token sink
    for i in range(period, n):
        weights[1, 2, i] = 0
        weights[1, 2, i, i - period + 1] = 1.0  # layer 1 head 2: the token after the earlier copy
    scores = induction_scores(weights, period)
    assert scores[1, 2] == 1.0 and scores[0].max() < 0.25
    assert top_heads(scores, 1)[0][:2] == (1, 2)


def test_the_repeated_random_text_tokenizes_back_to_itself(tiny_llm):
    text, ids = repeated_random_text(tiny_llm.tokenizer, 20, seed=3)
    assert len(ids) == 40 and ids[:20] == ids[20:] and len(set(ids[:20])) == 20
    assert tiny_llm.tokenizer(text)["input_ids"] == ids
