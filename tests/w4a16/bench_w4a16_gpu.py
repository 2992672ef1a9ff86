"""W4A16 GEMM benchmark on a GPU (not a test): our Triton kernel vs bf16 ``F.linear`` (cuBLAS) and,
when ``gemlite`` imports, gemlite's A16W4 (INT, group 128, symmetric) on the same shapes, same run.

Decode (M <= 16) is timed as CUDA-graph replays; prefill as plain launches; median of
``triton.testing.do_bench``.  Prints one markdown table (ratios = bf16 time / kernel time, >1 is faster).

Run: OMNI_NPU_QUANT_CUDA_AUTOTUNE=1 python tests/w4a16/bench_w4a16_gpu.py [--budget-s 200]
"""
from __future__ import annotations

import argparse
import os
import time

import torch
import torch.nn.functional as F
from triton.testing import do_bench

from omni_npu_quant.backends import CudaBackend
from omni_npu_quant.schemes import get_scheme

SHAPES = [(4096, 4096), (14336, 4096), (4096, 14336)]  # (N, K)
MS = [1, 16, 4096]


def timed(fn, graph: bool) -> float:
    fn()
    torch.cuda.synchronize()
    if not graph:
        return do_bench(fn, warmup=25, rep=100, return_mode="median")
    g = torch.cuda.CUDAGraph()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn()
    torch.cuda.current_stream().wait_stream(s)
    with torch.cuda.graph(g):
        for _ in range(20):
            fn()
    return do_bench(g.replay, warmup=25, rep=100, return_mode="median") / 20


def gemlite_layer(ts, n, k, gs):
    try:
        from gemlite.helper import A16Wn
    except Exception as e:  # noqa: BLE001
        return None, f"gemlite not importable: {type(e).__name__}: {e}"
    u = (ts["weight"].to(torch.int16) + 8).to(torch.uint8).cuda()
    sc = ts["weight_scale"].to(torch.bfloat16).cuda()
    z = torch.full_like(sc, 8.0)
    try:
        return A16Wn(device="cuda", dtype=torch.bfloat16).from_weights(u, sc, z, 4, gs), ""
    except Exception as e:  # noqa: BLE001
        return None, f"gemlite A16W4 setup failed: {type(e).__name__}: {e}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget-s", type=float, default=240.0, help="stop starting gemlite rows after this")
    args = ap.parse_args()
    t0 = time.time()
    torch.manual_seed(0)
    s = get_scheme("w4a16", group_size=128)
    be = CudaBackend("cuda")
    rows = []
    notes = []
    for n, k in SHAPES:
        w = torch.randn(n, k) * 0.02
        ts = s.quantize_weight(w)
        p = be.prepare(s, ts, torch.bfloat16)
        wb = s.dequantize_weight(ts).to(torch.bfloat16).cuda()
        gl, why = gemlite_layer(ts, n, k, 128) if time.time() - t0 < args.budget_s else (None, "budget")
        if why and why not in notes:
            notes.append(why)
        for m in MS:
            x = torch.randn(m, k, dtype=torch.bfloat16, device="cuda")
            graph = m <= 16
            ours = p.kernel.apply(p, x)
            ref = F.linear(x, wb)
            err = float((ours.float() - ref.float()).norm() / ref.float().norm())
            t_bf16 = timed(lambda: F.linear(x, wb), graph)
            t_ours = timed(lambda: p.kernel.apply(p, x), graph)
            t_gl, gl_err = None, None
            if gl is not None and time.time() - t0 < args.budget_s:
                try:
                    yg = gl(x)
                    gl_err = float((yg.float() - ref.float()).norm() / ref.float().norm())
                    try:
                        t_gl = timed(lambda: gl(x), graph)
                    except Exception as e:  # noqa: BLE001 - e.g. not capturable: time plain launches
                        torch.cuda.synchronize()
                        notes.append(f"gemlite M={m} N={n} K={k}: no CUDA graph ({type(e).__name__}), plain launches")
                        t_gl = timed(lambda: gl(x), False)
                except Exception as e:  # noqa: BLE001
                    notes.append(f"gemlite M={m} N={n} K={k}: {type(e).__name__}: {str(e)[:120]}")
            rows.append((m, n, k, t_bf16, t_ours, t_gl, err, gl_err))
            print(f"M={m} N={n} K={k}: bf16 {t_bf16 * 1e3:.1f} us, w4a16 {t_ours * 1e3:.1f} us, "
                  f"gemlite {'-' if t_gl is None else f'{t_gl * 1e3:.1f} us'}, err {err:.2e}", flush=True)
    from omni_npu_quant.kernels.cuda.jit import ops

    print("\nconfigs chosen:", {str(k): v for k, v in ops.CHOSEN.items() if k[0] == "w4a16"})
    print(f"\ndevice: {torch.cuda.get_device_name()}, torch {torch.__version__}, autotune "
          f"{os.environ.get('OMNI_NPU_QUANT_CUDA_AUTOTUNE', '0')}")
    print("| M | N | K | bf16 F.linear (us) | w4a16 Triton (us) | x vs bf16 | gemlite A16W4 (us) | x vs bf16 | "
          "w4a16 vs gemlite | rel err vs bf16 dequant |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for m, n, k, tb, to, tg, err, ge in rows:
        g = "-" if tg is None else f"{tg * 1e3:.1f} | {tb / tg:.2f}x | {tg / to:.2f}x"
        if tg is None:
            g = "- | - | -"
        print(f"| {m} | {n} | {k} | {tb * 1e3:.1f} | {to * 1e3:.1f} | {tb / to:.2f}x | {g} | {err:.1e} |")
    for nt in notes:
        print("note:", nt)


if __name__ == "__main__":
    main()
