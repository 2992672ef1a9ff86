#!/usr/bin/env python
"""Time the reference weight quantizers on one 4096 x 4096 bf16 weight (CPU, 2 threads by default).

    .venv/bin/python tools/bench_numerics.py [--threads 2] [--repeat 5] [--size 4096] [--json FILE]

Reports the best and median wall time of ``scheme.quantize_weight`` (quantize + encode to the stored
tensors) per scheme.  Target on the team's 2-core CPU machine: MXFP4 < 1 s.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time

import torch

from omni_npu_quant.schemes import get_scheme

SCHEMES = ("mxfp4", "mxfp8", "mxfp4_dual", "w8a8_dynamic")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--size", type=int, default=4096)
    p.add_argument("--schemes", nargs="+", default=list(SCHEMES))
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    w = torch.randn(a.size, a.size, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    rows = []
    for name in a.schemes:
        s = get_scheme(name)
        s.quantize_weight(w)  # warm-up
        ts = []
        for _ in range(a.repeat):
            t0 = time.perf_counter()
            s.quantize_weight(w)
            ts.append(time.perf_counter() - t0)
        rows.append({"scheme": name, "best_s": min(ts), "median_s": statistics.median(ts)})
        print(f"{name:<14} best {min(ts):6.3f} s   median {statistics.median(ts):6.3f} s", flush=True)
    info = {"shape": [a.size, a.size], "dtype": "bfloat16", "threads": a.threads, "torch": torch.__version__,
            "cpu": platform.processor() or platform.machine(), "results": rows}
    if a.json:
        with open(a.json, "w") as f:
            json.dump(info, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
