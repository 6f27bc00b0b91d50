#!/usr/bin/env bash
# A venv with hfllm-nb's remote path and no torch, as a student's notebook that talks to a shared server.
#   bash .ci/remote-only.sh
# Makes ${HFLLM_NB_REMOTE_VENV:-./.venv-remote-only}: the packages in .ci/remote-only.txt, then this
# package with --no-deps (its own dependencies start with torch). tests/test_remote_only.py runs
# generate, stream, chat, explain and both panels in it against a fake server, and checks that torch
# cannot be imported there. Rebuilt only when the list or pyproject.toml change; seconds otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${HFLLM_NB_REMOTE_VENV:-$PWD/.venv-remote-only}
PYTHON=${PYTHON:-python3}
log() { printf '\033[1m[hfllm-nb]\033[0m %s\n' "$*" >&2; }

key=$(cat .ci/remote-only.txt pyproject.toml | sha256sum | cut -c1-16)
stamp="$VENV/.hfllm-nb-remote-only"
[ -x "$VENV/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$key" ] && exit 0
log "remote-only environment (no torch) in $VENV"
start=$SECONDS
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -r .ci/remote-only.txt
"$VENV/bin/python" -m pip install -q --no-deps -e .
if "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  log "torch is installed in $VENV: something in .ci/remote-only.txt pulls it in"
  exit 1
fi
echo "$key" > "$stamp"
log "remote-only environment ready in $((SECONDS - start)) s ($(du -sh "$VENV" | cut -f1))"
