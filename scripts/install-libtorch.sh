#!/usr/bin/env bash
# Builds peloton with burn's LibTorch device (--device tch | tch-cuda).
# PyTorch 2.9.0 comes from pip (the wheel is the CUDA build, so the same binary can drive an
# NVIDIA GPU); burn's build finds it through LIBTORCH_USE_PYTORCH=1, and the torch library
# folder must be on LD_LIBRARY_PATH when peloton runs.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --break-system-packages "torch==2.9.0"
export LIBTORCH_USE_PYTORCH=1
cargo build --release -p peloton-cli --features tch
torch_lib=$(python3 -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
echo
echo "built target/release/peloton with the tch feature; before running it:"
echo "  export LD_LIBRARY_PATH=$torch_lib:\${LD_LIBRARY_PATH:-}"
