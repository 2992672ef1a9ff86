#!/usr/bin/env bash
# One GPU session for the CUDA kernels, in steps that each fit one 10-minute device command.
# Runs from the repository root with no install:
#   OUT=/some/dir bash tools/gpu_session.sh STEP [STEP ...]        (default: smoke tests)
# Steps (each with its own timeout, seconds, env var in brackets; its log goes to logs.tgz in $OUT):
#   smoke   [T_SMOKE=120]    tools/fp8tc_smoke.py
#   tests   [T_TESTS=420]    every GPU test: pytest tests -m gpu (tests/backends/cuda, tests/w4a16, tests/svd ...;
#                            a module that fails to import there, e.g. for a package the GPU machine lacks, is
#                            reported and the others still run),
#                            pytest-xdist with TEST_WORKERS (default 14 on the 16-core machine; Triton compiles
#                            are CPU-bound); TEST_ARGS adds pytest arguments
#   bench1  [T_BENCH1=540]   tools/bench_linear.py --part 1/$BENCH_PARTS (default 2 parts), time guard
#   bench2  [T_BENCH2=540]   the second part (bench3 ... for more parts); BENCH_ARGS adds arguments
#   bench   [T_BENCH=540]    the whole benchmark in one part (only with trimmed BENCH_ARGS)
#   decode  [T_DECODE=240]   tools/decode_probe.py --out $OUT/decode_probe.json
#   host    [T_HOST=180]     tools/host_probe.py --out $OUT/host_probe.json
#   torchao [T_TORCHAO=150]  tools/torchao_probe.py --out $OUT/torchao_probe.json (wheels in .whl-tao/)
#   profile [T_PROFILE=120]  cProfile of eager M=1 calls (host_profile.txt in logs.tgz)
# The benchmark parts stop starting cases BENCH_GUARD_S (60) seconds before their timeout and rewrite their JSON
# after every case.  Part JSONs found in $OUT (and any named in BENCH_MERGE, e.g. a part carried from an earlier
# command) are merged into $OUT/bench.json; the table goes to $OUT/session.txt.  Merge later, without a GPU:
#   python3 tools/bench_linear.py --merge bench_part1.json bench_part2.json --out bench.json
# What comes back from $OUT: session.txt (device, every step's rc and tail, the bench table), logs.tgz, the
# JSONs, and with TRITON_CACHE_TAR_OUT=1 triton-cache.tar (the Triton cache, if under 15 MiB).  A carried
# .triton-cache.tar in the repository root is unpacked into TRITON_CACHE_DIR before any step (fewer compiles).
# gemlite (the peer library) is used when its source distribution sits in .whl/ (carried along).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=. PYTHONUNBUFFERED=1 OMNI_NPU_QUANT_CUDA_AUTOTUNE=${OMNI_NPU_QUANT_CUDA_AUTOTUNE:-0}
export TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-$PWD/.triton-cache}
OUT=${OUT:-./gpu_out}
LOGS="$OUT/logs"
mkdir -p "$OUT" "$LOGS" "$TRITON_CACHE_DIR"
PY=${PY:-python3}
STEPS=${*:-smoke tests}
BENCH_PARTS=${BENCH_PARTS:-2}
BENCH_GUARD_S=${BENCH_GUARD_S:-60}
BENCH_ARGS=${BENCH_ARGS:-}
TEST_ARGS=${TEST_ARGS:-}
SUMMARY="$OUT/session.txt"
say() { echo "$*" | tee -a "$SUMMARY"; }

if [ -f .triton-cache.tar ]; then
  tar -xf .triton-cache.tar -C "$TRITON_CACHE_DIR" && say "triton cache: unpacked .triton-cache.tar ($(du -sh "$TRITON_CACHE_DIR" | cut -f1))"
fi
if ls .whl/gemlite-*.tar.gz >/dev/null 2>&1; then
  mkdir -p .whl/src && tar -xzf .whl/gemlite-*.tar.gz -C .whl/src  # .whl/ is git-ignored
  export PYTHONPATH=.:$(ls -d "$PWD"/.whl/src/gemlite-* | head -n 1)
fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader
  $PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, 'cuda', torch.version.cuda)"
  date -u; echo "steps: $STEPS"; } 2>&1 | tee -a "$SUMMARY"

# step NAME TIMEOUT CMD...: run with a timeout, log to $LOGS/NAME.log, record rc and elapsed time
step() {
  local name=$1 t=$2; shift 2
  local t0=$SECONDS
  timeout "$t" "$@" > "$LOGS/$name.log" 2>&1
  local rc=$?
  say "== $name rc=$rc $((SECONDS - t0))s (timeout ${t}s)$([ $rc = 124 ] && echo ' TIMED OUT')"
  return $rc
}

