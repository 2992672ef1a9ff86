"""Benchmark each scheme's full linear on the CUDA backend (activation quantization included)
against bf16 ``F.linear`` and raw ``torch._int_mm`` / fp8 rowwise ``torch._scaled_mm`` in the same run.

Times are ``triton.testing.do_bench`` medians; inputs rotate over several buffers so that small
shapes are not timed out of L2.  Prints ratios (bf16 time / scheme time), TFLOP/s and the achieved
weight bandwidth (weight bytes / time), and writes JSON.

    PYTHONPATH=. python tools/bench_linear.py --out bench.json [--sizes 4096,8192] [--ms 1,16,128,2048,8192]
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys

import torch

SCHEMES = ("w8a8_dynamic", "w8a8_static", "mxfp8", "mxfp4", "w4a8_mxfp", "mxfp4_dual")
WEIGHT_BITS = {"w8a8_dynamic": 8, "w8a8_static": 8, "mxfp8": 8, "mxfp4": 4, "w4a8_mxfp": 4, "mxfp4_dual": 4}


def _rotating(make, count):
    bufs = [make() for _ in range(count)]
    state = {"i": 0}

    def nxt():
        state["i"] = (state["i"] + 1) % count
        return bufs[state["i"]]

    return nxt


def _bench(fn, rep_ms):
    from triton.testing import do_bench

    return do_bench(fn, warmup=max(5, rep_ms // 4), rep=rep_ms, return_mode="median") * 1e3  # us


def weight_bytes(name, n, k):
    b = n * k * WEIGHT_BITS[name] // 8 + n * (k // 32 if name not in ("w8a8_dynamic", "w8a8_static") else 4)
    return b


def run(sizes, ms, schemes, out_path, rep_ms=40, prefill_modes=("dequant",)):
    from omni_npu_quant.backends import CudaBackend
    from omni_npu_quant.kernels.cuda.jit import ops as cuda_ops
    from omni_npu_quant.schemes.registry import get_scheme

    os.environ.setdefault("OMNI_NPU_QUANT_CUDA_AUTOTUNE", "1")
    dev = torch.device("cuda")
    props = torch.cuda.get_device_properties(dev)
    import triton

    meta = {"device": props.name, "sms": props.multi_processor_count, "torch": torch.__version__,
            "triton": triton.__version__, "cuda": torch.version.cuda,
            "date": datetime.date.today().isoformat(), "timer": "triton.testing.do_bench median, us"}
    rows = []
    g = torch.Generator(device=dev).manual_seed(0)
    for nk in sizes:
        n = k = nk
        w_bf16 = torch.randn(n, k, device=dev, dtype=torch.bfloat16, generator=g) * 0.02
        bias = torch.randn(n, device=dev, generator=g)
        w_i8 = torch.randint(-127, 128, (n, k), device=dev, dtype=torch.int8, generator=g)
        w_f8 = (torch.randn(n, k, device=dev, generator=g) * 50).clamp(-448, 448).to(torch.float8_e4m3fn)
        prepared = {}
        for name in schemes:
            sch = get_scheme(name)
            kw = {"act_min": -4.0, "act_max": 4.0} if name == "w8a8_static" else {}
            t = sch.quantize_weight(w_bf16.float(), bias, **kw)
            for mode in prefill_modes:
                be = CudaBackend(mx_prefill=mode)
                prepared[(name, mode)] = (be, be.prepare(sch, t, torch.bfloat16))
        for m in ms:
            nbuf = max(2, min(16, (64 << 20) // max(1, m * k * 2)))
            xs = _rotating(lambda: torch.randn(m, k, device=dev, dtype=torch.bfloat16, generator=g), nbuf)
            flops = 2.0 * m * n * k
            t_bf16 = _bench(lambda: torch.nn.functional.linear(xs(), w_bf16, bias.to(torch.bfloat16)), rep_ms)
            xi8 = _rotating(lambda: torch.randint(-127, 128, (max(m, 17), k), device=dev, dtype=torch.int8, generator=g), nbuf)
            t_intmm = _bench(lambda: torch._int_mm(xi8(), w_i8.t()), rep_ms)
            xf8 = _rotating(lambda: torch.randn(m, k, device=dev, generator=g).to(torch.float8_e4m3fn), nbuf)
            sa = torch.ones(m, 1, device=dev)
            sb = torch.ones(1, n, device=dev)
            try:
                t_f8 = _bench(lambda: torch._scaled_mm(xf8(), w_f8.t(), sa, sb, out_dtype=torch.bfloat16), rep_ms)
            except Exception as e:  # noqa: BLE001
                t_f8 = float("nan")
                print("fp8 _scaled_mm failed:", e, file=sys.stderr)
            base = {"n": n, "k": k, "m": m}
            rows.append({**base, "what": "bf16 F.linear", "us": t_bf16, "tflops": flops / t_bf16 / 1e6,
                         "weight_GBps": n * k * 2 / t_bf16 / 1e3, "vs_bf16": 1.0})
            rows.append({**base, "what": "raw torch._int_mm" + (" (M'=17)" if m <= 16 else ""), "us": t_intmm,
                         "tflops": flops / t_intmm / 1e6, "weight_GBps": n * k / t_intmm / 1e3, "vs_bf16": t_bf16 / t_intmm})
            rows.append({**base, "what": "raw fp8 rowwise _scaled_mm", "us": t_f8, "tflops": flops / t_f8 / 1e6,
                         "weight_GBps": n * k / t_f8 / 1e3, "vs_bf16": t_bf16 / t_f8})
            for (name, mode), (be, p) in prepared.items():
                if len(prefill_modes) > 1 and mode != prefill_modes[0] and (name in ("w8a8_dynamic", "w8a8_static", "mxfp4_dual")
                                                                             or m < getattr(p.kernel, "mx_prefill_m", 1024)):
                    continue
                try:
                    t = _bench(lambda: be.apply(p, xs()), rep_ms)
                except Exception as e:  # noqa: BLE001
                    print(f"{name} m={m} n={n} failed: {e!r}", file=sys.stderr)
                    t = float("nan")
                single_mx = name in ("mxfp8", "mxfp4", "w4a8_mxfp")
                label = f"{name}[{mode}]" if single_mx and len(prefill_modes) > 1 and m >= getattr(p.kernel, "mx_prefill_m", 1024) else name
                wb = weight_bytes(name, n, k)
                rows.append({**base, "what": label, "us": t, "tflops": flops / t / 1e6, "weight_GBps": wb / t / 1e3,
                             "vs_bf16": t_bf16 / t})
            print(f"done n=k={nk} m={m}", file=sys.stderr, flush=True)
            if out_path:  # partial results survive a time limit
                _dump(out_path, {"meta": meta, "rows": rows})
        del prepared
        torch.cuda.empty_cache()
    # copy bandwidth (HBM roofline reference)
    a = torch.empty(1 << 30, dtype=torch.uint8, device=dev)
    b = torch.empty_like(a)
    t_copy = _bench(lambda: b.copy_(a), 100)
    meta["copy_GBps_read_plus_write"] = 2 * a.numel() / t_copy / 1e3
    meta["chosen_configs"] = {str(kk): v for kk, v in cuda_ops.CHOSEN.items()}
    res = {"meta": meta, "rows": rows}
    if out_path:
        _dump(out_path, res)
    return res


def _dump(path, res):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(res, f, indent=1)


def table(res) -> str:
    lines = [f"# {res['meta']['device']} torch {res['meta']['torch']} triton {res['meta']['triton']} "
             f"{res['meta']['date']} copy {res['meta'].get('copy_GBps_read_plus_write', 0):.0f} GB/s",
             f"{'N=K':>5} {'M':>5} {'what':<32} {'us':>9} {'x bf16':>7} {'TFLOP/s':>8} {'W GB/s':>8}"]
    for r in res["rows"]:
        lines.append(f"{r['n']:>5} {r['m']:>5} {r['what']:<32} {r['us']:>9.1f} {r['vs_bf16']:>7.2f} {r['tflops']:>8.1f} "
                     f"{r['weight_GBps']:>8.0f}")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="4096,8192", help="N=K values, comma separated")
    ap.add_argument("--ms", default="1,16,128,2048,8192", help="M values, comma separated")
    ap.add_argument("--schemes", default=",".join(SCHEMES))
    ap.add_argument("--prefill-modes", default="dequant,dot_scaled",
                    help="MX single-scale prefill paths to time (first is the default)")
    ap.add_argument("--rep-ms", type=int, default=40)
    ap.add_argument("--out", default="", help="JSON output path")
    a = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_linear: needs a CUDA GPU (torch.cuda.is_available() is False)", file=sys.stderr)
        return 2
    res = run([int(s) for s in a.sizes.split(",")], [int(s) for s in a.ms.split(",")], a.schemes.split(","), a.out,
              a.rep_ms, tuple(a.prefill_modes.split(",")))
    print(table(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
