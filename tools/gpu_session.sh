#!/usr/bin/env bash
# One GPU session for the CUDA kernels: GPU tests, then the linear benchmark (JSON + log under $OUT).
# Runs from the repository root with no install:
#   OUT=/some/dir bash tools/gpu_session.sh [smoke|tests|profile|bench ...]   (default: smoke tests bench)
# tests run with pytest-xdist (TEST_WORKERS=8: Triton compilation is CPU-bound and dominates their time).
# gemlite (the peer library) is used when its source distribution sits in .whl/ (carried along).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=. PYTHONUNBUFFERED=1 OMNI_NPU_QUANT_CUDA_AUTOTUNE=${OMNI_NPU_QUANT_CUDA_AUTOTUNE:-0}
OUT=${OUT:-./gpu_out}
mkdir -p "$OUT"
PY=${PY:-python3}
STEPS=${*:-smoke tests bench}
T_TESTS=${T_TESTS:-330}
T_BENCH=${T_BENCH:-420}
BENCH_ARGS=${BENCH_ARGS:-}
TEST_ARGS=${TEST_ARGS:-}
if ls .whl/gemlite-*.tar.gz >/dev/null 2>&1; then
  mkdir -p .whl/src && tar -xzf .whl/gemlite-*.tar.gz -C .whl/src  # .whl/ is git-ignored
  export PYTHONPATH=.:$(ls -d "$PWD"/.whl/src/gemlite-*)
fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader
  $PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, 'cuda', torch.version.cuda)"
  date -u; } | tee "$OUT/device.txt"
for step in $STEPS; do
  case $step in
    tests)
      timeout "$T_TESTS" $PY -m pytest tests/backends/cuda -m gpu -q -p no:cacheprovider -rf -n "${TEST_WORKERS:-8}" $TEST_ARGS > "$OUT/gpu_tests.log" 2>&1
      echo "tests rc=$?"; tail -n 25 "$OUT/gpu_tests.log" ;;
    smoke)
      timeout 120 $PY tools/fp8tc_smoke.py > "$OUT/fp8tc_smoke.log" 2>&1
      echo "smoke rc=$?"; grep -E "FAIL|SMOKE" "$OUT/fp8tc_smoke.log" ;;
    profile)
      timeout 120 $PY tools/bench_linear.py --profile-host "$OUT/host_profile.txt" > /dev/null 2>&1
      echo "profile rc=$?"; grep "^==" "$OUT/host_profile.txt" ;;
    bench)
      timeout "$T_BENCH" $PY tools/bench_linear.py --out "$OUT/bench.json" $BENCH_ARGS > "$OUT/bench.log" 2>&1
      echo "bench rc=$?"; grep -v "^done" "$OUT/bench.log" | grep -iv warn | tail -n 5 ;;
  esac
done
if [ -f "$OUT/bench.json" ]; then
  $PY -c "import json,sys; sys.path.insert(0,'tools'); import bench_linear as b; print(b.table(json.load(open('$OUT/bench.json'))))" | tee "$OUT/bench_table.txt"
fi
