"""The remote path without torch: a student's notebook that talks to a shared server.

``.ci/remote-only.sh`` makes a venv with only ``.ci/remote-only.txt`` and this package (``--no-deps``);
torch is not installed there. In it, against the fake server (tests/_fake_server.py: standard
library only), generate, stream, chat, explain, explain_stream and both panels must work. Skipped
without that venv, failed in CI, where ``.ci/dev.sh setup`` builds it.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from _server import in_ci

ROOT = Path(__file__).resolve().parents[1]
VENV = Path(os.environ.get("HFLLM_NB_REMOTE_VENV") or ROOT / ".venv-remote-only")

SCRIPT = r"""
import importlib.util, sys
assert importlib.util.find_spec("torch") is None, "torch is installed here"
sys.path.insert(0, sys.argv[2])
from _fake_server import FakeServer
from hfllm_nb import HuggingFaceLLM
from hfllm_nb.inside.explain import explain_stream  # torch-free: the facade's explain_stream

with FakeServer() as fake:
    fake.logprobs = {" there": -1.0, " world": -2.0}
    with HuggingFaceLLM(sys.argv[1], endpoint=fake.url) as llm:
        assert llm.generate("Hi", max_new_tokens=3) == "HiHello there."
        assert "".join(llm.stream("Hi", max_new_tokens=3)) == "Hello there."
        assert llm.chat("Hi", max_new_tokens=3) == "Hello there."
        assert "Hi" in llm.format_chat("Hi")  # the chat template, from the tokenizer here
        explanation = llm.explain("Hi", max_new_tokens=3)
        assert [t.text for t in explanation.generated] == ["Hello", " there", "."]
        assert "hfllm-generated-token" in explanation._repr_html_()
        assert len(list(explain_stream(llm, "Hi", max_new_tokens=3))) == 3
        panel = llm.panel(prompt="Hi", max_length=8, memory_interval=60.0, probabilities=True)
        assert panel.generate() and panel.wait(30) and panel.last_error is None, panel.last_error
        assert panel.result_text == "Hello there."
        panel.close()
        chat = llm.chat_panel(max_length=40)
        chat.send("Hi")
        assert chat.wait(30) and chat.messages[-1]["content"] == "Hello there."
        chat.close()
assert "torch" not in sys.modules
print("remote-only: ok")
"""


def test_generate_stream_chat_explain_and_panels_work_without_torch(default_model_dir):
    python = VENV / "bin" / "python"
    if not python.exists():
        reason = f"no remote-only venv at {VENV}; run: bash .ci/remote-only.sh"
        if in_ci():
            pytest.fail(f"CI must run the remote-only test, but {reason}", pytrace=False)
        pytest.skip(reason)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    result = subprocess.run(
        [str(python), "-c", SCRIPT, str(default_model_dir), str(ROOT / "tests")],
        capture_output=True, text=True, timeout=300, env={**env, "HF_HUB_OFFLINE": "1"}, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("remote-only: ok")
