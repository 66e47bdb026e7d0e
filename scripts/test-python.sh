#!/usr/bin/env bash
# The Python package's checks, as a user meets it: maturin builds the abi3 wheel, the wheel
# installs into a fresh virtual environment, the package's pytest suite passes there, and the
# README's first python block runs as written.
#
#   scripts/test-python.sh             # a debug wheel (CI: reuses the test build's crates)
#   scripts/test-python.sh --release   # the wheel users get
#
# torch comes from the interpreter's own site packages (scripts/install-torch.sh installs it
# there); without it the torch tests are skipped and the README block cannot run.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
python=${PYTHON:-python3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "== a fresh venv in $work (with the interpreter's site packages, for torch)"
"$python" -m venv --system-site-packages "$work/venv"
bin="$work/venv/bin"
pip=("$bin/pip" install --quiet --disable-pip-version-check)
# maturin into the venv itself, even where the interpreter's site packages have one.
"${pip[@]}" --ignore-installed "maturin>=1.9.4,<2"
"${pip[@]}" "pytest>=7" "numpy>=1.24" "hypothesis>=6"

# With Open MPI on the machine, the wheel gets the MPI transport and its tests run. Such a
# wheel links the machine's own libmpi, as mpi4py's do: it is not repaired into a manylinux
# wheel (which would bundle a copy of Open MPI).
features=()
if command -v mpicc >/dev/null && command -v mpirun >/dev/null; then
    features=(--features mpi --auditwheel skip)
fi
echo "== maturin build ${1:-} ${features[*]:-}"
"$bin/maturin" build --quiet ${1:+"$1"} "${features[@]}" --out "$work/wheels"
ls "$work"/wheels
"${pip[@]}" "$work"/wheels/peloton-*.whl

# Away from python/, so that `import peloton` is the installed wheel.
cd "$work"
"$bin/python" -c "import peloton, sys; assert peloton.__file__.startswith(sys.prefix), peloton.__file__; print('peloton', peloton.__version__, 'from', peloton.__file__)"

echo "== pytest"
"$bin/python" -m pytest -q -p no:cacheprovider "$repo/python/tests"

echo "== the README's first python block, as written"
awk '/^```python/{f=1;next} /^```/{if(f){exit}} f' "$repo/README.md" > readme.py
test "$(wc -l < readme.py)" -le 25 || { echo "the README's python block is over 25 lines"; exit 1; }
"$bin/python" readme.py
