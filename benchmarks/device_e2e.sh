#!/bin/bash
# One GPU call for the pipeline: torch-2.11 CPU suite, a CUDA training smoke run, Linear/block benchmarks.
# usage: bash benchmarks/device_e2e.sh [suite] [gputests] [smoke] [linear] [block] [blockmem]   (logs under $OUT)
set -o pipefail
OUT=${OUT:-/tmp/fp8pass_out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
python3 -m pip install --no-deps --no-build-isolation -e . -q > "$OUT/pip.log" 2>&1 || tail -5 "$OUT/pip.log"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
for what in "$@"; do
  case $what in
    suite)  CUDA_VISIBLE_DEVICES="" timeout 240 python3 -m pytest -q -x -p no:cacheprovider -n 8 tests \
              --ignore=tests/test_triton_gpu.py > "$OUT/suite.log" 2>&1; echo "suite exit $?"; tail -15 "$OUT/suite.log" ;;
    gputests) timeout 150 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_triton_gpu.py > "$OUT/gputests.log" 2>&1;
              echo "gpu tests exit $?"; tail -15 "$OUT/gputests.log" ;;
    smoke)  timeout 240 python3 examples/train_gpt.py --device cuda --dim 512 --layers 4 --heads 8 --seq 512 \
              --batch 16 --steps 150 2>&1 | tee "$OUT/smoke.log" | tail -40 ;;
    linear) timeout 200 python3 benchmarks/linear.py --profile 2>&1 | tee "$OUT/linear.log" ;;
    block)  timeout 240 python3 benchmarks/block.py --profile 2>&1 | tee "$OUT/block.log" ;;
    blockmem) timeout 240 python3 benchmarks/block.py --memory 2>&1 | tee "$OUT/blockmem.log" ;;
  esac
done
