#!/usr/bin/env bash
# Rebuild the mybinder.org session from binder/ in a fresh venv, then run the quickstart
# notebook there and check that it fits a Binder session: peak memory < 1.5 GiB.
#
#   .ci/binder-check.sh                 # from anywhere inside the repository
#
# Environment:
#   PYTHON=python3.11       interpreter for the fresh venv (default: python3)
#   PEAK_LIMIT_MIB=1536     memory budget for pytest + the notebook kernel together
#   KEEP=1                  keep the temporary folder (venv, copy, cache) for inspection
#   BINDER_EXACT=1          install binder/requirements.txt verbatim, PyTorch CPU index included
#   OMP_NUM_THREADS=1       the default here: this check measures memory, not speed, and torch's
#                           thread pool slows down ~10x on a CPU shared with other jobs
#
# Where this differs from mybinder.org, on purpose:
#   * torch: by default `pip install torch==<the pinned version>` from whatever index or
#     find-links pip is configured with, since download.pytorch.org may be unreachable in CI.
#     The other lines of binder/requirements.txt are installed as written.
#   * HFLLM_NB_CACHE points into the temporary folder: the user's cache is neither read nor written.
#   * HF_HUB_OFFLINE=1, so the quickstart's "load gpt2-medium" cell takes its offline fallback
#     (downloading and holding a second 355M-parameter model is not what this check measures).
#   * pytest and nbmake are added to run the notebook; Binder itself does not need them.
set -euo pipefail

REPO="$(git -C "$(dirname "${BASH_SOURCE[0]}")" rev-parse --show-toplevel)"
PYTHON="${PYTHON:-python3}"
PEAK_LIMIT_MIB="${PEAK_LIMIT_MIB:-1536}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
NOTEBOOK="notebooks/01_quickstart.ipynb"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/binder-check.XXXXXX")"
if [[ "${KEEP:-0}" != 1 ]]; then trap 'rm -rf "$WORK"' EXIT; fi
started=$SECONDS
step() { printf '\n== [%3ds] %s\n' "$((SECONDS - started))" "$*"; }

step "Copy the working tree (tracked + untracked, not ignored) to $WORK/repo"
mkdir -p "$WORK/repo"
(cd "$REPO" && git ls-files -z --cached --others --exclude-standard \
    | tar --null --ignore-failed-read -T - -cf - 2>/dev/null) | tar -C "$WORK/repo" -xf -
cd "$WORK/repo"
test -x binder/postBuild || { echo "binder/postBuild must exist and be executable" >&2; exit 1; }

step "Fresh venv with $("$PYTHON" --version 2>&1) (binder/runtime.txt asks for $(cat binder/runtime.txt))"
"$PYTHON" -m venv "$WORK/venv"
export PATH="$WORK/venv/bin:$PATH" VIRTUAL_ENV="$WORK/venv"
python -m pip install -q --upgrade pip

step "binder/requirements.txt"
if [[ "${BINDER_EXACT:-0}" == 1 ]]; then
    python -m pip install -q -r binder/requirements.txt
else
    torch_pin="$(grep -E '^torch==' binder/requirements.txt | head -n1)"
    [[ -n "$torch_pin" ]] || { echo "binder/requirements.txt must pin torch==X.Y.Z+cpu" >&2; exit 1; }
    torch_version="${torch_pin#torch==}"
    torch_version="${torch_version%%+*}"  # the local "+cpu" tag only exists on the PyTorch index
    echo "torch==$torch_version (binder pins $torch_pin)"
    python -m pip install -q "torch==$torch_version"
    grep -vE '^[[:space:]]*(#|$|--(extra-)?index-url|torch==)' binder/requirements.txt > "$WORK/rest.txt" || true
    if [[ -s "$WORK/rest.txt" ]]; then python -m pip install -q -r "$WORK/rest.txt"; fi
fi
python -c "import torch; assert not torch.version.cuda, 'binder must get the CPU build of torch'; print('torch', torch.__version__, 'CPU build')"

step "binder/postBuild"
export HFLLM_NB_CACHE="$WORK/cache"
# The Inductor warm-up in postBuild only saves a Binder user the first compile; this check is about
# installing and memory, so CI skips it (minutes on 2 cores). Set it to 0 to include it.
HFLLM_NB_SKIP_COMPILE_WARMUP=${HFLLM_NB_SKIP_COMPILE_WARMUP:-1} ./binder/postBuild
python - <<'PY'
import time

from hfllm_nb import HuggingFaceLLM
from hfllm_nb.default_model import cache_state, default_model_dir

assert cache_state() == "ready", f"postBuild left the default-model cache {cache_state()} at {default_model_dir()}"
start = time.perf_counter()
HuggingFaceLLM()
print(f"default model cache ready at {default_model_dir()}; loads in {time.perf_counter() - start:.1f} s")
PY

step "Run $NOTEBOOK under nbmake, sampling the memory of pytest + kernel"
python -m pip install -q pytest nbmake
export HF_HUB_OFFLINE=1 PEAK_LIMIT_MIB NOTEBOOK
python - <<'PY'
import os
import subprocess
import sys
import time

import psutil

limit = int(os.environ["PEAK_LIMIT_MIB"]) * 2**20
command = [sys.executable, "-m", "pytest", "--nbmake", os.environ["NOTEBOOK"], "-q", "-p", "no:cacheprovider"]
started = time.perf_counter()
run = subprocess.Popen(command)
root = psutil.Process(run.pid)
peak_total = peak_single = 0
while run.poll() is None:
    try:
        tree = [root, *root.children(recursive=True)]
        sizes = [p.memory_info().rss for p in tree]
    except psutil.Error:  # a process ended between listing and reading: skip this sample
        continue
    peak_total, peak_single = max(peak_total, sum(sizes)), max(peak_single, max(sizes))
    time.sleep(0.1)
seconds = time.perf_counter() - started
mib = 2**20
print(f"\nnotebook run: {seconds:.0f} s, exit code {run.returncode}")
print(f"peak RSS: {peak_total / mib:.0f} MiB for pytest + kernel together, "
      f"{peak_single / mib:.0f} MiB for the largest single process (limit {limit / mib:.0f} MiB)")
if run.returncode != 0:
    sys.exit(f"FAIL: {os.environ['NOTEBOOK']} did not run cleanly")
if peak_total >= limit:
    sys.exit(f"FAIL: peak memory {peak_total / mib:.0f} MiB exceeds {limit / mib:.0f} MiB")
PY

step "OK: the Binder build works and the quickstart fits in ${PEAK_LIMIT_MIB} MiB"
