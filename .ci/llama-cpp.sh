#!/usr/bin/env bash
# Build llama-cpp-python once per machine and install its server into a venv.
#   bash .ci/llama-cpp.sh PYTHON
# The wheel is compiled from the PyPI sdist (about 6 minutes on 2 cores) into a folder outside the
# repository, HFLLM_NB_WHEELS (default ~/.cache/hfllm-nb/wheels), and reused afterwards: a second run
# (or a fresh clone on the same machine) only installs the cached wheel and takes seconds.
set -euo pipefail
PY=${1:?usage: bash .ci/llama-cpp.sh PYTHON}
VERSION=${HFLLM_NB_LLAMA_CPP_VERSION:-0.3.36}
WHEELS=${HFLLM_NB_WHEELS:-$HOME/.cache/hfllm-nb/wheels}
log() { printf '\033[1m[hfllm-nb]\033[0m %s\n' "$*" >&2; }

if "$PY" -c "import importlib.metadata as m, sys; sys.exit(m.version('llama_cpp_python') != '$VERSION')" 2>/dev/null \
   && "$PY" -c "import llama_cpp.server.app" 2>/dev/null; then
  exit 0
fi
mkdir -p "$WHEELS"
if ! ls "$WHEELS"/llama_cpp_python-"$VERSION"-*.whl >/dev/null 2>&1; then
  log "building llama-cpp-python $VERSION from source, once per machine (several minutes) into $WHEELS"
  start=$SECONDS
  # CPU only; tuned for this machine's CPU (the wheel never leaves it). Tests, examples and
  # llama.cpp's own tools are not needed by the Python package.
  CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAVA_BUILD=OFF}" \
  CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}" \
    "$PY" -m pip wheel -q --no-deps --no-binary llama-cpp-python "llama-cpp-python==$VERSION" -w "$WHEELS"
  log "built llama-cpp-python in $((SECONDS - start)) s"
fi
log "installing llama-cpp-python[server] $VERSION from $WHEELS"
"$PY" -m pip install -q --find-links "$WHEELS" "llama-cpp-python[server]==$VERSION"
