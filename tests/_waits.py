"""Bounded waits for tests: a deadlock or a hang fails the test instead of stalling the suite."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any


def run_with_deadline(fn: Callable[[], Any], seconds: float = 60.0) -> Any:
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


def wait_until(check: Callable[[], Any], timeout: float = 60.0, what: str = "the condition", poll: float = 0.02) -> Any:
    """Poll ``check`` until it is truthy (and return its value); fail naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f} s waiting for {what}"
        time.sleep(poll)
