"""Interventions, the head sweep and fine-tuning: each test names the break it catches."""

from __future__ import annotations

import math

import pytest
import torch

from hfllm_nb import HuggingFaceLLM
from hfllm_nb.inside.head_sweep import HeadSweep, head_sweep, render_sweep
from hfllm_nb.inside.interventions import (
    HeadsOff,
    Patch,
    RopeOff,
    SkipAttention,
    SkipMLP,
    intervene,
    loss,
    next_token_probs,
    probability,
    residual,
)
from hfllm_nb.inside.training import fine_tune, restored, train_steps

PROMPT = "The capital of France is"


def _logits(llm, ids=(1, 2, 3, 4, 5)):
    def job(model, tokenizer):
        with torch.inference_mode():
            return model(torch.tensor([list(ids)])).logits[0].float().clone()

    return llm.run(job)


def _weights(llm):
    def job(model, tokenizer):
        return {n: (p.detach().clone(), p.dtype, p.requires_grad) for n, p in model.named_parameters()}

    return llm.run(job)


def _same_weights(before, after):
    assert before.keys() == after.keys()
    for name, (value, dtype, grad) in before.items():
        assert after[name][1] == dtype, f"{name} left as {after[name][1]}"
        assert after[name][2] == grad, f"{name}.requires_grad changed"
        assert torch.equal(after[name][0], value), f"{name} not restored"


# --------------------------------------------------------------------- restored afterwards


def test_an_error_inside_intervene_removes_every_hook(tiny_llm):
    # Break caught: a hook left on the model after an error changes every later cell.
    clean = _logits(tiny_llm)

    def job(model, tokenizer):
        with intervene(model, HeadsOff(0, 1), SkipAttention(1), SkipMLP(0), RopeOff()):
            with torch.inference_mode():
                changed = model(torch.tensor([[1, 2, 3, 4, 5]])).logits[0].float()
            raise RuntimeError(changed)

    with pytest.raises(RuntimeError) as raised:
        tiny_llm.run(job)
    assert not torch.allclose(raised.value.args[0], clean), "the changes did nothing inside the block"
    assert torch.equal(_logits(tiny_llm), clean)


def test_rope_off_changes_the_pass_and_is_restored(llm):
    # Break caught: RoPE left off (or never switched off). Measured: the loss rises by about a nat.
    text = "The cat sat on the mat. The dog slept on the rug by the door."
    before = loss(llm, text)
    without = loss(llm, text, RopeOff())
    assert without > before + 0.3, (before, without)
    assert loss(llm, text) == before


def test_a_bad_change_fails_before_any_hook(tiny_llm):
    clean = _logits(tiny_llm)
    with pytest.raises(ValueError, match="layer must be"):
        next_token_probs(tiny_llm, PROMPT, HeadsOff(0, 0), HeadsOff(2, 0))
    with pytest.raises(ValueError, match="heads must be"):
        next_token_probs(tiny_llm, PROMPT, HeadsOff(0, 5))
    with pytest.raises(ValueError, match="one token"):
        probability(tiny_llm, PROMPT, " Paris is")
    assert torch.equal(_logits(tiny_llm), clean)


# --------------------------------------------------------------------- the right thing changed


def test_heads_off_zeroes_exactly_that_head(tiny_llm):
    # Break caught: the wrong head zeroed (an off-by-one in the head's columns of o_proj's input).
    # Zeroing head h's input columns of o_proj is the same as zeroing those columns of its weight.
    def by_weight(model, tokenizer, head):
        o_proj = model.model.layers[1].self_attn.o_proj
        with restored(model, ["model.layers.1.self_attn.o_proj.weight"]), torch.no_grad():
            o_proj.weight[:, head * 16 : (head + 1) * 16] = 0
            ids = torch.tensor([tokenizer(PROMPT)["input_ids"]])
            return torch.softmax(model(ids).logits[0, -1].float(), -1)

    for head in (0, 1):
        expected = tiny_llm.run(by_weight, head)
        assert torch.allclose(next_token_probs(tiny_llm, PROMPT, HeadsOff(1, head)), expected, atol=1e-6)
    other = tiny_llm.run(by_weight, 0)
    assert not torch.allclose(next_token_probs(tiny_llm, PROMPT, HeadsOff(1, 1)), other, atol=1e-6)


