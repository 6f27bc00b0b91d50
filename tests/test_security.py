"""Safe defaults: no remote code, no pickle weights, escaped HTML, a local-only Lab, no leaked tokens."""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from hfllm_nb import HuggingFaceLLM, LLMPanel, ModelLoadError

REPO = Path(__file__).resolve().parents[1]
PROMPT = "Hello world"
SECRET = "hf_secret123TOKENvalueDoNotLeak"


@pytest.fixture
def from_pretrained_calls(monkeypatch):
    """Record the keyword arguments every from_pretrained call gets, then do the real load."""
    calls = {"tokenizer": [], "model": []}
    for kind, cls in (("tokenizer", AutoTokenizer), ("model", AutoModelForCausalLM)):
        real = cls.from_pretrained

        def spy(*args, _real=real, _kind=kind, **kwargs):
            calls[_kind].append(kwargs)
            return _real(*args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", spy)
    return calls


# ------------------------------------------------------------------------------ remote code


def test_remote_code_is_off_by_default(tiny_model_dir, from_pretrained_calls):
    HuggingFaceLLM(str(tiny_model_dir), dtype="float32")
    assert [c["trust_remote_code"] for c in from_pretrained_calls["tokenizer"]] == [False]
    assert [c["trust_remote_code"] for c in from_pretrained_calls["model"]] == [False]


def test_trust_remote_code_true_reaches_from_pretrained(tiny_model_dir, from_pretrained_calls):
    HuggingFaceLLM(str(tiny_model_dir), dtype="float32", trust_remote_code=True)
    assert [c["trust_remote_code"] for c in from_pretrained_calls["tokenizer"]] == [True]
    assert [c["trust_remote_code"] for c in from_pretrained_calls["model"]] == [True]


def _with_shipped_code(tmp_path: Path, tiny_model_dir: Path, model_type: str) -> tuple[Path, Path]:
    """A copy of the tiny model whose config points at Python code in the folder (``auto_map``)."""
    folder = tmp_path / f"shipped-code-{model_type}"
    shutil.copytree(tiny_model_dir, folder)
    marker = tmp_path / f"code-ran-{model_type}"
    # Importing this file is running the model's code: it leaves a marker behind.
    (folder / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = model_type
    config["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(config))
    return folder, marker


def test_code_shipped_with_a_known_architecture_is_not_run(tmp_path, tiny_model_dir, tiny_llm):
    folder, marker = _with_shipped_code(tmp_path, tiny_model_dir, "llama")
    loaded = HuggingFaceLLM(str(folder), dtype="float32")
    assert not marker.exists(), "code shipped with the model ran without trust_remote_code=True"
    assert type(loaded.model).__module__.startswith("transformers.")
    assert loaded.generate(PROMPT, max_new_tokens=6) == tiny_llm.generate(PROMPT, max_new_tokens=6)


def test_a_model_that_only_works_with_its_own_code_is_refused_with_the_reason(tmp_path, tiny_model_dir):
    folder, marker = _with_shipped_code(tmp_path, tiny_model_dir, "evil-custom-arch")
    with pytest.raises(ModelLoadError) as excinfo:
        HuggingFaceLLM(str(folder), dtype="float32")
    # The advice, not just transformers' reason echoed back: opt in, and only for a source you trust.
    assert str(excinfo.value).endswith(
        "This model needs its own Python code; pass trust_remote_code=True only if you trust its source."
    )
    assert not marker.exists(), "code shipped with the model ran without trust_remote_code=True"


# ------------------------------------------------------------------------------ pickle weights


def test_safetensors_is_required_by_default(tiny_model_dir, from_pretrained_calls):
    HuggingFaceLLM(str(tiny_model_dir), dtype="float32")
    assert from_pretrained_calls["model"][0]["use_safetensors"] is True


@pytest.fixture(scope="module")
def pickle_only_model(tmp_path_factory, tiny_model_dir):
    """The tiny model saved the old way: config + pytorch_model.bin (a pickle), no safetensors."""
    folder = tmp_path_factory.mktemp("pickle-only")
    for path in tiny_model_dir.iterdir():
        if not path.name.endswith(".safetensors"):
            shutil.copy(path, folder / path.name)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    assert not list(folder.glob("*.safetensors"))
    return folder


def test_a_pickle_only_model_is_refused_naming_use_safetensors_false(pickle_only_model, caplog):
    with pytest.raises(ModelLoadError) as excinfo:
        HuggingFaceLLM(str(pickle_only_model), dtype="float32")
    message = str(excinfo.value)
    assert "use_safetensors=False" in message
    assert "trust its source" in message
    assert str(pickle_only_model) in message


def test_a_pickle_only_model_loads_when_the_user_opts_in(pickle_only_model, tiny_llm):
    opted_in = HuggingFaceLLM(str(pickle_only_model), dtype="float32", use_safetensors=False)
    assert opted_in.generate(PROMPT, max_new_tokens=6) == tiny_llm.generate(PROMPT, max_new_tokens=6)


# ------------------------------------------------------------------------------ HTML escaping

HOSTILE = '<script>alert("pwned")</script><img src=x onerror=alert(1)>'


def _fake_stream(*pieces):
    """A stand-in for llm.stream / llm.chat(stream=True): a generator, as theirs are."""

    def stream(prompt, **kwargs):
        yield from pieces

    return stream


@pytest.mark.parametrize("chat_mode", [False, True], ids=["plain", "chat"])
def test_model_output_is_escaped_in_the_panel(tiny_llm, monkeypatch, chat_mode):
    panel = LLMPanel(tiny_llm, prompt=HOSTILE, chat_mode=chat_mode)
    try:
        monkeypatch.setattr(tiny_llm, "stream", _fake_stream("<script>", "alert(1)", "</script>", " & <b>"))
        monkeypatch.setattr(tiny_llm, "chat", _fake_stream("<script>alert(1)</script> & <b>"))
        assert panel.generate() and panel.wait(30)
        shown = panel.output.value
        assert panel.result_text == "<script>alert(1)</script> & <b>"
        assert "<script" not in shown and "<img" not in shown and "<b>" not in shown
        assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; &lt;b&gt;" in shown
        assert "&lt;img src=x onerror=alert(1)&gt;" in shown  # the prompt, escaped too
    finally:
        panel.close()


def test_real_generated_text_is_escaped_in_the_panel(tiny_llm):
    panel = LLMPanel(tiny_llm, prompt=HOSTILE, max_length=tiny_llm.count_tokens(HOSTILE) + 8)
    try:
        assert panel.generate() and panel.wait(60)
        assert "<script" not in panel.output.value and "&lt;script&gt;" in panel.output.value
    finally:
        panel.close()


def test_error_messages_are_escaped_in_the_panel(tiny_llm, monkeypatch):
    panel = LLMPanel(tiny_llm, prompt=PROMPT)
    try:

        def explode(prompt, **kwargs):
            raise ValueError(HOSTILE)

        monkeypatch.setattr(tiny_llm, "stream", explode)
        assert panel.generate() is False
        assert "<script" not in panel.error.value and "<img" not in panel.error.value
        assert "&lt;script&gt;" in panel.error.value
    finally:
        panel.close()


# ------------------------------------------------------------------------------ JupyterLab


def _lab_command(tmp_path: Path) -> list[str]:
    """Run `bash .ci/dev.sh lab` with stand-ins for python/pip/jupyter and return jupyter's argv."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    record = tmp_path / "jupyter-argv"
    stubs = {
        "python": "#!/bin/sh\nexit 0\n",  # pip install, `import torch`: all succeed, nothing installed
        "hfllm-nb": "#!/bin/sh\nexit 0\n",
        "jupyter": f'#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a"; done > "{record}"\n',
    }
    for name, body in stubs.items():
        path = venv / "bin" / name
        path.write_text(body)
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    env = {**os.environ, "HFLLM_NB_VENV": str(venv)}
    subprocess.run(["bash", str(REPO / ".ci" / "dev.sh"), "lab"], env=env, check=True, capture_output=True, timeout=60)
    return record.read_text().splitlines()


def test_the_lab_command_listens_on_localhost_with_token_auth(tmp_path):
    readme = REPO / "README.md"
    if readme.exists():
        assert "bash .ci/dev.sh lab" in readme.read_text(), "README should start the Lab through .ci/dev.sh"
    argv = _lab_command(tmp_path)
    assert argv[0] == "lab"
    assert "--ip=127.0.0.1" in argv
    joined = " ".join(argv).lower()
    for unsafe in ("0.0.0.0", "--ip=*", "token=''", 'token=""', "token= ", "password=''", "disable_check_xsrf"):
        assert unsafe not in joined, f"{unsafe} in the lab command line: {argv}"
    assert not [a for a in argv if a.lower().rstrip("'\"").endswith("token=")], argv
    assert not any("allow_origin" in a.lower() for a in argv)


# ------------------------------------------------------------------------------ hub tokens


def _assert_no_secret(*texts: str) -> None:
    for text in texts:
        assert SECRET not in text
        assert SECRET[:12] not in text


def test_a_hub_token_never_appears_in_errors_logs_or_output(capsys, caplog):
    with caplog.at_level(logging.DEBUG), pytest.raises(ModelLoadError) as excinfo:
        HuggingFaceLLM("hfllm-nb-tests/private-model-4242", token=SECRET)
    out, err = capsys.readouterr()
    _assert_no_secret(str(excinfo.value), repr(excinfo.value), caplog.text, out, err)


def test_a_hub_token_echoed_by_a_failing_load_is_redacted(tiny_model_dir, monkeypatch, capsys, caplog):
    # What an HTTP error that echoes the Authorization header would look like.
    def leaky(*args, **kwargs):
        raise OSError(f"401 Client Error for url ...: Authorization: Bearer {kwargs.get('token')}")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", leaky)
    with caplog.at_level(logging.DEBUG), pytest.raises(ModelLoadError) as excinfo:
        HuggingFaceLLM(str(tiny_model_dir), dtype="float32", token=SECRET)
    out, err = capsys.readouterr()
    assert "***" in str(excinfo.value)
    _assert_no_secret(str(excinfo.value), caplog.text, out, err)


def test_a_token_is_not_kept_on_the_loaded_model(tiny_model_dir, capsys, caplog):
    with caplog.at_level(logging.DEBUG):
        loaded = HuggingFaceLLM(str(tiny_model_dir), dtype="float32", token=SECRET)
    out, err = capsys.readouterr()
    kept = [
        repr(loaded),
        str(vars(loaded)),
        str(vars(loaded._engine)),  # the facade's engine holds the model and tokenizer
        loaded.model.config.to_json_string(),
        loaded.model.generation_config.to_json_string(),
        str(loaded.tokenizer.init_kwargs),
    ]
    _assert_no_secret(*kept, caplog.text, out, err)
