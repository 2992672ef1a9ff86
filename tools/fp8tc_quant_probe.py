"""The activation quantizer of cuda.mx_fp8tc alone (issue 14): its time per shape on the GPU, or its SASS
instruction count per element on any machine.

GPU (SM90), bf16 activations, the apply path (E4M3 bytes + row scales, no MX bytes):

    PYTHONPATH=. python tools/fp8tc_quant_probe.py [--shapes 4096x12288,16384x13824] [--variants]

prints per (M, K, format) the plan ``fp8tc.rowwise_plan`` picks, its time (``triton.testing.do_bench`` median,
us) and the effective bandwidth (bf16 read once + E4M3 written); ``--variants`` also times neighbouring plans
(rows per program x2 and /2, num_warps x2 and /2, the other chunk widths, one pass vs two) after checking that
each writes the same bytes as the rule's plan.  Compare the rule's time with the quantizer's share of the
2026-12-02 bench rows (mxfp8 - raw fp8 rowwise _scaled_mm at the same shape).

Any machine (no GPU; the ptxas / cuobjdump Triton ships):

    PYTHONPATH=. python tools/fp8tc_quant_probe.py --sass

compiles the kernel for sm_90a for the rule's plans at Kp 3328 / 8192 / 12288 / 13824 and prints, per loop,
SASS instructions per bf16 element (static counts: a measure of ALU work, not of time).
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from omni_npu_quant.numerics.constants import E2M1, E4M3  # noqa: E402

FORMATS = {"e4m3": (E4M3, "rint", 0), "e2m1": (E2M1, "round", 0)}  # mxfp8 / w4a8_mxfp, mxfp4 (defaults)
DEFAULT_SHAPES = "4096x3072,4096x5120,4096x8192,4096x12288,4096x13824,16384x12288,16384x13824"


def _variants(fp8tc, plan, m):
    rows, nb, single, nw = plan.pick(m)
    kp = plan.kp
    out = []
    for r2, nb2, s2, nw2 in ((rows * 2, nb, single, nw), (max(1, rows // 2), nb, single, nw),
                             (rows, nb, single, min(16, nw * 2)), (rows, nb, single, max(1, nw // 2)),
                             (rows, 64, kp <= 2048, nw), (rows, 32, kp <= 1024, nw), (rows, 16, kp <= 512, nw),
                             (1, 1 << (kp - 1).bit_length() >> 5, True, 16)):
        if nb2 * 32 < kp and s2 or nb2 * 32 > 16384 or r2 * nb2 * 32 > 16384:
            continue
        cand = (r2, nb2, nb2 * 32 >= kp, nw2)
        if cand != (rows, nb, single, nw) and cand not in out:
            out.append(cand)
    return [fp8tc.RowwisePlan(kp, ((0,) + c,)) for c in out]


def bench(args) -> None:
    from triton.testing import do_bench

    from omni_npu_quant.kernels.cuda.jit import fp8tc, ops

    n_sm = torch.cuda.get_device_properties(0).multi_processor_count
    print(f"device {torch.cuda.get_device_name(0)}, {n_sm} SMs; bf16 activations, apply path (write_mx=False)")
    print(f"{'M':>6} {'K':>6} {'fmt':>5} {'plan (rows, nb, single, warps)':>34} {'us':>8} {'GB/s':>7}  note")
    for shape in args.shapes.split(","):
        m, k = (int(v) for v in shape.lower().split("x"))
        kp = -(-k // 256) * 256
        x = (torch.randn(m, k, device="cuda") * 3).to(torch.bfloat16)
        gbytes = (m * k * 2 + m * kp) / 1e9
        for name in args.formats.split(","):
            fmt, rm, alg = FORMATS[name]
            plan = fp8tc.rowwise_plan(kp, n_sm)

            def run(p):
                return fp8tc.mx_quant_rowwise(x, None, fmt, rm, alg, kp, write_mx=False, launch_opts=ops._launch_opts(),
                                              plan=p)

            want = run(plan)
            t = do_bench(lambda: run(plan), warmup=10, rep=args.rep_ms)
            print(f"{m:>6} {k:>6} {name:>5} {str(plan.pick(m)):>34} {t * 1e3:>8.1f} {gbytes / (t * 1e-3):>7.0f}  rule")
            if args.variants:
                for v in _variants(fp8tc, plan, m):
                    got = run(v)
                    same = torch.equal(got[2], want[2]) and torch.equal(got[3].view(torch.int32),
                                                                        want[3].view(torch.int32))
                    tv = do_bench(lambda: run(v), warmup=10, rep=args.rep_ms)
                    print(f"{m:>6} {k:>6} {name:>5} {str(v.pick(m)):>34} {tv * 1e3:>8.1f} {gbytes / (tv * 1e-3):>7.0f}  "
                          f"variant{'' if same else ' BYTES DIFFER'}")


def sass() -> None:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from omni_npu_quant.kernels.cuda.jit import fp8tc

    fn = fp8tc.mx_quant_rowwise_kernel
    bindir = os.path.join(os.path.dirname(triton.backends.nvidia.__file__), "bin")
    ptrs = {"x_ptr": "*bf16", "sm_ptr": "*fp32", "q_ptr": "*u8", "sc_ptr": "*u8", "xr_ptr": "*u8", "sx_ptr": "*fp32"}
    div16 = set(ptrs) | {"K", "KP", "stride_xm", "stride_qm", "stride_sm", "stride_rm"}  # what Triton specializes on
    sig = {p.name: "constexpr" if p.is_constexpr else ptrs.get(p.name, "i32") for p in fn.params}
    attrs = {(i,): [["tt.divisibility", 16]] for i, p in enumerate(fn.params) if p.name in div16}
    print("SASS instructions per bf16 element, per loop of the kernel (apply path; static counts)")
    for kp in (3328, 8192, 12288, 13824):
        plan = fp8tc.rowwise_plan(kp)
        for name, (fmt, rm, alg) in FORMATS.items():
            rows, nb, single, nw = plan.levels[0][1:]
            consts = dict(HAS_SMOOTH=False, IS_FP8=fmt is E4M3, EMAX=fmt.emax, MAXV=float(fmt.max_value), ROUND=1 if
                          rm == "round" else 0, SCALE_ALG=alg, HEADROOM=6 if fmt is E2M1 else 0, WRITE_MX=False,
                          ROWS=rows, NB=nb, SINGLE=single)
            k = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts, attrs=attrs),
                               target=GPUTarget("cuda", 90, 32), options={"num_warps": nw, "enable_fp_fusion": False})
            with tempfile.TemporaryDirectory() as tmp:
                path = os.path.join(tmp, "k.cubin")
                with open(path, "wb") as f:
                    f.write(k.asm["cubin"])
                dump = subprocess.run([os.path.join(bindir, "cuobjdump"), "-sass", path], capture_output=True,
                                      text=True).stdout
            ins = [(int(a, 16), t.strip()) for a, t in re.findall(r"/\*([0-9a-f]{4,})\*/\s+(.*?);", dump)]
            per = []
            for addr, txt in ins:
                mm = re.search(r"BRA\s.*?0x([0-9a-f]+)", txt)
                if mm and int(mm.group(1), 16) < addr:  # a backward branch closes a loop body
                    body = [t for a, t in ins if int(mm.group(1), 16) <= a <= addr]
                    el = sum({"128": 8, "64": 4}.get(w, 2) for w in re.findall(r"LDG\.E(?:\.(\d+))?", " ".join(body)))
                    per.append(f"{len(body) / max(el, 1):.1f}")
            whole = len(ins) / (rows * nb * 32 / (32 * nw))
            print(f"Kp {kp:>6} {name}: plan {plan.levels[0][1:]}: loops {per or '-'} instr/element; whole kernel / "
                  f"elements per thread {whole:.1f}; FTZ instructions {sum('FTZ' in t for _, t in ins)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default=DEFAULT_SHAPES, help="MxK list (default: %(default)s)")
    ap.add_argument("--formats", default="e4m3,e2m1")
    ap.add_argument("--variants", action="store_true", help="also time neighbouring plans (more compiles)")
    ap.add_argument("--rep-ms", type=int, default=50)
    ap.add_argument("--sass", action="store_true", help="static SASS counts (no GPU needed)")
    args = ap.parse_args()
    if args.sass:
        sass()
    elif not torch.cuda.is_available():
        sys.exit("no CUDA GPU: use --sass for the static instruction counts")
    else:
        bench(args)


if __name__ == "__main__":
    main()
