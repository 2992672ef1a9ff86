"""Host overhead per linear call of the CUDA kernels at M=1 (issue 14), fast launch on and off.

For each scheme (w8a8_dynamic, w8a16, mxfp8, mxfp4, w4a8_mxfp, mxfp4_dual, w4a16) a stack of ``--layers``
distinct N x K layers (separate weight copies) on the CUDA backend's first-choice kernel:

* ``eager_us``: one Python pass over the stack (``Backend.apply`` per layer), per layer call;
* ``graph_us``: replay of a CUDA graph that captured the same pass, per layer call;
* ``host_us`` = eager - graph (the issue's measure; it reads low when the GPU, not the host, bounds eager);
* ``issue_us``: host wall time per call of an eager loop without synchronizing (what the Python path costs,
  whatever the GPU does).

``eager`` / ``issue`` are measured with the fast launch off (every launch through Triton's
``JITFunction.run``) and on (``kernels/cuda/jit/launch.py``); the graph replay is the same kernels either way.
bf16 ``F.linear`` over the same stack is the baseline row.  Then a cProfile of 200 eager calls of the scheme
with the largest ``host_us`` (fast launch on), top 15 lines by own time.  Prints a table; ``--out`` JSON.

    PYTHONPATH=. python3 tools/host_probe.py --out host_probe.json
"""
from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import sys
import time

import torch

SCHEMES = ("w8a8_dynamic", "w8a16", "mxfp8", "mxfp4", "w4a8_mxfp", "mxfp4_dual", "w4a16")


