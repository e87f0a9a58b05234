#!/usr/bin/env bash
# The paper profile on one NVIDIA GPU, measured in one go: bash benchmarks/gpu_check.sh OUTDIR [options]
# Writes OUTDIR/gpu-check.json and OUTDIR/gpu-check.log (see benchmarks/gpu_check.py for the parts).
# Uses $PYTHON, else the project's .venv when there is one, else python3; refuses with one line without CUDA
# (--cpu-dry-run: the same code paths at toy sizes on the CPU). Where `wbc study`'s notebook packages are
# missing (a bare GPU image) and .whl/ holds them (benchmarks/gpu_wheels.sh), they are installed into a
# temporary folder first, without network.
set -euo pipefail
if [ $# -lt 1 ]; then
    echo "usage: bash benchmarks/gpu_check.sh OUTDIR [--budget-s SECONDS] [--only PARTS] [--cpu-dry-run]" >&2
    exit 2
fi
here="$(cd "$(dirname "$0")/.." && pwd)"
py="${PYTHON:-$here/.venv/bin/python}"
[ -x "$py" ] || py="$(command -v python3)"
export PYTHONUNBUFFERED=1 PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}"
if ! "$py" -c "import papermill, ipykernel" 2>/dev/null && ls "$here"/.whl/*.whl >/dev/null 2>&1; then
    site="$(mktemp -d /tmp/wbc-site-XXXXXX)"
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" "$here"/.whl/*.whl
    export PYTHONPATH="$PYTHONPATH:$site"
    echo "gpu_check: notebook packages installed from .whl into $site"
fi
exec timeout --signal=TERM --kill-after=20 560 "$py" "$here/benchmarks/gpu_check.py" "$@"
