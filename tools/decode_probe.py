"""Decode (M <= 16) probe for issue 14: bf16 ``F.linear`` vs ``torch._int_mm`` vs each small-M variant of the
CUDA MX and int8 kernels, as CUDA-graph replay over a stack of distinct layers (weights not L2-resident).

Variants per (N x K, M):
  int8 (w8a8_dynamic, per-channel):  ``int8_gemm`` (the current Triton GEMM), ``gemv`` (jit/gemv.py default
      config), ``gemv_alt*`` (other configs / forced tl.dot form); each = fused quantizer + GEMM (+ reduce).
  mxfp8 / mxfp4 / w4a8_mxfp:  ``dot_scaled`` (ops.mx_gemm, decode kernel off), ``decode_old`` (jit/decode.py),
      ``gemv`` and ``gemv_alt*`` (jit/gemv.py); each = fused MX quantizer + GEMM (+ reduce).
  mxfp4_dual (8192 x 8192 only): ``decode_old`` vs ``gemv``.
Before timing, every variant's output on layer 0 (fp32 output; int8 also bf16) is checked against its
pure-torch twin on the same quantized inputs (MX: max abs diff, relative to max|ref|; int8: bit-identical).
Weights are random codes (E8M0 scale codes 118..127, no NaN bytes), not a quantized checkpoint.

Run from the repository root (needs a CUDA GPU and triton):
    PYTHONPATH=. python3 tools/decode_probe.py --out decode_probe.json [--budget-s 220] [--quick]
Prints one flushed line per case and a table (ratio = bf16 time / variant time); writes JSON to --out
(rewritten after every (shape, M) case, so a time-out keeps what was measured).
CPU self-check of the plumbing (interpreter, tiny shapes, ~2.5 min on 2 cores): --dry-run.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import sys
import time

import torch
import torch.nn.functional as F

SHAPES = [(8192, 8192), (12288, 3072), (5120, 13824)]  # (N, K)
MS = [1, 4, 16]
L2_BYTES = 60e6
REPLAYS = 20


def log(msg):
    print(msg, flush=True)


def layers_for(n, k):
    """Layers in a stack: the 4.25-bit weights (the smallest stored) exceed 3x the L2."""
    per = n * k / 2 + n * k / 32
    return max(2, math.ceil(3.3 * L2_BYTES / per))


def time_graph(fn, n_layers):
    """fn() runs the whole stack once; -> microseconds per layer under CUDA-graph replay."""
    fn()  # compile / grow workspaces outside capture
    torch.cuda.synchronize()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn()
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    for _ in range(3):
        g.replay()
    torch.cuda.synchronize()
    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    e0.record()
    for _ in range(REPLAYS):
        g.replay()
    e1.record()
    torch.cuda.synchronize()
    us = e0.elapsed_time(e1) * 1e3 / (REPLAYS * n_layers)
    del g
    return us


def time_eager(fn, n_layers):
    """--dry-run: one timed eager call (interpreter; checks the plumbing, not the speed)."""
    fn()
    t = time.perf_counter()
    fn()
    return (time.perf_counter() - t) * 1e6 / n_layers


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="JSON output path")
    ap.add_argument("--budget-s", type=float, default=220.0, help="skip remaining cases after this many seconds")
    ap.add_argument("--quick", action="store_true", help="first shape only, M in {1, 16}")
    ap.add_argument("--dry-run", action="store_true",
                    help="CPU self-check of this script: Triton's interpreter, tiny shapes, no graphs, "
                         "no timing meaning")
    args = ap.parse_args(argv)
    if args.dry_run:
        from omni_npu_quant.kernels.cuda.jit import interpret

        interpret.enable()
    elif not torch.cuda.is_available():
        log("decode_probe: no CUDA device")
        return 2
    import triton

    from omni_npu_quant.kernels.cuda.jit import decode, gemv, ops, twins
    from omni_npu_quant.numerics.constants import E2M1, E4M3

    t_start = time.time()
    dev = torch.device("cpu" if args.dry_run else "cuda")
    timer = time_eager if args.dry_run else time_graph
    # int8 outputs checked bit for bit in these dtypes (the interpreter's bf16 cast truncates: fp32 only there)
    check_dtypes = (torch.float32,) if args.dry_run else (torch.float32, torch.bfloat16)
    torch.manual_seed(0)
    meta = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "device": "cpu (dry run)" if args.dry_run else torch.cuda.get_device_name(0),
            "torch": torch.__version__, "triton": triton.__version__,
            "python": platform.python_version(), "replays": REPLAYS, "l2_bytes_assumed": L2_BYTES,
            "note": "us = per layer, CUDA-graph replay over a stack of distinct layers; ratio = bf16 us / us"}
    rows = []
    out_path = args.out

    def dump():
        with open(out_path, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)

    def over():
        return time.time() - t_start > args.budget_s

    shapes = [(64, 512), (40, 200)] if args.dry_run else SHAPES[:1] if args.quick else SHAPES
    ms = [1, 16] if args.quick else MS
    for n, k in shapes:
        nl = 2 if args.dry_run else layers_for(n, k)
        log(f"== N={n} K={k}: {nl} layers per stack (t={time.time() - t_start:.0f}s)")
        kp = -(-k // 256) * 256
        wb = [torch.randn(n, k, device=dev, dtype=torch.bfloat16) * 0.02 for _ in range(nl)]
        wi8 = [torch.randint(-127, 128, (n, k), device=dev, dtype=torch.int8) for _ in range(nl)]
        wsi = [torch.rand(n, 1, device=dev) * 1e-2 + 1e-3 for _ in range(nl)]
        fp4 = [torch.randint(0, 256, (n, kp // 2), device=dev, dtype=torch.uint8) for _ in range(nl)]
        e43 = [(torch.randint(0, 0x7E, (n, kp), device=dev, dtype=torch.uint8)
                | (torch.randint(0, 2, (n, kp), device=dev, dtype=torch.uint8) << 7)) for _ in range(nl)]
        wsc = [torch.randint(118, 128, (n, kp // 32), device=dev, dtype=torch.uint8) for _ in range(nl)]
        big = (n, k) == (8192, 8192) or (args.dry_run and k == 512)  # where alternates are timed
        dual = big and k % 512 == 0
        l0w = [torch.rand(n, kp // 512, device=dev) + 0.5 for _ in range(nl)] if dual else None
        for m in ms:
            if over():
                log(f"   budget of {args.budget_s:.0f}s spent: skipping M={m}")
                rows.append({"n": n, "k": k, "m": m, "skipped": "time budget"})
                continue
            x = torch.randn(m, k, device=dev, dtype=torch.bfloat16)
            case = []

            def add(scheme, variant, fn, check=None):
                """fn(l) runs layer l; check() -> (max_abs_diff, max_abs_ref) or bit-identical bool."""
                r = {"n": n, "k": k, "m": m, "layers": nl, "scheme": scheme, "variant": variant}
                try:
                    if check is not None:
                        c = check()
                        if isinstance(c, bool):
                            r["bit_identical"] = c
                        else:
                            r["max_abs_diff"], r["max_abs_ref"] = c
                    r["us"] = timer(lambda: [fn(i) for i in range(nl)], nl)
                except Exception as e:  # noqa: BLE001 - a failing variant is reported, not fatal
                    r["error"] = f"{type(e).__name__}: {str(e)[:300]}"
                case.append(r)
                rows.append(r)

            add("bf16", "F.linear", lambda i: F.linear(x, wb[i]))
            xi = torch.randint(-127, 128, (max(32, m), k), device=dev, dtype=torch.int8)
            add("int8", "torch._int_mm (M padded to 32)", lambda i: torch._int_mm(xi, wi8[i].t()))
            # --- w8a8_dynamic
            q8, s8 = ops.int8_dynamic_quant(x, None)
            ref8 = {od: twins.twin_int8_gemm(q8, wi8[0], od, sx=s8, ws=wsi[0]) for od in check_dtypes}

            def same8(f):
                return all(torch.equal(f(0, od), ref8[od]) for od in check_dtypes)

            def i8_old(i, od=torch.bfloat16):
                q, s = ops.int8_dynamic_quant(x, None)
                return ops.int8_gemm(q, wi8[i], od, sx=s, ws=wsi[i])

            add("w8a8_dynamic", "int8_gemm", i8_old, lambda: same8(i8_old))
            bm = gemv.m_block(m)
            i8_cfgs = [("gemv", None, None)] + [(f"gemv_alt{j}", c, None) for j, c in
                                                enumerate(gemv.INT8_CONFIGS[bm][1:2], 1)]
            if m <= 4:
                i8_cfgs.append(("gemv_dot", None, True))
            for name, cfg, dot in i8_cfgs:
                def i8_new(i, od=torch.bfloat16, cfg=cfg, dot=dot):
                    q, s = ops.int8_dynamic_quant(x, None)
                    return gemv.int8_gemv(q, wi8[i], od, sx=s, ws=wsi[i], cfg=cfg, dot=dot)

                add("w8a8_dynamic", f"{name}{'' if cfg is None else ' ' + str(cfg)}", i8_new,
                    lambda f=i8_new: same8(f))
            # --- MX
            mx_schemes = [("mxfp8", E4M3, E4M3, e43), ("mxfp4", E2M1, E2M1, fp4), ("w4a8_mxfp", E4M3, E2M1, fp4)]
            for scheme, af, wf, wq in mx_schemes:
                aq, asc, _ = ops.mx_quant(x, None, af, "rint", 0, kp)
                ref = twins.twin_mx_gemm(aq, asc, wq[0], wsc[0], n, kp, torch.float32, af, wf)
                refmax = ref.abs().max().item()

                def mk(kind, cfg=None, dot=None, af=af, wf=wf, wq=wq):
                    def f(i, od=torch.bfloat16):
                        q, c, _ = ops.mx_quant(x, None, af, "rint", 0, kp)
                        if kind == "dot_scaled":
                            return ops.mx_gemm(q, c, wq[i], wsc[i], n, kp, od, af, wf)
                        if kind == "decode_old":
                            return decode.mx_gemm_decode(q, c, wq[i], wsc[i], n, kp, od, af is E2M1,
                                                         wf is E2M1, pick=ops._pick, launch_opts=ops._launch_opts())
                        return gemv.mx_gemv(q, c, wq[i], wsc[i], n, kp, od, af is E2M1, wf is E2M1,
                                            cfg=cfg, dot=dot)
                    return f

                def chk(f, ref=ref, refmax=refmax):  # fp32 output: only the summation order may differ
                    return (f(0, torch.float32) - ref).abs().max().item(), refmax

                old_env = os.environ.get("OMNI_NPU_QUANT_CUDA_DECODE")
                os.environ["OMNI_NPU_QUANT_CUDA_DECODE"] = "0"
                try:
                    f = mk("dot_scaled")
                    add(scheme, "dot_scaled", f, lambda f=f: chk(f))
                finally:
                    if old_env is None:
                        os.environ.pop("OMNI_NPU_QUANT_CUDA_DECODE", None)
                    else:
                        os.environ["OMNI_NPU_QUANT_CUDA_DECODE"] = old_env
                f = mk("decode_old")
                add(scheme, "decode_old", f, lambda f=f: chk(f))
                alts = gemv.MX_CONFIGS[bm][1:] if big else []
                variants = [("gemv", None, None)] + [(f"gemv_alt{j} {c}", c, None) for j, c in enumerate(alts, 1)]
                if m == 4 and big:
                    variants.append(("gemv_dot", None, True))
                for name, cfg, dot in variants:
                    f = mk("gemv", cfg, dot)
                    add(scheme, name, f, lambda f=f: chk(f))
            if dual and m in (1, 16):
                aq, asc, l0 = ops.dual_quant(x, None, "rint")
                ref = twins.twin_mx_gemm(aq, asc, fp4[0], wsc[0], n, kp, torch.float32, E2M1, E2M1, l0x=l0,
                                         l0w=l0w[0])
                refmax = ref.abs().max().item()
                for name in ("decode_old", "gemv"):
                    def fd(i, od=torch.bfloat16, name=name):
                        q, c, l = ops.dual_quant(x, None, "rint")
                        if name == "decode_old":
                            return decode.mx_gemm_decode(q, c, fp4[i], wsc[i], n, kp, od, True, True,
                                                         l0x=l, l0w=l0w[i], pick=ops._pick,
                                                         launch_opts=ops._launch_opts())
                        return gemv.mx_gemv(q, c, fp4[i], wsc[i], n, kp, od, True, True, l0x=l, l0w=l0w[i])

                    add("mxfp4_dual", name, fd,
                        lambda fd=fd, ref=ref, refmax=refmax: ((fd(0, torch.float32) - ref).abs().max().item(),
                                                               refmax))
            base = case[0].get("us")
            for r in case:
                if base and r.get("us"):
                    r["ratio_vs_bf16"] = base / r["us"]
                if "error" in r:
                    msg = "ERROR " + r["error"]
                else:
                    if "bit_identical" in r:
                        ok = "bit-identical" if r["bit_identical"] else "NOT bit-identical"
                    elif "max_abs_diff" in r:
                        r["within_e1_tol"] = r["max_abs_diff"] <= 1e-5 * max(r["max_abs_ref"], 1.0) + 1e-6
                        ok = (f"fp32 maxdiff {r['max_abs_diff']:.2e} (ref max {r['max_abs_ref']:.2e})"
                              f"{'' if r['within_e1_tol'] else ' OVER E1 TOL'}")
                    else:
                        ok = ""
                    msg = f"{r['us']:8.2f} us  x{r.get('ratio_vs_bf16', float('nan')):5.2f}  {ok}"
                log(f"   M={m:2d} {r['scheme']:13s} {r['variant']:34s} {msg}")
            if not args.dry_run:
                torch.cuda.synchronize()
            dump()
        del wb, wi8, wsi, fp4, e43, wsc, l0w
        if not args.dry_run:
            torch.cuda.empty_cache()
    dump()
    # summary table: best variant per (shape, M, scheme)
    log("\n== best per case (ratio = bf16 / variant; goals at 8192^2: int8 1.9, mxfp8 1.7, fp4 M=1 3.0 / M=16 2.8)")
    best = {}
    for r in rows:
        if r.get("us") and r.get("scheme") not in ("bf16",):
            key = (r["n"], r["k"], r["m"], r["scheme"])
            if key not in best or r["us"] < best[key]["us"]:
                best[key] = r
    for (n, k, m, s), r in sorted(best.items()):
        log(f"   {n}x{k} M={m:2d} {s:13s} {r['variant']:34s} x{r.get('ratio_vs_bf16', float('nan')):5.2f}")
    log(f"decode_probe: {len(rows)} rows, {time.time() - t_start:.0f}s, JSON in {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
