"""Which torchao wheel loads its CUTLASS extension beside this machine's torch, and what it registers.

For every wheel in ``--wheels`` (default ``.whl-tao/``): install it into its own target directory
(``python3 -m pip install --no-index --no-deps --target DIR WHEEL``, a subprocess), then in a fresh
subprocess with only that directory added to ``sys.path``: import torchao, record whether
``_C_cutlass_90a`` and ``_C_mxfp8`` loaded (torchao prints "Failed to load ..." otherwise), every
``torchao::`` op the dispatcher knows and whether it has a CUDA kernel.

Which of our schemes maps onto a loaded op exactly is decided in docs/cuda.md ("CUTLASS"): in 0.16-0.18
``_C_cutlass_90a`` holds only the 2:4-sparse FP8 rowwise GEMM (``rowwise_scaled_linear_sparse_cutlass_f8f8``
plus its weight compressor), which no dense scheme maps onto.  With ``--time`` (default on when a GPU is
present) that op is timed once against bf16 ``F.linear`` at N = K = 8192, M = 4096 on a 2:4-pruned E4M3
weight, for information only (the pruning changes the weights; no kernel entry uses it).

    PYTHONPATH=. python3 tools/torchao_probe.py --out torchao_probe.json      (GPU machine, < 2 min)
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time

CHILD = r"""
import json, sys, time, io, contextlib
sys.path.insert(0, sys.argv[1])
res = {"target": sys.argv[1]}
err = io.StringIO()
t0 = time.time()
import torch
res["torch"] = torch.__version__
res["cuda"] = torch.cuda.is_available()
try:
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(err):
        import torchao
    res["torchao"] = getattr(torchao, "__version__", "?")
    res["torchao_file"] = torchao.__file__.replace(sys.argv[1], "<target>")
except Exception as e:
    res["import_error"] = repr(e)[:400]
full_log = [l for l in err.getvalue().splitlines() if l.strip()]
res["import_log"] = full_log[:20]
res["import_s"] = round(time.time() - t0, 1)
res["extension_messages"] = [l[:300] for l in full_log if "Failed to load" in l or "Skipping import" in l]
names = sorted(n for n in torch._C._dispatch_get_all_op_names() if n.startswith("torchao::"))
res["ops"] = {n: {k: bool(torch._C._dispatch_has_kernel_for_dispatch_key(n, k)) for k in ("CUDA", "CPU", "Meta")}
              for n in names}
