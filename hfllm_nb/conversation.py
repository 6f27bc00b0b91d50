"""Kept for `from hfllm_nb.conversation import Conversation` (README until 0.1); it lives in core now."""

from .core.conversation import Conversation

__all__ = ["Conversation"]
