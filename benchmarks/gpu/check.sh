#!/usr/bin/env bash
# The GPU check as one command; benchmarks/gpu/check.py says what it checks and measures.
#   bash benchmarks/gpu/check.sh --pack   here (network, default model installed): fill .gpu/ to carry (~48 MiB)
#   bash benchmarks/gpu/check.sh [ARGS]   on the GPU machine, .gpu/ carried: writes $OUT/gpu_check.{md,json,log}
# The GPU image has no network and no pip index: carried wheels are unpacked (a wheel is a zip)
# into a private folder on PYTHONPATH, so nothing of the image's own Python changes.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
CARRY=.gpu
BNB_WHEEL="bitsandbytes==0.50.2"  # 43 MB, kernels for CUDA 11.8 to 13.2; torch >= 2.4, numpy, packaging
WIDGETS="ipywidgets==8.1.9"

if [ "${1:-}" = --pack ]; then
  mkdir -p "$CARRY/wheels"
  wheels=(-q --only-binary=:all: --python-version 3.12 --implementation cp -d "$CARRY/wheels")
  "$PY" -m pip download "${wheels[@]}" --no-deps --platform manylinux_2_24_x86_64 "$BNB_WHEEL"
  # ipywidgets and its pure-Python dependencies (~4 MB): the MemoryMonitor widget and the widget
  # tests then run on the GPU too. psutil and typing_extensions are in the image already.
  "$PY" -m pip download "${wheels[@]}" --platform manylinux2014_x86_64 --platform any "$WIDGETS"
  # Not imported at run time: jedi (IPython completion, 4.7 MB), widgetsnbextension (Jupyter's JavaScript).
  rm -f "$CARRY"/wheels/{psutil,typing_extensions,jedi,parso,widgetsnbextension}-*.whl
  PYTHONPATH="$PWD" "$PY" -c "import sys; from benchmarks.gpu.check import pack_tokenizer; pack_tokenizer(sys.argv[1])" \
    "$CARRY/tokenizer"
  size=$(du -sm "$CARRY" | cut -f1)
  echo "packed $CARRY: ${size} MB (a run carries at most 64 MiB, the working tree included)"
  [ "$size" -le 60 ] || { echo "too big to carry" >&2; exit 1; }
  exit 0
fi

SITE=${TMPDIR:-/tmp}/hfllm-nb-gpu-site
for wheel in "$CARRY"/wheels/*.whl; do
  [ -e "$wheel" ] && "$PY" -m zipfile -e "$wheel" "$SITE"
done
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
OUTDIR=${OUT:-${TMPDIR:-/tmp}/hfllm-nb-gpu-check}
mkdir -p "$OUTDIR"
if command -v nvidia-smi >/dev/null; then nvidia-smi > "$OUTDIR/nvidia-smi.txt" 2>&1 || true; fi
# 8 minutes in all: the script plans for 450 s; SIGINT at 470 s still writes the report so far.
timeout --signal=INT --kill-after=20 "${HFLLM_NB_GPU_WALL_S:-470}" \
  "$PY" benchmarks/gpu/check.py --output "$OUTDIR/gpu_check.md" "$@" 2>&1 | tee "$OUTDIR/gpu_check.log"
