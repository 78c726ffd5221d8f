#!/bin/bash
# One GPU session: install, GPU tests, benchmark; logs under $OUT (or /tmp/fp8pass_out).
# usage: bash benchmarks/device_run.sh [benchmarks/gemm.py args]
set -o pipefail
OUT=${OUT:-/tmp/fp8pass_out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
python3 -m pip install --no-deps --no-build-isolation -e . -q > "$OUT/pip.log" 2>&1 || tail -5 "$OUT/pip.log"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.draw,temperature.gpu --format=csv | tee "$OUT/smi.txt"
if [ "${SKIP_TESTS:-0}" != "1" ]; then
  timeout "${TEST_TIMEOUT:-240}" python3 -m pytest -q -rfEs -p no:cacheprovider -n "${TEST_WORKERS:-6}" -m gpu tests/test_triton_gpu.py \
    > "$OUT/gpu_tests.log" 2>&1
  echo "gpu tests exit $?"; grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/gpu_tests.log" | cut -c1-400 | tail -30
fi
timeout "${BENCH_TIMEOUT:-330}" python3 benchmarks/gemm.py "$@" 2>&1 | tee "$OUT/bench.log"
echo "bench exit $?"
