#!/usr/bin/env bash
# Set up (or refresh) the project's Python environment in .venv.  Idempotent: a second run only
# checks that every pinned package is present.  Order matters: torch 2.13.0 first, so nothing
# later pulls a newer torch (vLLM 0.33 pins torch 2.14, which we do not want: it is installed
# without its dependencies below).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
VPY=.venv/bin/python
PIP=(.venv/bin/python -m pip install --disable-pip-version-check --progress-bar off -q)

# 1. torch first (the CPU build where the package index provides one)
"${PIP[@]}" "torch==2.13.0"
# 2. this package with its test extras (pytest, hypothesis, ml_dtypes, matplotlib, transformers)
#    (transformers pinned here too, so it is resolved once, at the version vLLM 0.33 accepts)
"${PIP[@]}" -e ".[test]" "transformers==5.20.2"
# 3. msModelSlim 26.1.0: the test oracle for checkpoints
"${PIP[@]}" "msmodelslim==26.1.0" "transformers==5.20.2"
# 4. vLLM's Python tree only (its torch/CUDA pins are ignored), plus the small modules that
#    `vllm.model_executor.layers.linear` and the plugin tests import on CPU.  xgrammar is installed
#    without dependencies so that it does not pull triton 3.9 (~1 GB; step 6 adds triton 3.6 alone).
"${PIP[@]}" --no-deps "vllm==0.33.0" "xgrammar==0.2.8" "apache-tvm-ffi" "llguidance>=1.7.0,<1.8.0"
"${PIP[@]}" regex psutil pyzmq urllib3 cbor2 aiohttp requests oss-harmony openai pillow pybase64 cachetools \
    msgspec cloudpickle uvloop py-cpuinfo prometheus_client fastapi partial-json-parser "compressed-tensors==0.17.0" einops
# 5. torchao: a second independent MX implementation for tests/numerics (its wheel does not pin torch)
"${PIP[@]}" "torchao==0.18.0"
# 6. diffusers (calibration of a diffusers transformer) and Triton 3.6 without dependencies: the CUDA
#    kernels are also checked on CPU through Triton's interpreter (tests/backends/cuda/test_cuda_cpu.py)
"${PIP[@]}" "diffusers==0.42.1"
"${PIP[@]}" --no-deps "triton==3.6.0"

# sanity: the installed torch is still 2.13.0 and vLLM's linear layers import on CPU
"$VPY" - <<'PY'
import os
os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
import torch
assert torch.__version__.startswith("2.13.0"), f"torch {torch.__version__} was installed; expected 2.13.0"
import vllm.model_executor.layers.linear  # noqa: F401
import omni_npu_quant  # noqa: F401
print(f"setup ok: torch {torch.__version__}")
PY
