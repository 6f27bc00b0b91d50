"""A bound on tests that could deadlock: they fail instead of hanging the suite."""

from __future__ import annotations

import threading


def run_with_deadline(fn, seconds: float = 60.0):
    """Run ``fn`` in a thread: a deadlock fails the test instead of hanging the suite."""
    box: dict = {}

    def work() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still blocked after {seconds} s: deadlock"
    if "error" in box:
        raise box["error"]
    return box["value"]
