#!/usr/bin/env bash
# The packages `wbc study` needs that the GPU machine's image lacks (papermill, the Jupyter kernel and their
# dependencies), as wheels for its Python 3.12 on x86-64, in .whl/ (git-ignored): run this where PyPI is
# reachable, carry .whl to the GPU machine, and benchmarks/gpu_check.sh installs them there (into a temporary
# folder, no network) when `import papermill, ipykernel` fails.
# The versions are those of this checkout's environment ($PYTHON, else .venv/bin/python), so the GPU run uses
# what the tests ran with.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
py="${PYTHON:-$here/.venv/bin/python}"
[ -x "$py" ] || py="$(command -v python3)"
names="papermill nbclient nbformat jupyter_client jupyter_core ipykernel ipython comm debugpy nest-asyncio2
matplotlib-inline pyzmq tornado traitlets fastjsonschema jsonschema jsonschema-specifications referencing rpds-py
stack_data executing asttokens pure_eval jedi parso pexpect ptyprocess prompt_toolkit wcwidth
ipython-pygments-lexers platformdirs tenacity entrypoints"
pins=()
for n in $names; do
    v="$("$py" -m pip show "$n" 2>/dev/null | sed -n 's/^Version: //p')"
    [ -n "$v" ] || { echo "gpu_wheels: $n is not installed in $py's environment" >&2; exit 2; }
    pins+=("$n==$v")
done
mkdir -p "$here/.whl"
"$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform manylinux_2_24_x86_64 \
    -d "$here/.whl" "${pins[@]}"
echo "gpu_wheels: $(ls "$here/.whl" | wc -l) wheels, $(du -sh "$here/.whl" | cut -f1), in $here/.whl"
