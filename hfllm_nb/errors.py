"""Exceptions raised by hfllm_nb, each with a message that says what to do next."""

from __future__ import annotations


class ModelLoadError(OSError):
    """A model or tokenizer could not be loaded.

    Subclasses ``OSError`` because that is what ``from_pretrained`` raises for a
    missing or unreachable model, so existing ``except OSError`` code keeps working.
    """


class GenerationError(RuntimeError):
    """Generation failed for a reason the caller can act on (for example, out of memory)."""
