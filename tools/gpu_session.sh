#!/usr/bin/env bash
# One GPU session for the CUDA backend: GPU tests, the linear benchmark (JSON under $OUT), the
# cross-backend parity run, then a short table.  Runs from the repository root with no install:
#   OUT=/some/dir bash tools/gpu_session.sh [tests|bench|parity ...]   (default: all three)
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=. PYTHONUNBUFFERED=1
OUT=${OUT:-./gpu_out}
mkdir -p "$OUT"
PY=${PY:-python3}
STEPS=${*:-tests bench parity}
T_TESTS=${T_TESTS:-300}
T_BENCH=${T_BENCH:-420}
BENCH_ARGS=${BENCH_ARGS:-}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/device.txt"
$PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, 'cuda', torch.version.cuda)" | tee -a "$OUT/device.txt"
for step in $STEPS; do
  case $step in
    tests)
      timeout "$T_TESTS" $PY -m pytest tests/backends/cuda -m gpu -q -p no:cacheprovider -rf 2>&1 | tail -n 60 | tee "$OUT/gpu_tests.log" ;;
    bench)
      timeout "$T_BENCH" $PY tools/bench_linear.py --out "$OUT/bench.json" $BENCH_ARGS > "$OUT/bench.log" 2>&1
      echo "bench rc=$?" ;;
    parity)
      if [ -f omni_npu_quant/cli/parity.py ]; then
        timeout 240 $PY -m omni_npu_quant.cli.main parity --model tiny-llama --backends reference,npu-sim:A2,npu-sim:A5,cuda \
          --out "$OUT/parity" > "$OUT/parity.log" 2>&1
        echo "parity rc=$?"; tail -n 5 "$OUT/parity.log"
        tar -czf "$OUT/parity.tar.gz" -C "$OUT" parity && rm -rf "$OUT/parity"  # at most 8 files come back
      fi ;;
  esac
done
if [ -f "$OUT/bench.json" ]; then
  $PY -c "import json,sys; sys.path.insert(0,'tools'); import bench_linear as b; print(b.table(json.load(open('$OUT/bench.json'))))"
fi
tail -n 3 "$OUT/gpu_tests.log" 2>/dev/null
