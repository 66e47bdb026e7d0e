#!/usr/bin/env bash
# On a host with an NVIDIA GPU: builds peloton with the LibTorch learner and, in about 8
# minutes, prints
#   1. a ResNet-20 training step at batch 128 on the GPU through peloton (--device torch-cuda)
#      and through PyTorch itself, in the same run, in every precision (fp32, bf16, fp16) and
#      memory format (nchw, channels-last) against PyTorch's default fp32 step;
#   2. a 4-worker LSGD CIFAR-10 ResNet-20 run of 2 minutes on the GPU, with its test error,
#      in fp32 and then (FAST=1, the default) with bf16 and channels-last;
#   3. peloton from Python on the GPU (about 5 minutes): the CUDA and mirrored-model pytest
#      cases, a PyTorch ResNet-20 loop on 4 thread-workers with LSGD and all-reduce against
#      the bare loop on threads and on processes (python/benchmarks/overhead.py --device cuda),
#      and a 150 s LSGD CIFAR-10 run of 4 workers on the GPU (python/examples/cifar10_resnet20.py).
#      It installs the wheel found in dist/ (build it beforehand where pip and cargo reach the
#      network: `maturin build --release -o dist`; a GPU machine may reach nothing), or builds
#      one with maturin when that is installed.
# Usage: scripts/gpu-check.sh [CIFAR10_DIR]   (default ../shared/data/cifar10; without the
# data, the run trains on generated images and says so). PARTS picks the parts (default
# "1 2 3"): PARTS=3 scripts/gpu-check.sh runs the Python part alone.
#
# Parts 1 and 2 need a peloton binary with the `torch` feature, linked against the LibTorch of
# the GPU host's PyTorch: built here when cargo is available (with scripts/install-torch.sh's
# PyTorch 2.9.0), else named by PELOTON_BIN. A GPU host without a Rust toolchain or a network
# (the lent machines of this project's `device` tool: PyTorch 2.11, no cargo) runs part 3 only,
# unless PELOTON_BIN names a binary built elsewhere against its PyTorch version.
set -euo pipefail
cd "$(dirname "$0")/.."
data=${1:-../shared/data/cifar10}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || {
    echo "error: no NVIDIA GPU here (nvidia-smi failed)" >&2
    exit 1
}
python3 -c 'import torch, sys; sys.exit(not torch.cuda.is_available())' || {
    echo "error: PyTorch sees no CUDA GPU" >&2
    exit 1
}
parts=" ${PARTS:-1 2 3} "
want() { [[ $parts == *" $1 "* ]]; }
skip() { parts=${parts// $1 / }; }
peloton=${PELOTON_BIN:-${CARGO_TARGET_DIR:-target}/release/peloton}
if want 1 || want 2; then
    if [ -n "${PELOTON_BIN:-}" ]; then
        echo "== peloton: $PELOTON_BIN"
        lib=$(python3 -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
        export LD_LIBRARY_PATH=$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    elif command -v cargo >/dev/null; then
        eval "$(scripts/install-torch.sh)"
        echo "== build (release, --features torch)"
        cargo build --release -q -p peloton-cli --features torch
    else
        echo "(parts 1 and 2 skipped: no cargo here and no PELOTON_BIN)"
        skip 1
        skip 2
    fi
fi

if want 1; then
echo "== 1. ResNet-20 step, batch 128, on the GPU"
"$peloton" bench --models resnet20 --device torch-cuda --batch 128 --repeats 20
python3 scripts/bench_pytorch.py --models resnet20 --device cuda --repeats 20 --formats 2>/dev/null
fi

if want 2; then
echo "== 2. LSGD, 4 workers on the GPU, CIFAR-10 ResNet-20, 120 s each"
if [ -e "$data/data_batch_1.bin.gz" ] || [ -e "$data/data_batch_1.bin" ]; then
    dataset=(--dataset cifar10 --data-dir "$data" --set data.test_samples=10000)
else
    echo "(no CIFAR-10 in $data: generated 32×32 images instead)"
    dataset=(--dataset synthetic --set data.synthetic.channels=3 --set data.synthetic.size=32)
fi
lsgd() { # $1: label, then extra flags
    local label=$1 out
    shift
    out=$(mktemp -d)/lsgd-$label
    echo "-- $label"
    /usr/bin/time -f "peak RSS %M KB, wall %e s" "$peloton" train --model resnet20 "${dataset[@]}" \
        --workers 4 --device torch-cuda --algorithm lsgd --time-budget 120 --lr 0.1 \
        --set optimizer.momentum=0.9 --set optimizer.nesterov=true --set optimizer.weight_decay=0.0001 \
        --set data.batch_size=128 --set algorithm.tau=4 --set algorithm.lambda=0.1 \
        --set 'optimizer.schedule={kind="time-drop", after_seconds=[100.0], gamma=0.1}' \
        --set eval.every=500 --set model.batch_norm=recompute --out "$out" "$@"
    echo "run folder: $out"
}
lsgd fp32
if [ "${FAST:-1}" = 1 ]; then
    lsgd bf16-channels-last --set model.precision=bf16 --set model.memory_format=channels-last
fi
fi

if want 3; then
echo "== 3. peloton from Python on the GPU"
venv=$(mktemp -d)/venv
python3 -m venv --system-site-packages "$venv"
# shellcheck disable=SC1091
. "$venv/bin/activate"
wheel=$(ls dist/peloton-*.whl 2>/dev/null | head -n 1 || true)
if [ -n "$wheel" ]; then
    pip install --quiet --no-deps --no-index "$wheel"
elif command -v maturin >/dev/null; then
    maturin develop --release --quiet
else
    echo "error: no wheel in dist/ and no maturin: build one first (maturin build --release -o dist)" >&2
    exit 1
fi
(cd /tmp && python -m pytest -q "$OLDPWD/python/tests/test_torch.py" -k "cuda or mirrored")
python python/benchmarks/overhead.py --device cuda --workers 4 --batch 128 --steps 60 \
    --warmup 10 --rounds 1 --modes plain,lsgd,all-reduce,processes
# The seeds' comparison on the GPU through PyTorch's kernels: LSGD, 4 workers, ResNet-20, 150 s
# (lr × 0.1 after 500 s does not come). A machine that is handed only part of CIFAR-10 (the
# test file and data_batch_1 … N) trains on those N files and says so.
if compgen -G "$data/test_batch.bin*" >/dev/null && compgen -G "$data/data_batch_1.bin*" >/dev/null; then
    files=0
    while compgen -G "$data/data_batch_$((files + 1)).bin*" >/dev/null && [ $files -lt 5 ]; do
        files=$((files + 1))
    done
    echo "-- LSGD ×4 on the GPU from Python, 150 s, $files of 5 training files"
    python python/examples/cifar10_resnet20.py --data "$data" --train-files "$files" \
        --model-device cuda --algorithm lsgd --workers 4 --time-budget 150
else
    echo "(no CIFAR-10 in $data: the Python LSGD run is skipped)"
fi
deactivate
fi
