"""Shared by the real-browser tests: a JupyterLab server, headless Chromium, notebook helpers.

Needs Debian's Chromium at /usr/bin/chromium (``.ci/install-browser.sh``). Without it the
tests skip locally and fail in CI (``CI`` set), where they must run. Screenshots and the
server log land in ``test-artifacts/``.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nbformat
import pytest
from _waits import wait_until

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",  # CI runs as root in a container
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"

# Every wait is bounded, so a broken page fails instead of hanging. The slowest steps are the
# server's first start and the model load in the kernel, seconds each on an idle 2-core runner.
SERVER_START_S = 90
PAGE_LOAD_S = 60
KERNEL_IDLE_S = 90


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _skip_or_fail(reason: str) -> None:
    """In CI a missing browser is a broken runner, not a reason to skip."""
    if _in_ci():
        pytest.fail(f"CI must run the browser tests, but {reason}", pytrace=False)
    pytest.skip(reason)


# ----------------------------------------------------------------------------- JupyterLab server


@dataclass(frozen=True)
class Lab:
    url: str
    token: str
    root: Path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _api(lab: Lab, path: str, method: str = "GET") -> Any:
    request = urllib.request.Request(f"{lab.url}{path}", method=method, headers={"Authorization": f"token {lab.token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        body = response.read()
    return json.loads(body) if body else None


def _write_settings(folder: Path) -> None:
    """User settings that keep JupyterLab quiet: no news toast, no update check."""
    path = folder / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))


def _wait_for_server(lab: Lab, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"JupyterLab exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(OSError):
            _api(lab, "/api/status")
            return
        time.sleep(0.3)
    pytest.fail(f"JupyterLab did not answer within {SERVER_START_S} s:\n{log.read_text()[-3000:]}")


def _stop_server(lab: Lab, process: subprocess.Popen) -> None:
    # Kernels run in their own sessions: shut them down through the API, then the server.
    with contextlib.suppress(OSError, ValueError):
        for kernel in _api(lab, "/api/kernels"):
            _api(lab, f"/api/kernels/{kernel['id']}", method="DELETE")
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


@pytest.fixture(scope="module", name="lab")  # a named fixture: modules import lab_fixture to use it
def lab_fixture(tmp_path_factory, request) -> Iterator[Lab]:
    """A JupyterLab server on a free port, in a fresh folder, with its own settings."""
    home = tmp_path_factory.mktemp("jupyterlab")
    root = home / "root"
    root.mkdir()
    _write_settings(home / "settings")
    env = {
        **os.environ,
        "JUPYTERLAB_SETTINGS_DIR": str(home / "settings"),
        "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces"),
        "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
    }
    port, token = _free_port(), secrets.token_hex(16)
    lab = Lab(url=f"http://127.0.0.1:{port}", token=token, root=root)
    command = [
        sys.executable, "-m", "jupyter", "lab",
        "--no-browser", "--allow-root", "--ip=127.0.0.1", f"--port={port}",
        f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
        "--LabApp.news_url=None",  # no announcements feed, so no "get notified?" toast
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        "--LabApp.expose_app_in_browser=True",  # window.jupyterapp: kernel state and commands
    ]  # fmt: skip
    log = home / "server.log"
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=root)
    try:
        _wait_for_server(lab, process, log)
        yield lab
    finally:
        _stop_server(lab, process)
        ARTIFACTS.mkdir(exist_ok=True)
        (ARTIFACTS / f"jupyterlab-server-{request.module.__name__}.log").write_text(log.read_text())


# ----------------------------------------------------------------------------- browser


@pytest.fixture(scope="module", name="browser")
def browser_fixture() -> Iterator[Any]:
    if not CHROMIUM.exists():
        _skip_or_fail(f"{CHROMIUM} is missing; install it with .ci/install-browser.sh.")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _skip_or_fail("playwright is not installed; pip install -e '.[test]'.")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, timeout=60_000)
        try:
            yield browser
        finally:
            browser.close()


_KERNEL_STATE = """() => {
    const panel = window.jupyterapp && window.jupyterapp.shell.currentWidget;
    const kernel = panel && panel.sessionContext && panel.sessionContext.session
        && panel.sessionContext.session.kernel;
    return kernel ? `${kernel.status}/${kernel.connectionStatus}` : "no kernel";
}"""


def _wait_for_idle_kernel(page: Any) -> None:
    """Wait until the notebook's kernel is connected and idle, accepting a kernel dialog.

    The toolbar's idle circle shows before a kernel even exists, and cells run before the
    kernel is ready are dropped, so this asks the session itself.
    """
    dialog = page.locator(".jp-Dialog")

    def idle() -> bool:
        if dialog.count():  # "Select Kernel", shown when the notebook names no known kernel
            choices = dialog.locator("select")
            python = choices.locator("option", has_text="Python 3")
            if python.count():
                choices.first.select_option(value=python.first.get_attribute("value"))
            dialog.locator(".jp-Dialog-button.jp-mod-accept").first.click()
        return page.evaluate(_KERNEL_STATE) == "idle/connected"

    wait_until(idle, KERNEL_IDLE_S, "the notebook's kernel to be idle")


_RUN_CODE = """async (code) => {
    const app = window.jupyterapp;
    const notebook = app.shell.currentWidget.content;
    notebook.activeCellIndex = notebook.widgets.length - 1;
    await app.commands.execute("notebook:insert-cell-below");
    const cell = notebook.activeCell;
    cell.model.sharedModel.setSource(code);
    await app.commands.execute("notebook:run-cell");
    const outputs = cell.model.outputs.toJSON();
    const text = (o) => o.text || (o.data && o.data["text/plain"]) || o.evalue || "";
    return outputs.map(text).join("");
}"""


def _run_code(page: Any, code: str) -> str:
    """Append a code cell, run it, and return its text output (the kernel's view of things)."""
    return page.evaluate(_RUN_CODE, code)


# The kernel took the first cell: it went busy, or the cell has output or an execution count.
# (The "[*]" prompt is no proof: JupyterLab shows it before the kernel has the request.)
_FIRST_CELL_STARTED = """() => {
    const panel = window.jupyterapp.shell.currentWidget;
    const cell = panel.content.widgets[0].model;
    const kernel = panel.sessionContext.session && panel.sessionContext.session.kernel;
    const busy = kernel && kernel.status === "busy";
    return busy || cell.executionCount !== null || cell.outputs.length > 0;
}"""


def _run_all_cells(page: Any) -> None:
    """Run all cells, and run them again if the kernel never saw the request."""
    for _attempt in range(3):
        page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
        with contextlib.suppress(AssertionError):
            wait_until(lambda: page.evaluate(_FIRST_CELL_STARTED), 15, "the first cell to start")
            return
        _wait_for_idle_kernel(page)
    raise AssertionError("The kernel ignored 'Run All Cells' three times; see the server log.")


@contextlib.contextmanager
def _screenshot_on_failure(page: Any, name: str) -> Iterator[None]:
    try:
        yield
    except BaseException:
        ARTIFACTS.mkdir(exist_ok=True)
        with contextlib.suppress(Exception):
            page.screenshot(path=ARTIFACTS / f"{name}-failure.png", full_page=True)
        raise


@contextlib.contextmanager
def open_notebook(
    browser: Any, lab: Lab, name: str, cells: list[Any], ready: str, ready_s: float, *, run: bool = True
) -> Iterator[Any]:
    """``cells`` (sources, or nbformat cells with stored outputs) as notebook ``name``, open in
    JupyterLab, all cells run unless ``run=False``, once the selector ``ready`` shows."""
    notebook = nbformat.v4.new_notebook()
    notebook.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3 (ipykernel)",
        "language": "python",
    }
    notebook.cells = [nbformat.v4.new_code_cell(cell) if isinstance(cell, str) else cell for cell in cells]
    nbformat.write(notebook, lab.root / name)

    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    context.set_default_timeout(30_000)
    page = context.new_page()
    try:
        with _screenshot_on_failure(page, f"open-{Path(name).stem}"):
            # /doc is JupyterLab's single-document view; ?reset ignores any saved workspace.
            url = f"{lab.url}/doc/tree/{name}?reset&token={lab.token}"
            page.goto(url, timeout=PAGE_LOAD_S * 1000)
            page.wait_for_function(
                "() => window.jupyterapp && window.jupyterapp.shell.currentWidget",
                timeout=PAGE_LOAD_S * 1000,
            )
            _wait_for_idle_kernel(page)
            if run:
                _run_all_cells(page)
            page.locator(ready).first.wait_for(timeout=ready_s * 1000)
        yield page
    finally:
        context.close()