def _bench(fn, reps: int) -> float:
    """Median over 5 rounds of the per-round mean of ``reps`` calls, us (synchronized)."""
    times = []
    for _ in range(5):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) / reps * 1e6)
    times.sort()
    return times[len(times) // 2]


def _issue(fn, reps: int) -> float:
    """Host wall time of ``reps`` calls without a sync inside, us per call (median of 5)."""
    times = []
    for _ in range(5):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        times.append((time.perf_counter() - t0) / reps * 1e6)
        torch.cuda.synchronize()
    times.sort()
    return times[len(times) // 2]


def _weights(scheme, n, k, seed):
    g = torch.Generator(device="cuda").manual_seed(seed)
    w = torch.randn(n, k, device="cuda", generator=g) * 0.05
    b = torch.randn(n, device="cuda", generator=g)
    try:
        t = scheme.quantize_weight(w, b)
    except Exception:  # noqa: BLE001 - a quantizer that wants CPU tensors
        t = scheme.quantize_weight(w.cpu(), b.cpu())
    return {s: v.to("cuda") for s, v in t.items()}


def _graph_time(run_stack, reps):
    run_stack()
    torch.cuda.synchronize()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        run_stack()
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        run_stack()
    graph.replay()
    t = _bench(graph.replay, reps)
    del graph
    return t


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="", help="write the results as JSON here")
    ap.add_argument("--layers", type=int, default=20)
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--k", type=int, default=4096)
    ap.add_argument("--m", type=int, default=1)
    ap.add_argument("--reps", type=int, default=20, help="stack passes per timing round")
    ap.add_argument("--schemes", default=",".join(SCHEMES))
    a = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("host_probe: needs a CUDA GPU", file=sys.stderr)
        return 2
    import triton

    from omni_npu_quant.backends import CudaBackend
    from omni_npu_quant.kernels.cuda.jit import launch
    from omni_npu_quant.schemes.registry import get_scheme

    t_start = time.time()
    be = CudaBackend()
    dt = torch.bfloat16
    x = torch.randn(a.m, a.k, device="cuda", dtype=dt)
    res = {"device": torch.cuda.get_device_name(), "triton": triton.__version__, "torch": torch.__version__,
           "fast_launch_available": launch.ENABLED, "fast_launch_why_off": launch.WHY_OFF, "m": a.m, "n": a.n,
           "k": a.k, "layers": a.layers, "rows": [], "errors": {}}

    # baseline: bf16 F.linear
    ws = [torch.randn(a.n, a.k, device="cuda", dtype=dt) * 0.05 for _ in range(a.layers)]

    def lin_stack():
        for w in ws:
            torch.nn.functional.linear(x, w)

    lin_stack()
    g_lin = _graph_time(lin_stack, a.reps) / a.layers
    e_lin = _bench(lin_stack, a.reps) / a.layers
    i_lin = _issue(lin_stack, a.reps) / a.layers
    res["rows"].append({"scheme": "bf16 F.linear", "kernel": "torch", "graph_us": g_lin, "eager_off_us": e_lin,
                        "eager_on_us": e_lin, "host_off_us": e_lin - g_lin, "host_on_us": e_lin - g_lin,
                        "issue_off_us": i_lin, "issue_on_us": i_lin})
    del ws
    stacks = {}
    for name in [s for s in a.schemes.split(",") if s]:
        try:
            scheme = get_scheme(name)
            base = _weights(scheme, a.n, a.k, seed=len(stacks) + 1)
            layers = [be.prepare(scheme, {s: v.clone() for s, v in base.items()}, dt, where=f"{name}.{i}")
                      for i in range(a.layers)]
            del base

            def stack(layers=layers):
                for p in layers:
                    be.apply(p, x)

            launch.set_enabled(False)
            stack()
            stack()
            e_off = _bench(stack, a.reps) / a.layers
            i_off = _issue(stack, a.reps) / a.layers
            on = launch.set_enabled(True)
            stack()
            stack()
            e_on = _bench(stack, a.reps) / a.layers
            i_on = _issue(stack, a.reps) / a.layers
            g = _graph_time(stack, a.reps) / a.layers
            row = {"scheme": name, "kernel": layers[0].kernel_name, "graph_us": g, "eager_off_us": e_off,
                   "eager_on_us": e_on, "host_off_us": e_off - g, "host_on_us": e_on - g, "issue_off_us": i_off,
                   "issue_on_us": i_on, "fast_launch": on}
            res["rows"].append(row)
            stacks[name] = stack
            print(f"  {name}: done ({time.time() - t_start:.0f} s)", flush=True)
        except Exception as e:  # noqa: BLE001 - reported, the other schemes still run
            res["errors"][name] = f"{type(e).__name__}: {e}"
            print(f"  {name}: FAILED {type(e).__name__}: {e}", flush=True)
        torch.cuda.empty_cache()

    launch.set_enabled(True)
    rows = [r for r in res["rows"] if r["scheme"] in stacks]
    if rows:
        worst = max(rows, key=lambda r: r["host_on_us"])
        name = worst["scheme"]
        stack = stacks[name]
        stack()
        torch.cuda.synchronize()
        passes = max(1, 200 // a.layers)
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(passes):
            stack()
        prof.disable()
        torch.cuda.synchronize()
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(15)
        res["profile"] = {"scheme": name, "calls": passes * a.layers, "fast_launch": True, "top15": buf.getvalue()}

    hdr = (f"{'scheme':<14} {'kernel':<18} {'graph':>7} {'eager off':>10} {'eager on':>9} {'host off':>9} "
           f"{'host on':>8} {'issue off':>10} {'issue on':>9}")
    print(f"\nhost overhead per layer call, us (M={a.m}, N={a.n}, K={a.k}, {a.layers} layers; "
          f"{res['device']}, triton {res['triton']})")
    print(hdr)
    for r in res["rows"]:
        print(f"{r['scheme']:<14} {r['kernel']:<18} {r['graph_us']:7.1f} {r['eager_off_us']:10.1f} "
              f"{r['eager_on_us']:9.1f} {r['host_off_us']:9.1f} {r['host_on_us']:8.1f} {r['issue_off_us']:10.1f} "
              f"{r['issue_on_us']:9.1f}")
    for k, v in res["errors"].items():
        print(f"{k}: FAILED {v}")
    if "profile" in res:
        print(f"\ncProfile, {res['profile']['calls']} eager calls of {res['profile']['scheme']} (fast launch on):")
        print(res["profile"]["top15"])
    res["elapsed_s"] = time.time() - t_start
    print(f"elapsed {res['elapsed_s']:.0f} s")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(res, f, indent=1)
    return 1 if res["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
