"""pytest plugin for the GPU check: run what the machine can, record every outcome as JSON.

Loaded with ``-p benchmarks.gpu.pytest_plugin`` by ``benchmarks/gpu/check.py``. Where the default
model is not installed (the GPU image), tests that use it through the ``llm`` or
``default_model_dir`` fixtures are deselected; the tiny-model tests still run, on CUDA there,
with the tokenizer from ``$HFLLM_NB_TOKENIZER_DIR`` (see tests/conftest.py). Once
``$HFLLM_NB_PYTEST_DEADLINE`` (a ``time.time()`` value) has passed, the remaining tests are
skipped, so a slow machine still finishes and reports; tests named in ``$HFLLM_NB_PYTEST_FIRST``
(comma-separated function names) run first, so they run whatever the time. Outcomes go to
``$HFLLM_NB_PYTEST_RESULTS``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

NEEDS_DEFAULT_MODEL = ("llm", "default_model_dir")
DEADLINE_ENV = "HFLLM_NB_PYTEST_DEADLINE"
RESULTS_ENV = "HFLLM_NB_PYTEST_RESULTS"
FIRST_ENV = "HFLLM_NB_PYTEST_FIRST"
OUT_OF_TIME = "the GPU check's time for tests ran out"

_records: list[dict[str, Any]] = []
_deselected: list[str] = []


def _default_model_installed() -> bool:
    from hfllm_nb.default_model import find_default_gguf
    from hfllm_nb.errors import ModelLoadError

    try:
        find_default_gguf()
    except ModelLoadError:
        return False
    return True


def pytest_configure(config: pytest.Config) -> None:
    # The suite marks browser tests with pytest-timeout's marker; --strict-markers needs it known.
    if not config.pluginmanager.hasplugin("timeout"):
        config.addinivalue_line("markers", "timeout(seconds): per-test limit (pytest-timeout is not installed)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    first = set(filter(None, os.environ.get(FIRST_ENV, "").split(",")))
    items.sort(key=lambda item: getattr(item, "originalname", item.name) not in first)  # stable: order kept
    if _default_model_installed():
        return
    kept, dropped = [], []
    for item in items:
        # fixturenames is the closure: fixtures that need the default model through others count too.
        (dropped if set(NEEDS_DEFAULT_MODEL) & set(getattr(item, "fixturenames", ())) else kept).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept
        _deselected.extend(item.nodeid for item in dropped)


def pytest_runtest_setup(item: pytest.Item) -> None:
    if time.time() > float(os.environ.get(DEADLINE_ENV, "inf")):
        pytest.skip(OUT_OF_TIME)


def _record(nodeid: str, when: str, outcome: str, longrepr: Any, duration: float = 0.0) -> None:
    text = str(longrepr) if longrepr else ""
    _records.append({"nodeid": nodeid, "when": when, "outcome": outcome, "duration": duration, "text": text[-4000:]})


def _save(exitstatus: int | None = None) -> None:
    # Rewritten after every test: if the run is killed, what ran so far is still there to read.
    target = os.environ.get(RESULTS_ENV)
    if target:
        payload = {"records": _records, "deselected": _deselected, "exitstatus": exitstatus}
        Path(target).write_text(json.dumps(payload, indent=1))


def pytest_collectreport(report: pytest.CollectReport) -> None:
    if report.failed:
        _record(report.nodeid, "collect", "error", report.longrepr)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    # One record per test: its call, or the setup/teardown phase that failed or skipped it.
    if report.when == "call" or report.outcome != "passed":
        outcome = report.outcome if report.when == "call" or report.outcome == "skipped" else "error"
        _record(report.nodeid, report.when, outcome, report.longrepr, report.duration)
        _save()


def pytest_runtest_logstart(nodeid: str, location: tuple[str, int | None, str]) -> None:
    _save_running(nodeid)


def _save_running(nodeid: str) -> None:
    target = os.environ.get(RESULTS_ENV)
    if target:
        Path(target).with_suffix(".running").write_text(nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _save(int(exitstatus))
