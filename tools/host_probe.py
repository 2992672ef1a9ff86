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

``--stub-cpu`` (no GPU, no CUDA torch needed): the Python path only.  The kernels are prepared on the CPU
for an SM90 target (``cuda.mx_fp8tc`` with its M <= 16 routing for mxfp8 / mxfp4 / w4a8_mxfp, ``cuda.mx``
for mxfp4_dual, ``cuda.int8_dynamic``), Triton's driver is a stub (device 0, stream 0, an SM90 target),
a cache miss of ``JITFunction.run`` stores a stub compiled kernel instead of compiling, and a launch is a
no-op Python call.  What still runs per call: our code, torch allocations on the CPU, Triton's binder /
cache key / globals check on its own launch path (``fn[grid](...)``), the fast launcher's key and cache
lookup.  Not counted: the driver's launch itself, Triton's ``launch_metadata``, CUDA allocator and
stream lookups.  Reports the median per call (``--calls`` calls per round, median of ``--rounds``).

    PYTHONPATH=. python3 tools/host_probe.py --stub-cpu --n 8192 --k 8192
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
    ap.add_argument("--stub-cpu", action="store_true", help="CPU only, Triton launches stubbed: the Python path")
    ap.add_argument("--calls", type=int, default=2000, help="--stub-cpu: calls per timing round")
    ap.add_argument("--rounds", type=int, default=7, help="--stub-cpu: timing rounds (median reported)")
    ap.add_argument("--gemv", action="store_true", help="--stub-cpu: backend option gemv=1 (the opt-in M <= 16 kernels)")
    a = ap.parse_args(argv)
    if a.stub_cpu:
        return stub_cpu(a)
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


STUB_SCHEMES = ("w8a8_dynamic", "mxfp8", "mxfp4", "w4a8_mxfp", "mxfp4_dual")


class _StubCompiled:
    """What a cache miss of JITFunction.run stores under --stub-cpu: launching it does nothing."""

    function = 1
    packed_metadata = ()

    def launch_metadata(self, *a):
        return None

    def run(self, *a):
        return None


class _StubDriver:
    def __init__(self):
        from triton.backends.compiler import GPUTarget

        self.target = GPUTarget("cuda", 90, 32)

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_current_target(self):
        return self.target

    def get_active_torch_device(self):
        return torch.device("cpu")


def install_stub():
    """Stub Triton's driver and compiler and the fast launcher's device / stream lookups (--stub-cpu)."""
    import os

    if os.environ.get("TRITON_INTERPRET") == "1":
        raise SystemExit("host_probe --stub-cpu: unset TRITON_INTERPRET (the stub replaces the launches, not the "
                         "interpreter)")
    from triton.runtime import driver
    from triton.runtime.jit import JITFunction

    driver.set_active(_StubDriver())

    def _do_compile(self, key, signature, device, constexprs, options, attrs, warmup):
        k = _StubCompiled()
        self.device_caches[device][0][key] = k
        return k

    JITFunction._do_compile = _do_compile
    from omni_npu_quant.kernels.cuda.jit import launch

    launch._cuda_device = lambda: 0
    launch._cuda_stream = lambda dev: 0
    launch.WHY_OFF = ""
    launch.ENABLED = True
    return launch


def _median_us(fn, calls, rounds):
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - t0) / calls * 1e6)
    times.sort()
    return times[len(times) // 2], times[0], times[-1]


def stub_cpu(a) -> int:
    import os

    launch = install_stub()
    from omni_npu_quant import platform as P
    from omni_npu_quant.kernels.base import Target
    from omni_npu_quant.kernels.cuda import int8 as cint8, mx as cmx, mx_fp8tc as cfp8
    from omni_npu_quant.kernels.cuda.jit import decode, gemv, ops  # noqa: F401 - every FastKernel registered
    from omni_npu_quant.schemes.registry import get_scheme

    launch.set_enabled(True)
    dev_info = P.DeviceInfo("cuda", "sm90", "sm90")
    opts = {"gemv": 1} if a.gemv else {}
    fp8_opts = dict(opts, fp8tc_gemm="auto", fp8tc_min_m=17)  # the default's M <= 16 routing (scaled_mm needs CUDA)
    kernels = {"w8a8_dynamic": cint8.CudaInt8Dynamic(Target(dev_info, "cpu", opts)),
               "mxfp8": cfp8.CudaMXFp8TC(Target(dev_info, "cpu", fp8_opts)),
               "mxfp4": cfp8.CudaMXFp8TC(Target(dev_info, "cpu", fp8_opts)),
               "w4a8_mxfp": cfp8.CudaMXFp8TC(Target(dev_info, "cpu", fp8_opts)),
               "mxfp4_dual": cmx.CudaMX(Target(dev_info, "cpu", opts))}
    dt = torch.bfloat16
    g = torch.Generator().manual_seed(0)
    x = torch.randn(a.m, a.k, generator=g).to(dt)
    w = torch.randn(a.n, a.k, generator=g) * 0.05
    b = torch.randn(a.n, generator=g)
    res = {"mode": "stub-cpu", "m": a.m, "n": a.n, "k": a.k, "calls": a.calls, "rounds": a.rounds, "gemv": a.gemv,
           "torch": torch.__version__, "load_before": os.getloadavg(), "rows": []}
    for name in [s for s in a.schemes.split(",") if s in kernels]:
        kern, scheme = kernels[name], get_scheme(name)
        t = scheme.quantize_weight(w, b)
        p = kern.prepare(scheme, t, dt, a.n, a.k, name)
        for _ in range(50):
            kern.apply(p, x)
        med, lo, hi = _median_us(lambda: kern.apply(p, x), a.calls, a.rounds)
        row = {"scheme": name, "kernel": kern.name, "median_us": med, "min_us": lo, "max_us": hi,
               "decode": getattr(p, "decode", None), "gemv": getattr(p, "gemv", None)}
        res["rows"].append(row)
        print(f"{name:<14} {kern.name:<16} median {med:7.2f} us  (min {lo:.2f}, max {hi:.2f}; decode="
              f"{row['decode']}, gemv={row['gemv']})", flush=True)
    res["load_after"] = os.getloadavg()
    print(f"load average before {res['load_before']}, after {res['load_after']}")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
