"""Exercise checks: run the learner's code against a reference on cases it has not seen; say pass or not yet.

Why this shape: a check that prints the expected value teaches copying. These compare on several
cases and report only how many differ and a hint. A cell left as given (the function raises
``NotImplementedError`` or the answer is ``None``) makes the check run the reference solution
instead and say so, so a notebook still runs top to bottom under nbmake.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from ..llm import HuggingFaceLLM

Beam = tuple[list[int], float]  # token ids so far, their total log-probability


@dataclass(frozen=True)
class CheckResult:
    """One exercise's verdict: ``passed``, and a message that never contains the answer."""

    name: str
    passed: bool
    message: str
    reference_used: bool = False

    def __bool__(self) -> bool:
        return self.passed

    def __repr__(self) -> str:
        mark = "✓" if self.passed else "✗ not yet"
        return f"{self.name}: {mark}. {self.message}"

    def _repr_html_(self) -> str:
        import html

        colour = "#1a7f37" if self.passed else "#b35900"
        return f'<div style="color:{colour};font-family:sans-serif">{html.escape(repr(self))}</div>'


_AS_GIVEN = "Your cell is still as given, so the reference solution ran instead (it passes). Write yours and run again."


def _call(fn: Callable[..., Any] | None, reference: Callable[..., Any], *args: Any) -> tuple[Any, bool]:
    """``fn(*args)``, or the reference's result (and True) when ``fn`` is missing or not written yet."""
    if fn is None:
        return reference(*args), True
    try:
        return fn(*args), False
    except NotImplementedError:
        return reference(*args), True


# ----------------------------------------------------------------------------- top-p


def _top_p(probs: torch.Tensor, p: float) -> torch.Tensor:
    order = probs.argsort(descending=True)
    before = probs[order].cumsum(0) - probs[order]  # mass of the strictly likelier tokens
    keep = torch.zeros_like(probs, dtype=torch.bool)
    keep[order[before < p]] = True  # the token that crosses p is kept
    kept = torch.where(keep, probs, torch.zeros_like(probs))
    return kept / kept.sum()


def check_top_p(fn: Callable[[torch.Tensor, float], torch.Tensor] | None, cases: int = 30) -> CheckResult:
    """``fn(probs, p)`` must return the top-p distribution: the smallest set of likeliest tokens
    whose mass reaches ``p``, renormalized, zeros elsewhere."""
    generator = torch.Generator().manual_seed(1234)
    wrong, used = 0, False
    for case in range(cases):
        probs = torch.softmax(torch.randn(50, generator=generator) * (1 + case % 4), 0).double()
        p = [0.5, 0.9, 0.95, 0.3][case % 4]
        got, used = _call(fn, _top_p, probs.clone(), p)
        got = torch.as_tensor(got, dtype=torch.float64)
        if got.shape != probs.shape or not torch.allclose(got, _top_p(probs, p), atol=1e-6):
            wrong += 1
    if wrong:
        hint = "is the token that crosses p kept? is the result renormalized to sum to 1?"
        return CheckResult("top-p", False, f"{wrong} of {cases} test distributions differ; {hint}")
    return CheckResult("top-p", True, _AS_GIVEN if used else f"all {cases} test distributions match.", used)


# ----------------------------------------------------------------------------- a beam step


def _beam_step(beams: Sequence[Beam], next_log_probs: Sequence[torch.Tensor], width: int) -> list[Beam]:
    candidates = [
        ([*ids, token], score + float(row[token]))
        for (ids, score), row in zip(beams, next_log_probs, strict=True)
        for token in row.topk(width).indices.tolist()
    ]
    return sorted(candidates, key=lambda beam: -beam[1])[:width]