def test_skipping_every_sublayer_leaves_the_embeddings_through_the_head(tiny_llm):
    # Break caught: a skip that zeroes the residual stream instead of the sublayer's contribution.
    changes = [SkipAttention(0), SkipAttention(1), SkipMLP(0), SkipMLP(1)]

    def by_hand(model, tokenizer):
        with torch.inference_mode():
            ids = torch.tensor(tokenizer(PROMPT)["input_ids"])
            return torch.softmax(model.lm_head(model.model.norm(model.model.embed_tokens(ids)))[-1].float(), -1)

    assert torch.allclose(next_token_probs(tiny_llm, PROMPT, *changes), tiny_llm.run(by_hand), atol=1e-6)


def test_patching_the_last_residual_gives_the_other_prompts_prediction(tiny_llm):
    # Break caught: a patch written to the wrong layer or position (or not written at all).
    other = "Once upon a time there"
    patch = residual(tiny_llm, other, layer=1, position=-1)
    assert isinstance(patch, Patch)
    patched = next_token_probs(tiny_llm, PROMPT, patch)
    assert torch.allclose(patched, next_token_probs(tiny_llm, other), atol=1e-5)
    # Written at position 0 after the last layer, it reaches no later position: the prediction is the clean one.
    first = next_token_probs(tiny_llm, PROMPT, Patch(1, 0, patch.value))
    assert torch.allclose(first, next_token_probs(tiny_llm, PROMPT), atol=1e-6)
    assert not torch.allclose(first, patched, atol=1e-5)


# --------------------------------------------------------------------- the head sweep


def test_the_batched_sweep_equals_one_head_at_a_time(llm):
    # Break caught: row h of the batched pass missing another head than h.
    sweep = head_sweep(llm, PROMPT, " Paris", layers=[0], attention=False)
    alone = [probability(llm, PROMPT, " Paris", HeadsOff(0, head)) for head in range(sweep.probabilities.shape[1])]
    assert torch.allclose(sweep.probabilities[0], torch.tensor(alone, dtype=torch.float64), rtol=0.02)
    assert max(alone) / min(alone) > 2  # the heads differ, so a shifted head would show
    assert math.isclose(sweep.base, probability(llm, PROMPT, " Paris"), rel_tol=1e-5)


def test_sweep_delta_is_negative_where_the_head_helps(llm):
    # Break caught: Δ with its sign flipped. Measured: without layer 23 head 4, P(' Paris') 0.76 -> 0.14.
    sweep = head_sweep(llm, PROMPT, " Paris", layers=[23], attention=False)
    off = probability(llm, PROMPT, " Paris", HeadsOff(23, 4))
    assert math.isclose(float(sweep.probabilities[23, 4]), off, rel_tol=1e-3)
    assert off < 0.3 < 0.6 < sweep.base
    assert math.isclose(float(sweep.delta[23, 4]), math.log(off) - math.log(sweep.base), rel_tol=1e-3)
    assert float(sweep.delta[23, 4]) < 0
    assert sweep.strongest(1)[0][:2] == (23, 4)
    assert torch.isnan(sweep.probabilities[0]).all(), "layers not asked for were swept"


def _fake_sweep(tokens, target):
    probabilities = torch.tensor([[0.5, 0.1], [float("nan"), float("nan")]], dtype=torch.float64)
    return HeadSweep(
        tokens, target, 7, 0.4, [(target, 0.4)], probabilities,
        {(0, 0): [(target, 0.5)], (0, 1): [("<i>", 0.6)]}, torch.full((2, 2, len(tokens)), 0.5),
    )  # fmt: skip


