"""Peak host memory of `quantize` and `load_quantized` on a large model (CPU, reference backend).

    .venv/bin/python tools/measure_memory.py [--layers 20] [--width 4096] [--scheme mxfp4]

Builds a stack of `--layers` bf16 Linear(width, width) layers (20 x 4096^2 = 336M parameters), then, each in a fresh
process so that peaks do not mix: (1) quantize it with the torch runtime and write the checkpoint with our writer;
(2) build the bf16 skeleton and `load_quantized` the checkpoint into it, then run one forward.  Peak RSS comes from
getrusage (ru_maxrss); the baseline is the RSS after torch is imported and the float model / skeleton exists.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, os, resource, sys, time
import torch
from torch import nn
mode, out, layers, width, scheme = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
torch.manual_seed(0)
def rss():  # current RSS in bytes
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
def build():
    m = nn.Sequential(*[nn.Linear(width, width, bias=False, dtype=torch.bfloat16) for _ in range(layers)])
    return m
from omni_npu_quant import load_quantized, quantize_
from omni_npu_quant.integrations.torch.api import quantized_tensor_sets
from omni_npu_quant.checkpoint.writer import write_ascendv1
torch.set_num_threads(2)
t0 = time.time()
if mode == "quantize":
    m = build()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, width ** -0.5)
    base = rss()
    quantize_(m, scheme, backend="reference")
    after_q = rss()
    write_ascendv1(out, {n: v for n, v in quantized_tensor_sets(m).items()}, {})
else:
    m = build()
    base = rss()
    load_quantized(m, out, backend="reference")
    with torch.no_grad():
        y = m(torch.randn(4, width, dtype=torch.bfloat16))
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"mode": mode, "baseline_rss": base, "peak_rss": peak, "seconds": round(time.time() - t0, 1)}))
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", type=int, default=20)
    ap.add_argument("--width", type=int, default=4096)
    ap.add_argument("--scheme", default="mxfp4")
    args = ap.parse_args()
    params = args.layers * args.width * args.width
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "ckpt"
        res = {}
        for mode in ("quantize", "load"):
            r = subprocess.run([sys.executable, "-c", CHILD, mode, str(out), str(args.layers), str(args.width), args.scheme],
                               capture_output=True, text=True, env=dict(os.environ, OMNI_NPU_QUANT_BACKEND=""))
            if r.returncode:
                print(r.stderr[-3000:], file=sys.stderr)
                return 1
            res[mode] = json.loads(r.stdout.strip().splitlines()[-1])
        ck = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    mb = 1 << 20
    bf16 = params * 2
    q, ld = res["quantize"], res["load"]
    print(f"model: {args.layers} x Linear({args.width}, {args.width}) = {params / 1e6:.0f}M parameters, bf16 {bf16 / mb:.0f} MiB; "
          f"{args.scheme} checkpoint {ck / mb:.0f} MiB")
    print(f"quantize + write: peak RSS {q['peak_rss'] / mb:.0f} MiB, {(q['peak_rss'] - q['baseline_rss']) / mb:.0f} MiB above "
          f"the bf16 model ({q['seconds']} s)")
    print(f"load_quantized + forward: peak RSS {ld['peak_rss'] / mb:.0f} MiB, {(ld['peak_rss'] - ld['baseline_rss']) / mb:.0f} "
          f"MiB above the bf16 skeleton = {(ld['peak_rss'] - ld['baseline_rss']) / ck:.2f} x checkpoint ({ld['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
