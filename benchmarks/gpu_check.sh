#!/usr/bin/env bash
# The paper profile on one NVIDIA GPU, measured in one go: bash benchmarks/gpu_check.sh OUTDIR
# Writes OUTDIR/gpu-check.json and OUTDIR/gpu-check.log (see benchmarks/gpu_check.py for the parts).
# Uses $PYTHON, else the project's .venv when there is one, else python3; refuses with one line without CUDA.
set -euo pipefail
if [ $# -lt 1 ]; then
    echo "usage: bash benchmarks/gpu_check.sh OUTDIR [--budget-s SECONDS] [--only PARTS]" >&2
    exit 2
fi
here="$(cd "$(dirname "$0")/.." && pwd)"
py="${PYTHON:-$here/.venv/bin/python}"
[ -x "$py" ] || py="$(command -v python3)"
export PYTHONUNBUFFERED=1 PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}"
exec timeout --signal=TERM --kill-after=20 540 "$py" "$here/benchmarks/gpu_check.py" "$@"