# loaded = the extension's CUDA kernels are registered with the dispatcher (what loading it does)
res["_C_cutlass_90a_loaded"] = res["ops"].get("torchao::rowwise_scaled_linear_sparse_cutlass_f8f8", {}).get("CUDA", False)
res["_C_mxfp8_loaded"] = any("mxfp8" in n and d["CUDA"] for n, d in res["ops"].items())
op = "torchao::rowwise_scaled_linear_sparse_cutlass_f8f8"
if sys.argv[2] == "1" and res["cuda"] and res["ops"].get(op, {}).get("CUDA"):
    from triton.testing import do_bench
    n = k = 8192; m = 4096
    g = torch.Generator(device="cuda").manual_seed(0)
    w = torch.randn(n, k, device="cuda", generator=g) * 0.02
    # 2:4 pruning: keep the two largest |w| of every 4 consecutive K entries
    w4 = w.view(n, k // 4, 4)
    keep = w4.abs().topk(2, dim=-1).indices
    w24 = torch.zeros_like(w4).scatter(-1, keep, w4.gather(-1, keep)).view(n, k)
    sw = w24.abs().amax(dim=1).clamp_min(1e-12) / 448.0
    wq = (w24 / sw[:, None]).to(torch.float8_e4m3fn)
    x = torch.randn(m, k, device="cuda", generator=g, dtype=torch.bfloat16)
    sx = x.float().abs().amax(dim=1).clamp_min(1e-12) / 448.0
    xq = (x.float() / sx[:, None]).to(torch.float8_e4m3fn)
    try:
        wc, meta = torch.ops.torchao.to_sparse_semi_structured_cutlass_sm9x_f8(wq)
        errs = []
        for sdt in (torch.float32, torch.bfloat16):  # scale dtypes the extension may be built for
            sxd, swd = sx.to(sdt), sw.to(sdt)
            f = lambda: torch.ops.torchao.rowwise_scaled_linear_sparse_cutlass_f8f8(xq, sxd, wc, meta, swd, None,
                                                                                    torch.bfloat16)
            try:
                y = f()
                break
            except Exception as e:
                errs.append(f"{sdt}: {e!r}"[:200])
        else:
            raise RuntimeError("; ".join(errs))
        ref = (xq.float() * sx[:, None]) @ (wq.float() * sw[:, None]).t()
        wb = w24.to(torch.bfloat16)
        t_sp = do_bench(f, warmup=5, rep=50, return_mode="median") * 1e3
        t_bf = do_bench(lambda: torch.nn.functional.linear(x, wb), warmup=5, rep=50, return_mode="median") * 1e3
        res["sparse_f8f8_timing"] = {"n": n, "k": k, "m": m, "sparse_f8f8_us": t_sp, "bf16_linear_us": t_bf,
                                     "vs_bf16": t_bf / t_sp,
                                     "rel_err_vs_dequant": float((y.float() - ref).norm() / ref.norm()),
                                     "scale_dtype": str(sxd.dtype), "scale_dtype_errors": errs,
                                     "note": "L2-warm single layer; 2:4-pruned weight; information only"}
    except Exception as e:
        res["sparse_f8f8_timing"] = {"error": repr(e)[:400]}
print("RESULT " + json.dumps(res))
"""


def probe(wheel: str, workdir: str, do_time: bool, py: str) -> dict:
    name = os.path.basename(wheel)
    target = os.path.join(workdir, name.split("-")[1] if "-" in name else name)
    out = {"wheel": name}
    t0 = time.time()
    r = subprocess.run([py, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--target",
                        target, wheel], capture_output=True, text=True, timeout=120)
    out["install_s"] = round(time.time() - t0, 1)
    if r.returncode:
        out["install_error"] = (r.stderr or r.stdout)[-600:]
        return out
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # only the target dir, not the repo's torchao
    r = subprocess.run([py, "-c", CHILD, target, "1" if do_time else "0"], capture_output=True, text=True,
                       timeout=100, env=env)
    line = next((ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        out["child_error"] = f"rc={r.returncode}: " + (r.stderr or r.stdout)[-800:]
        return out
    out.update(json.loads(line[len("RESULT "):]))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--wheels", default=".whl-tao", help="folder holding torchao-*.whl")
    ap.add_argument("--out", default="", help="JSON output path")
    ap.add_argument("--no-time", action="store_true", help="skip the sparse FP8 timing")
    ap.add_argument("--python", default=sys.executable)
    a = ap.parse_args(argv)
    wheels = sorted(glob.glob(os.path.join(a.wheels, "torchao-*.whl")))
    if not wheels:
        print(f"torchao_probe: no torchao-*.whl in {a.wheels!r}", file=sys.stderr)
        return 2
    results = []
    with tempfile.TemporaryDirectory(prefix="torchao_probe_") as work:
        for w in wheels:
            res = probe(w, work, not a.no_time, a.python)
            results.append(res)
            ops = res.get("ops", {})
            print(f"== {res['wheel']}: torchao {res.get('torchao', '-')} under torch {res.get('torch', '-')}; "
                  f"_C_cutlass_90a loaded: {res.get('_C_cutlass_90a_loaded')}; _C_mxfp8 loaded: "
                  f"{res.get('_C_mxfp8_loaded')}; {len(ops)} torchao ops, with CUDA kernels: "
                  f"{sorted(n.split('::')[1] for n, d in ops.items() if d['CUDA'])}", flush=True)
            for key in ("install_error", "child_error", "import_error"):
                if key in res:
                    print(f"   {key}: {res[key][-400:]}")
            for ln in res.get("extension_messages", [])[:4]:
                print("   log:", ln[:200])
            if "sparse_f8f8_timing" in res:
                print("   sparse f8f8 timing:", json.dumps(res["sparse_f8f8_timing"]))
            if a.out:
                with open(a.out, "w") as f:
                    json.dump({"wheels": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
