"""Checks for the notebooks' exercises: each says pass or not-yet without printing the answer."""

from .checks import (
    CheckResult,
    check_beam_step,
    check_fine_tuned_fact,
    check_induction_head,
    check_perplexity,
    check_top_p,
)

__all__ = [
    "CheckResult",
    "check_beam_step",
    "check_fine_tuned_fact",
    "check_induction_head",
    "check_perplexity",
    "check_top_p",
]
