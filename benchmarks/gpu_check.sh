#!/usr/bin/env bash
# The GPU checks of lmforge in one call on a lent GPU machine, which has PyTorch but neither
# DeepSpeed nor a network: the wheels travel in .whl/ (DeepSpeed 0.19.8 and the pure-Python
# packages it needs beyond that machine's image; see benchmarks/README.md) and lmforge runs from
# src/. Prints the training benchmark's GPU table (OLMo 2 1B bf16: tokens/s, MFU, memory).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
export PYTHONPATH="/tmp/site:$PWD/src" DS_ACCELERATOR=cuda PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv
python3 -c "import torch, deepspeed; print('torch', torch.__version__, 'deepspeed', deepspeed.__version__)"
python3 benchmarks/train/bench.py --gpu 2>&1 | tee "${OUT:-/tmp}/gpu_check.log"
