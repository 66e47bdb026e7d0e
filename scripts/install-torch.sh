#!/usr/bin/env bash
# PyTorch for peloton's LibTorch devices (model.device = "torch" | "torch-cuda", the cargo
# feature `torch` of peloton-torch and peloton-cli). Installs PyTorch 2.9.0 with pip when it is
# missing — the CUDA build from PyPI, so the same binary drives NVIDIA GPUs: about 4 GB to
# download with its nvidia-* packages, 6.6 GB installed — and prints the two variables a build
# and a run need, for eval:
#
#   eval "$(scripts/install-torch.sh)"
#   cargo test -p peloton-torch --features torch
#   cargo build --release -p peloton-cli --features torch
#
# LIBTORCH_USE_PYTORCH=1 makes the tch crate (0.22, which wants PyTorch 2.9.0) build against
# the wheel's LibTorch; LD_LIBRARY_PATH lets the binaries find its libraries when they run.
# Progress goes to standard error; only the export lines go to standard output.
set -euo pipefail
version=2.9.0
python=${PYTHON:-python3}
have() {
    "$python" -c "import sys, torch; sys.exit(torch.__version__.split('+')[0] != '$version')" 2>/dev/null
}
if ! have; then
    echo "== installing torch==$version with pip (about 4 GB)" >&2
    # A pyenv or virtualenv python takes the plain install; a distribution's python refuses
    # it (PEP 668) and needs --break-system-packages.
    "$python" -m pip install --quiet "torch==$version" >&2 ||
        "$python" -m pip install --quiet --break-system-packages "torch==$version" >&2
    have || { echo "error: torch $version did not install" >&2; exit 1; }
fi
lib=$("$python" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))' 2>/dev/null)
echo "export LIBTORCH_USE_PYTORCH=1"
echo "export LD_LIBRARY_PATH=$lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