bench_part() {  # bench_part I TIMEOUT
  local i=$1 t=$2
  step "bench$i" "$t" $PY tools/bench_linear.py --part "$i/$BENCH_PARTS" --budget-s $((t - BENCH_GUARD_S)) \
    --out "$OUT/bench_part$i.json" $BENCH_ARGS
  grep -E "FAIL|failed|not run|unit .* done" "$LOGS/bench$i.log" | tail -n 12 | tee -a "$SUMMARY"
}

for s in $STEPS; do
  case $s in
    smoke)
      step smoke "${T_SMOKE:-120}" $PY tools/fp8tc_smoke.py
      grep -E "FAIL|SMOKE" "$LOGS/smoke.log" | tee -a "$SUMMARY" ;;
    tests)
      XD=""
      if $PY -c "import xdist" 2>/dev/null; then XD="-n ${TEST_WORKERS:-14}"; else say "tests: pytest-xdist missing, serial"; fi
      # -v: one line per test as it ends, so a run cut by its limit still names every failure (2026-12-02: a cut
      # -q run showed three F's and no names); the full GPU suite needs ~8 min with 15 workers: split it with
      # TEST_ARGS (e.g. a second command with --deselect / -k) where one command's limit is shorter
      step tests "${T_TESTS:-420}" $PY -m pytest tests -m gpu -v -p no:cacheprovider -rfE \
        --continue-on-collection-errors $XD $TEST_ARGS
      grep -E " (FAILED|ERROR) " "$LOGS/tests.log" | tee -a "$SUMMARY"
      tail -n 30 "$LOGS/tests.log" | tee -a "$SUMMARY" ;;
    bench)
      step bench "${T_BENCH:-540}" $PY tools/bench_linear.py --part 1/1 --budget-s $((${T_BENCH:-540} - BENCH_GUARD_S)) \
        --out "$OUT/bench_part1.json" $BENCH_ARGS ;;
    bench[0-9]*)
      i=${s#bench}; tv="T_BENCH$i"; bench_part "$i" "${!tv:-540}" ;;
    decode|host)
      f=tools/${s}_probe.py; tv="T_$(echo "$s" | tr a-z A-Z)"
      if [ -f "$f" ]; then
        step "$s" "${!tv:-$([ $s = decode ] && echo 240 || echo 180)}" $PY "$f" --out "$OUT/${s}_probe.json"
        tail -n 15 "$LOGS/$s.log" | tee -a "$SUMMARY"
      else say "== $s skipped: $f not present"; fi ;;
    torchao)
      step torchao "${T_TORCHAO:-150}" $PY tools/torchao_probe.py --out "$OUT/torchao_probe.json"
      tail -n 25 "$LOGS/torchao.log" | tee -a "$SUMMARY" ;;
    profile)
      step profile "${T_PROFILE:-120}" $PY tools/bench_linear.py --profile-host "$LOGS/host_profile.txt"
      grep "^==" "$LOGS/host_profile.txt" | tee -a "$SUMMARY" ;;
    *) say "unknown step '$s' (smoke tests bench bench1 bench2 ... decode host torchao profile)" ;;
  esac
done

# merge the benchmark parts (this command's and any named in BENCH_MERGE) into bench.json, table into session.txt
parts=$(ls "$OUT"/bench_part*.json 2>/dev/null; for f in ${BENCH_MERGE:-}; do [ -f "$f" ] && echo "$f"; done)
if [ -n "$parts" ]; then
  if [ "$(echo "$parts" | wc -l)" -gt 1 ]; then
    $PY tools/bench_linear.py --merge $parts --out "$OUT/bench.json" >> "$SUMMARY" 2>&1 && \
      for f in "$OUT"/bench_part*.json; do [ -f "$f" ] && mv "$f" "$LOGS/"; done  # the merged JSON keeps every part's meta
  else
    $PY tools/bench_linear.py --table $parts >> "$SUMMARY" 2>&1
  fi
fi
if [ "${TRITON_CACHE_TAR_OUT:-0}" = 1 ]; then
  tar -czf "$OUT/triton-cache.tar" -C "$TRITON_CACHE_DIR" . 2>/dev/null
  sz=$(stat -c %s "$OUT/triton-cache.tar" 2>/dev/null || echo 0)
  if [ "$sz" -gt $((15 << 20)) ]; then
    rm -f "$OUT/triton-cache.tar"; say "triton cache: $((sz >> 20)) MiB compressed, over 15 MiB: not kept"
  else say "triton cache: $OUT/triton-cache.tar $((sz >> 10)) KiB (carry it back as .triton-cache.tar)"; fi
fi
# at most 8 files come back from $OUT: the logs go as one tarball
tar -czf "$OUT/logs.tgz" -C "$OUT" logs && rm -rf "$LOGS"
ls "$OUT" | tee -a "$SUMMARY"
