#!/usr/bin/env bash
# Builds peloton with burn's LibTorch device (--device tch | tch-cuda).
# PyTorch 2.9.0 comes from pip. The wheel is the CUDA build, so the same binary can drive an
# NVIDIA GPU: ≈ 4 GB to download with its nvidia-* and triton packages, 6.6 GB installed.
# burn's build finds it through LIBTORCH_USE_PYTORCH=1; the torch library folder must be on
# LD_LIBRARY_PATH whenever the binary runs (it links libtorch_cuda.so, even for --device flex).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! python3 -c 'import torch, sys; sys.exit(torch.__version__.split("+")[0] != "2.9.0")' 2>/dev/null; then
    # A pyenv or virtualenv python takes the plain install; a distribution's python refuses
    # it (PEP 668) and needs --break-system-packages.
    python3 -m pip install "torch==2.9.0" ||
        python3 -m pip install --break-system-packages "torch==2.9.0"
fi
export LIBTORCH_USE_PYTORCH=1
cargo build --release -p peloton-cli --features tch
torch_lib=$(python3 -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
echo
echo "built ${CARGO_TARGET_DIR:-target}/release/peloton with the tch feature; before running it:"
echo "  export LD_LIBRARY_PATH=$torch_lib:\${LD_LIBRARY_PATH:-}"