def test_sweep_html_escapes_model_text_and_runs_no_script():
    # Break caught: model text pasted into HTML unescaped (a token can be "<script>").
    sweep = _fake_sweep(["<script>alert(1)</script>", " & "], "<img src=x onerror=alert(2)>")
    page = render_sweep(sweep)
    assert "<script" not in page and "<img" not in page and "<i>" not in page
    assert "&lt;script&gt;" in page and "&amp;" in page
    assert "http" not in page and "javascript:" not in page.lower()
    assert page.count('tabindex="0"') == 2  # the two swept cells, the unswept layer not drawn
    assert "linear-gradient" in page  # the colour bar
    assert "#ca0020" in page  # the target's bar is marked


def test_sweep_colours_a_drop_red_and_a_rise_blue():
    sweep = _fake_sweep(["a", "b"], " x")
    page = render_sweep(sweep)
    from hfllm_nb.inside.head_sweep import colour

    assert colour(-1.0, 1.0) == "#ca0020" and colour(1.0, 1.0) == "#0571b0" and colour(0.0, 1.0) == "#f7f7f7"
    assert colour(float(sweep.delta[0, 1]), 1.0) in page  # 0.1 < 0.4: a drop


# --------------------------------------------------------------------- fine-tuning


def test_fine_tune_restores_the_weights_after_an_error_mid_training(tiny_llm):
    # Break caught: the weights (or requires_grad, or train mode) left changed when training fails.
    before = _weights(tiny_llm)
    ids = tiny_llm.tokenizer("The capital of France is London.")["input_ids"]
    seen = []

    def emit(item):
        seen.append(item)
        if item[0] == "step" and item[1] == 2:
            raise RuntimeError("failed mid-training")

    class NoStop:
        def is_set(self):
            return False

    with pytest.raises(RuntimeError, match="mid-training"):
        tiny_llm.run(lambda model, tok: train_steps(model, ids, {}, {}, 5, 1e-2, [0, 1], ["mlp"], emit, NoStop()))
    assert [s[1] for s in seen if s[0] == "step"] == [0, 1, 2]
    _same_weights(before, _weights(tiny_llm))
    assert tiny_llm.run(lambda model, tok: model.training) is False


def test_fine_tune_lowers_the_loss_then_restores_even_in_bfloat16(tiny_model_dir):
    # Break caught: steps rounded away in bfloat16, or the float32 copies left in the model.
    with HuggingFaceLLM(str(tiny_model_dir), dtype="bfloat16") as llm:
        before = _weights(llm)
        run = fine_tune(llm, "The capital of France is London.", steps=4, lr=1e-2, layers=[0, 1],
                        probes=[(PROMPT, " London")])  # fmt: skip
        assert run.losses[-1] < run.losses[0] - 0.5, run.losses
        p = run.probes[f"{PROMPT} → London"]
        assert len(p) == 5 and p[-1] > p[0]
        _same_weights(before, _weights(llm))
        assert run.parameters == 2 * 3 * 32 * 64 and not run.stopped


def test_stop_during_fine_tune_ends_it_and_restores(tiny_llm):
    # Break caught: Stop ignored by the training loop, or the weights kept after a Stop.
    before = _weights(tiny_llm)
    run = fine_tune(tiny_llm, "The capital of France is London.", steps=50, lr=1e-2, layers=[1],
                    on_step=lambda step, loss, probes: step == 2 and tiny_llm.stop())  # fmt: skip
    assert run.stopped and 2 <= len(run.losses) < 50
    _same_weights(before, _weights(tiny_llm))


def test_fine_tune_refuses_a_quantized_model(tiny_llm, monkeypatch):
    # Break caught: int8/int4 weights cast to float32 and trained, then "restored" into the wrong dtype.
    monkeypatch.setattr(tiny_llm, "quantized", True)
    with pytest.raises(ValueError, match="without quantization_config"):
        fine_tune(tiny_llm, "The capital of France is London.", steps=1)
