"""Benchmark each scheme's full linear on the CUDA backend (activation quantization included) in one run
against bf16 ``F.linear``, fp8 rowwise ``torch._scaled_mm``, ``torch._int_mm`` and (when importable)
gemlite's A8W8_int8_dynamic / A16W8_MXFP / A16W4_MXFP / A8W4_MXFP_dynamic.

Every case runs over a stack of L distinct layers (weights not L2-resident): ``eager`` times one
Python pass over the stack, ``graph`` the replay of a CUDA graph that captured the same pass; both are
reported per layer call (``triton.testing.do_bench`` medians, us).  ``host_us`` = eager - graph.
``vs_bf16`` = bf16 F.linear time / case time, same mode, same run.

    PYTHONPATH=. python tools/bench_linear.py --out bench.json [--shapes 8192x8192,12288x3072] [--ms 1,16,4096]
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import sys

import torch

SCHEMES = ("w8a8_dynamic", "mxfp8", "mxfp4", "w4a8_mxfp", "mxfp4_dual")
# (scheme, pinned kernel, label): the default selection plus the older exact MX path for comparison
CASES = [(s, None, s) for s in SCHEMES] + [(s, "cuda.mx", f"{s}[cuda.mx]") for s in ("mxfp8", "mxfp4", "w4a8_mxfp")]
GEMLITE = ("A8W8_int8_dynamic", "A16W8_MXFP", "A16W4_MXFP", "A8W4_MXFP_dynamic")
SHAPES = "8192x8192,12288x3072,3072x12288,13824x5120,5120x13824"  # N x K


def _bench(fn, rep_ms):
    from triton.testing import do_bench

    return do_bench(fn, warmup=max(5, rep_ms // 4), rep=rep_ms, return_mode="median") * 1e3  # us


def _time_stack(calls, x, rep_ms, graph=True):
    """-> (eager us per call, graph us per call or nan)."""
    def run():
        for c in calls:
            c(x)

    run()
    torch.cuda.synchronize()
    t_e = _bench(run, rep_ms) / len(calls)
    t_g = float("nan")
    if graph:
        try:
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                run()
            torch.cuda.current_stream().wait_stream(s)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                run()
            t_g = _bench(g.replay, rep_ms) / len(calls)
            del g
        except Exception as e:  # noqa: BLE001
            print("graph capture failed:", repr(e)[:200], file=sys.stderr)
    return t_e, t_g


def _gemlite_layers(kind, ws, biases, dtype):
    import gemlite
    from gemlite import helper as H

    out = []
    for w, b in zip(ws, biases):
        lin = torch.nn.Linear(w.shape[1], w.shape[0], bias=True, device=w.device, dtype=dtype)
        with torch.no_grad():
            lin.weight.copy_(w)
            lin.bias.copy_(b)
        proc = getattr(H, kind)(device="cuda:0", dtype=dtype) if kind != "A8W4_MXFP_dynamic" else \
            H.A8W4_MXFP_dynamic(device="cuda:0", dtype=dtype, post_scale=True)
        out.append(proc.from_linear(lin))
    return out


def run(shapes, ms_big, ms_small, out_path, rep_ms=30, gemlite_ok=True, layers_bytes=384 << 20):
    from omni_npu_quant.backends import CudaBackend
    from omni_npu_quant.kernels.cuda.jit import ops as cuda_ops
    from omni_npu_quant.schemes.registry import get_scheme

    dev = torch.device("cuda")
    props = torch.cuda.get_device_properties(dev)
    import triton

    meta = {"device": props.name, "sms": props.multi_processor_count, "torch": torch.__version__,
            "triton": triton.__version__, "cuda": torch.version.cuda, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "timer": "triton.testing.do_bench median, us per layer call over a stack of distinct layers",
            "autotune": os.environ.get("OMNI_NPU_QUANT_CUDA_AUTOTUNE", "0")}
    gl = None
    if gemlite_ok:
        try:
            import gemlite

            gemlite.set_autotune(False)
            cfg = os.path.join(os.path.dirname(gemlite.__file__), "configs", "h100.json")
            if os.path.exists(cfg):
                gemlite.load_config(cfg)
            meta["gemlite"] = getattr(gemlite, "__version__", "?") + " (autotune off, its h100 config cache)"
            gl = gemlite
        except Exception as e:  # noqa: BLE001
            meta["gemlite"] = f"not importable: {e!r}"[:200]
    rows = []
    g = torch.Generator(device=dev).manual_seed(0)
    for si, (n, k) in enumerate(shapes):
        L = max(2, min(8, math.ceil(layers_bytes / (n * k * 2))))
        ws = [torch.randn(n, k, device=dev, dtype=torch.bfloat16, generator=g) * 0.02 for _ in range(L)]
        bs = [torch.randn(n, device=dev, generator=g) for _ in range(L)]
        w_i8 = [torch.randint(-127, 128, (n, k), device=dev, dtype=torch.int8, generator=g) for _ in range(L)]
        w_f8 = [(torch.randn(n, k, device=dev, generator=g) * 50).clamp(-448, 448).to(torch.float8_e4m3fn)
                for _ in range(L)]
        sb = torch.ones(1, n, device=dev)
        stacks = {}
        for name, kern, label in CASES:
            sch = get_scheme(name)
            if name == "mxfp4_dual" and k % 512:
                continue
            be = CudaBackend(kernel=kern)
            t = sch.quantize_weight(ws[0].float(), bs[0])
            ps = [be.prepare(sch, {kk: v.clone() for kk, v in t.items()}, torch.bfloat16) for _ in range(L)]
            stacks[label] = [lambda x, p=p, be=be: be.apply(p, x) for p in ps]
            meta.setdefault("kernels", {})[label] = ps[0].kernel_name
            del t
        if gl is not None:
            for kind in GEMLITE:
                try:
                    layers = _gemlite_layers(kind, ws, bs, torch.bfloat16)
                    stacks[f"gemlite {kind}"] = [lambda x, l=l: l(x) for l in layers]
                except Exception as e:  # noqa: BLE001
                    print(f"gemlite {kind} failed at n={n} k={k}: {e!r}"[:300], file=sys.stderr)
        ms = ms_big if si == 0 else ms_small
        for m in ms:
            x = torch.randn(m, k, device=dev, dtype=torch.bfloat16, generator=g)
            flops = 2.0 * m * n * k
            base = {"n": n, "k": k, "m": m, "layers": L}
            cases = {"bf16 F.linear": [lambda x, w=w, b=b.to(torch.bfloat16): torch.nn.functional.linear(x, w, b)
                                       for w, b in zip(ws, bs)]}
            xi8 = torch.randint(-127, 128, (max(m, 17), k), device=dev, dtype=torch.int8, generator=g)
            cases["raw torch._int_mm" + (" (M'=17)" if m <= 16 else "")] = [lambda x, w=w: torch._int_mm(xi8, w.t())
                                                                            for w in w_i8]
            xf8 = torch.randn(m, k, device=dev, generator=g).to(torch.float8_e4m3fn)
            sa = torch.ones(m, 1, device=dev)
            cases["raw fp8 rowwise _scaled_mm"] = [lambda x, w=w: torch._scaled_mm(xf8, w.t(), sa, sb,
                                                                                   out_dtype=torch.bfloat16)
                                                   for w in w_f8]
            cases.update(stacks)
            t_ref = None
            for what, calls in cases.items():
                try:
                    te, tg = _time_stack(calls, x, rep_ms, graph=m <= 4096 or what == "bf16 F.linear")
                except Exception as e:  # noqa: BLE001
                    print(f"{what} m={m} n={n} k={k} failed: {e!r}"[:300], file=sys.stderr)
                    te = tg = float("nan")
                if t_ref is None:
                    t_ref = (te, tg)
                rows.append({**base, "what": what, "eager_us": te, "graph_us": tg, "host_us": te - tg,
                             "vs_bf16_eager": t_ref[0] / te, "vs_bf16_graph": t_ref[1] / tg,
                             "tflops_eager": flops / te / 1e6})
            print(f"done n={n} k={k} m={m}", file=sys.stderr, flush=True)
            del x
            if out_path:
                _dump(out_path, {"meta": meta, "rows": rows})
        del stacks, ws, w_i8, w_f8
        torch.cuda.empty_cache()
    a = torch.empty(1 << 30, dtype=torch.uint8, device=dev)
    b = torch.empty_like(a)
    meta["copy_GBps_read_plus_write"] = 2 * a.numel() / _bench(lambda: b.copy_(a), 100) / 1e3
    meta["chosen_configs"] = {str(kk): v for kk, v in cuda_ops.CHOSEN.items()}
    res = {"meta": meta, "rows": rows}
    if out_path:
        _dump(out_path, res)
    return res


def profile_host(path, n=4096, k=4096, calls=300):
    """cProfile of eager M=1 calls (where the host time per call goes), one block per case."""
    import cProfile
    import io
    import pstats
    import time

    from omni_npu_quant.backends import CudaBackend
    from omni_npu_quant.schemes.registry import get_scheme

    dev = torch.device("cuda")
    w = torch.randn(n, k, device=dev) * 0.02
    x = torch.randn(1, k, device=dev, dtype=torch.bfloat16)
    out = io.StringIO()
    for name, kern in (("w8a8_dynamic", None), ("mxfp4", None), ("mxfp8", "cuda.mx"), ("mxfp4_dual", None)):
        be = CudaBackend(kernel=kern)
        p = be.prepare(get_scheme(name), get_scheme(name).quantize_weight(w, None), torch.bfloat16)
        for _ in range(20):
            be.apply(p, x)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(calls):
            be.apply(p, x)
        t1 = time.perf_counter()
        torch.cuda.synchronize()
        pr = cProfile.Profile()
        pr.enable()
        for _ in range(calls):
            be.apply(p, x)
        pr.disable()
        torch.cuda.synchronize()
        out.write(f"== {name} [{p.kernel_name}] host time per call (no profiler): {(t1 - t0) / calls * 1e6:.1f} us\n")
        pstats.Stats(pr, stream=out).sort_stats("tottime").print_stats(14)
    with open(path, "w") as f:
        f.write(out.getvalue())
    return out.getvalue()


def _dump(path, res):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(res, f, indent=1)


def table(res) -> str:
    m = res["meta"]
    lines = [f"# {m['device']} torch {m['torch']} triton {m['triton']} {m['date']} "
             f"copy {m.get('copy_GBps_read_plus_write', 0):.0f} GB/s gemlite {m.get('gemlite', '-')}",
             f"{'N':>5} {'K':>5} {'M':>5} {'what':<34} {'eager us':>9} {'graph us':>9} {'host':>7} {'xbf16 e':>7} "
             f"{'xbf16 g':>7}"]
    for r in res["rows"]:
        lines.append(f"{r['n']:>5} {r['k']:>5} {r['m']:>5} {r['what']:<34} {r['eager_us']:>9.1f} {r['graph_us']:>9.1f} "
                     f"{r['host_us']:>7.1f} {r['vs_bf16_eager']:>7.2f} {r['vs_bf16_graph']:>7.2f}")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default=SHAPES, help="N x K list; the first gets --ms, the others --ms-small")
    ap.add_argument("--ms", default="1,16,256,4096,16384")
    ap.add_argument("--ms-small", default="1,16,4096")
    ap.add_argument("--rep-ms", type=int, default=30)
    ap.add_argument("--no-gemlite", action="store_true")
    ap.add_argument("--out", default="", help="JSON output path")
    ap.add_argument("--profile-host", default="", help="write a cProfile of eager M=1 calls here and exit")
    a = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_linear: needs a CUDA GPU (torch.cuda.is_available() is False)", file=sys.stderr)
        return 2
    if a.profile_host:
        profile_host(a.profile_host)
        return 0
    shapes = [tuple(int(v) for v in s.split("x")) for s in a.shapes.split(",")]
    res = run(shapes, [int(s) for s in a.ms.split(",")], [int(s) for s in a.ms_small.split(",")], a.out, a.rep_ms,
              not a.no_gemlite)
    print(table(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