def check_beam_step(fn: Callable[..., list[Beam]] | None, cases: int = 20) -> CheckResult:
    """``fn(beams, next_log_probs, width)``: extend every beam by every token, keep the ``width`` best totals.

    ``beams`` is a list of (ids, total log-probability); ``next_log_probs[b]`` the log-probabilities
    of the next token after beam b. Returns the new beams, best first.
    """
    generator = torch.Generator().manual_seed(99)
    wrong, used = 0, False
    for case in range(cases):
        width = 2 + case % 3
        beams = [([case, b], -float(torch.rand(1, generator=generator)) * 3) for b in range(width)]
        rows = [torch.log_softmax(torch.randn(12, generator=generator) * 2, 0) for _ in beams]
        got, used = _call(fn, _beam_step, [(list(ids), s) for ids, s in beams], rows, width)
        expected = _beam_step(beams, rows, width)
        same = len(got) == len(expected) and all(
            list(a[0]) == b[0] and math.isclose(float(a[1]), b[1], abs_tol=1e-5)
            for a, b in zip(got, expected, strict=False)
        )
        wrong += not same
    if wrong:
        hint = "do you add each token's log-probability to its beam's total, and rank all width × vocab candidates?"
        return CheckResult("beam step", False, f"{wrong} of {cases} cases differ; {hint}")
    return CheckResult("beam step", True, _AS_GIVEN if used else f"all {cases} cases match.", used)


# ----------------------------------------------------------------------------- measurements on the model


def _perplexity(llm: HuggingFaceLLM, text: str) -> float:
    from ..inside.interventions import loss

    return math.exp(loss(llm, text))


def check_perplexity(llm: HuggingFaceLLM, text: str, value: float | None) -> CheckResult:
    """``value`` must be the perplexity of ``text`` (exp of the mean negative log-likelihood), to 1%."""
    truth = _perplexity(llm, text)
    if value is None:
        return CheckResult("perplexity", True, _AS_GIVEN, True)
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return CheckResult("perplexity", False, f"expected a number, got {value!r}.")
    if math.isclose(value, truth, rel_tol=0.01):
        return CheckResult("perplexity", True, "matches the model's own loss.")
    hint = "is it exp(mean NLL)? averaged over predicted tokens only (one fewer than the tokens)? in nats?"
    side = "high" if value > truth else "low"
    return CheckResult("perplexity", False, f"too {side}; {hint}")


def check_induction_head(llm: HuggingFaceLLM, layer: int | None, head: int | None, seed: int = 7) -> CheckResult:
    """(``layer``, ``head``) must be an induction head: on a fresh random sequence seen twice, it puts
    at least 40% of its attention on the token after the current token's first occurrence."""
    from ..inside.induction import induction_scores, repeated_random_text, top_heads

    text, ids = repeated_random_text(llm.tokenizer, 20, seed=seed)
    scores = induction_scores(llm.attention(text).weights, len(ids) // 2)
    used = layer is None or head is None
    if used:
        layer, head, _ = top_heads(scores, 1)[0]
    score = float(scores[layer, head])
    if score >= 0.4:
        return CheckResult("induction head", True, _AS_GIVEN if used else f"score {score:.2f} on a new sequence.", used)
    return CheckResult("induction head", False, f"score {score:.2f} on a new sequence; look for a head above 0.4.")


def check_fine_tuned_fact(run: Any, prompt: str, target: str, before_below: float = 0.2) -> CheckResult:
    """A ``FineTuneRun`` must have moved P(``target`` | ``prompt``) from below ``before_below`` to above 0.5."""
    if run is None:
        return CheckResult(
            "fine-tuned fact", True, "Your cell is still as given; fine-tune a fact and run again.", True
        )
    name = next((k for k in run.probes if k.startswith(prompt) and k.endswith(target.strip())), None)
    if name is None:
        return CheckResult("fine-tuned fact", False, f"pass probes=[({prompt!r}, {target!r})] to fine_tune.")
    before, after = run.probes[name][0], run.probes[name][-1]
    if before >= before_below:
        return CheckResult(
            "fine-tuned fact", False, f"the model already believed it (P = {before:.2f}): pick a new fact."
        )
    if after <= 0.5:
        return CheckResult("fine-tuned fact", False, f"P rose to {after:.2f} only; more steps, layers or a larger lr?")
    return CheckResult("fine-tuned fact", True, f"P({target!r}) {before:.3f} → {after:.3f}.")
