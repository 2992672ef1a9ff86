"""The opt-in activation quantizer "v2" of cuda.mx_fp8tc (``jit/fp8tc_quant2.py``, issue 14): its time per shape
on the GPU, its static SASS per element, and a SASS check for the ptxas miscompile that made its bytes wrong on
the H200 (2026-12-02), the last two on any machine (the ptxas / cuobjdump Triton ships; no GPU).

GPU (SM90), bf16 activations, the apply path (E4M3 bytes + row scales, no MX bytes):

    PYTHONPATH=. python tools/fp8tc_quant_probe.py [--shapes 4096x12288,16384x13824] [--variants]

prints per (M, K, format) the plan ``fp8tc_quant2.rowwise_plan`` picks, its time (``triton.testing.do_bench``
median, us) and the effective bandwidth (bf16 read once + E4M3 written), beside the default quantizer
(``fp8tc.mx_quant_rowwise``); ``--variants`` also times neighbouring plans after checking that each writes the
same bytes as the rule's plan.

Any machine:

    PYTHONPATH=. python tools/fp8tc_quant_probe.py --sass        # SASS instructions per bf16 element
    PYTHONPATH=. python tools/fp8tc_quant_probe.py --check-sass  # exit 1 when a compiled plan has the hazard

``--check-sass`` compiles the kernel for sm_90a (the launch options the backend uses) for every plan of a set of
padded K, bf16 / fp16 / fp32, E4M3 / E2M1, with and without the MX bytes, and lists the instructions that
``sass_hazards`` flags: a general register read as data that is R1 (the stack pointer, never data in these
kernels), or a loop whose body reads a register before writing it and then overwrites it with a copy of another
register (a value carried from one chunk to the next; the kernel carries only the row |max| and counters).
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
CHECK_KPS = (512, 3328, 4096, 8192, 12288, 13824)
LAUNCH = {"enable_fp_fusion": False}  # ops._launch_opts() on the GPU


# ---------------------------------------------------------------------------------------------
# compile for sm_90a without a GPU; read the SASS
# ---------------------------------------------------------------------------------------------
def _bindir() -> str:
    import triton

    return os.path.join(os.path.dirname(triton.backends.nvidia.__file__), "bin")


def can_compile() -> str:
    """'' when this machine can compile for sm_90a and disassemble (Triton's bundled ptxas and cuobjdump), else why
    not."""
    try:
        d = _bindir()
    except Exception as e:  # noqa: BLE001
        return f"triton's nvidia backend is not importable: {type(e).__name__}: {e}"
    for tool in ("ptxas", "cuobjdump"):
        if not os.access(os.path.join(d, tool), os.X_OK):
            return f"no {tool} in {d}"
    return ""


def compile_rowwise(module, x_dtype: str, fmt, round_mode: str, scale_alg: int, level: tuple, *, write_mx: bool,
                    has_smooth: bool = False, k_aligned: bool = False):
    """The v2 quantizer kernel of ``module`` (``fp8tc_quant2``) compiled for sm_90a as the backend launches it:
    ``level`` = (rows, nb, single, num_warps) from its plan, activations ``x_dtype`` ("bf16", "fp16", "fp32"),
    K and the x row stride divisible by 16 or not (``k_aligned``; Kp, the output strides and the pointers are).
    Returns Triton's CompiledKernel (``.asm``: ttgir, ptx, cubin)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = module.mx_quant_rowwise_kernel
    rows, nb, single, nw = level
    ptrs = {"x_ptr": "*" + x_dtype, "sm_ptr": "*fp32", "q_ptr": "*u8", "sc_ptr": "*u8", "xr_ptr": "*u8",
            "sx_ptr": "*fp32"}
    div16 = set(ptrs) | {"KP", "stride_qm", "stride_sm", "stride_rm"} | ({"K", "stride_xm"} if k_aligned else set())
    sig = {p.name: "constexpr" if p.is_constexpr else ptrs.get(p.name, "i32") for p in fn.params}
    attrs = {(i,): [["tt.divisibility", 16]] for i, p in enumerate(fn.params) if p.name in div16}
    consts = dict(HAS_SMOOTH=has_smooth, IS_FP8=fmt is E4M3, EMAX=fmt.emax, MAXV=float(fmt.max_value),
                  ROUND=module._ROUND[round_mode], SCALE_ALG=scale_alg, HEADROOM=6 if fmt is E2M1 else 0,
                  WRITE_MX=write_mx, ROWS=rows, NB=nb, SINGLE=single)
    consts = {k: v for k, v in consts.items() if k in sig}
    return triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts, attrs=attrs),
                          target=GPUTarget("cuda", 90, 32), options={"num_warps": nw, **LAUNCH})


def sass_of(compiled) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.cubin")
        with open(path, "wb") as f:
            f.write(compiled.asm["cubin"])
        out = subprocess.run([os.path.join(_bindir(), "cuobjdump"), "-sass", path], capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"cuobjdump failed: {out.stderr.strip()}")
    return out.stdout


def parse_sass(sass: str) -> list:
    """[(address, instruction text without the trailing ';')]."""
    return [(int(a, 16), t.strip()) for a, t in re.findall(r"/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;", sass)]


def _split(txt: str):
    t = re.sub(r"^@!?U?P\w+\s+", "", txt)  # predicate guard
    parts = t.split(None, 1)
    return parts[0], ([o.strip() for o in parts[1].split(",")] if len(parts) > 1 else [])


_PRED = re.compile(r"!?U?P(T|\d+)$")


def _width(op: str) -> int:
    """Registers a data operand of ``op`` spans (vector loads / stores, wide results)."""
    if ".128" in op:
        return 4
    if ".64" in op or ".WIDE" in op or (op.startswith("CS2R") and ".32" not in op):
        return 2
    return 1


def _regs(operand: str, width: int = 1) -> list:
    """General registers an operand names (RZ excluded); ``[R4.64]`` and wide data operands span several."""
    out = []
    for m in re.finditer(r"(?<![\w.])R(\d+)((?:\.\w+)*)", operand):
        n = int(m.group(1))
        w = 2 if ".64" in m.group(2) else width
        out += [str(n + i) for i in range(w)]
    return out


_NO_DEST = ("ST", "BRA", "BAR", "EXIT", "RET", "ISETP", "FSETP", "DSETP", "PLOP3", "RED", "ATOM", "WARPSYNC", "NOP")


def _dst_srcs(op: str, ops: list):
    """(destination general registers, [(source operand, width)]) of one instruction."""
    if op.startswith(_NO_DEST):
        w = _width(op) if op.startswith("ST") else 1
        return [], [(o, w if k == len(ops) - 1 else 1) for k, o in enumerate(ops)]
    k = 0
    while k < len(ops) and _PRED.match(ops[k]):  # leading predicate results (SHFL PT, Rd / LOP3 P3, Rd)
        k += 1
    if k == len(ops):
        return [], []
    dst = _regs(ops[k], _width(op) if not op.startswith(("LDS", "LDG", "LDC", "LD.")) else _width(op))
    k += 1
    while k < len(ops) and _PRED.match(ops[k]):  # carry-out predicates (IADD3 Rd, P6, ...)
        k += 1
    return dst, [(o, 1) for o in ops[k:]]


def sass_hazards(sass: str) -> list:
    """Instructions of the ptxas miscompile seen on the H200 (2026-12-02), as (address, instruction, why):

    * a general register R1 read as data (R1 holds the stack pointer, loaded by the kernel's first instruction;
      only stack-frame arithmetic ``VIADD R1, R1, ..`` and ``[R1]`` addresses of spills use it), e.g.
      ``F2FP.F16.E4M3.UNPACK_B R13, R1`` in a one-pass plan;
    * in a loop body (a backward branch and its target), a register read before any write in the body whose last
      write in the body copies another register (``PRMT`` / ``MOV`` / ``LOP3``), e.g. ``PRMT R18, R4, 0x7610, R18``
      at the end of pass 2 feeding ``F2FP.F16.E4M3.UNPACK_B R18, R18`` at its top: a value of chunk i used by
      chunk i+1.  ``PRMT Rd, RZ, 0x7610, Rd`` (keep Rd's upper bytes, the idiom before a predicated 16-bit load)
      does not count as a read of Rd.
    Empty for the kernels as fixed (checked by tests/backends/cuda/test_fp8tc_cpu.py)."""
    ins = parse_sass(sass)
    bad = []
    for a, t in ins[1:]:
        op, ops = _split(t)
        dst, srcs = _dst_srcs(op, ops)
        if "1" not in dst and any(re.fullmatch(r"-?\|?R1(\.(?!64)\w+)*\|?", s) for s, _ in srcs):
            bad.append((a, t, "reads R1 (the stack pointer) as data"))
    for a, t in ins:
        m = re.search(r"BRA\s+(?:`\()?0x([0-9a-f]+)", t)
        if not m or int(m.group(1), 16) >= a:
            continue
        body = [(b, u) for b, u in ins if int(m.group(1), 16) <= b <= a]
        first_read, last_write = {}, {}
        for j, (_, u) in enumerate(body):
            op, ops = _split(u)
            dst, srcs = _dst_srcs(op, ops)
            keep_self = op.startswith("PRMT") and len(ops) == 4 and ops[3] == ops[0]
            for k, (s, w) in enumerate(srcs):
                if keep_self and k == len(srcs) - 1:
                    continue
                for r in _regs(s, w):
                    if r not in last_write:
                        first_read.setdefault(r, j)
            for r in dst:
                last_write[r] = (j, op, ops)
        for r, (j, op, ops) in last_write.items():
            if r in first_read and j > first_read[r] and op.startswith(("PRMT", "MOV", "IMAD.MOV", "LOP3")):
                if any(x != r for s in ops[1:] for x in _regs(s)):
                    bad.append((body[j][0], body[j][1], f"loop-carried copy into R{r}, read at the loop's top by "
                                                        f"{body[first_read[r]][1]!r}"))
    return bad


def check_sass(module=None, kps=CHECK_KPS, dtypes=("bf16", "fp16", "fp32"), formats=("e4m3", "e2m1"),
               write_mx=(True, False), k_aligned=(False, True), smooth=(False,), verbose=False) -> list:
    """Compile every distinct plan level of ``rowwise_plan(kp)`` for each combination; return
    [(what, hazards)] for those with hazards."""
    if module is None:
        from omni_npu_quant.kernels.cuda.jit import fp8tc_quant2 as module
    out = []
    seen = set()
    for kp in kps:
        levels = sorted({lv[1:] for lv in module.rowwise_plan(kp).levels})
        for level in levels:
            for dt in dtypes:
                for name in formats:
                    fmt, rm, alg = FORMATS[name]
                    for wm in write_mx:
                        for ka in k_aligned:
                            for hs in smooth:
                                key = (level, dt, name, wm, ka, hs)
                                if key in seen:
                                    continue
                                seen.add(key)
                                hz = sass_hazards(sass_of(compile_rowwise(module, dt, fmt, rm, alg, level,
                                                                          write_mx=wm, has_smooth=hs, k_aligned=ka)))
                                what = dict(kp=kp, level=level, x=dt, fmt=name, write_mx=wm, k_aligned=ka, smooth=hs)
                                if verbose:
                                    print(f"{what}: {len(hz)} hazard(s)", flush=True)
                                if hz:
                                    out.append((what, hz))
    return out


# ---------------------------------------------------------------------------------------------
# GPU timing
# ---------------------------------------------------------------------------------------------
def _variants(mod, plan, m):
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
    return [mod.RowwisePlan(kp, ((0,) + c,)) for c in out]


def bench(args) -> None:
    from triton.testing import do_bench

    from omni_npu_quant.kernels.cuda.jit import fp8tc, fp8tc_quant2, ops

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
            plan = fp8tc_quant2.rowwise_plan(kp, n_sm)

            def run(p):
                return fp8tc_quant2.mx_quant_rowwise(x, None, fmt, rm, alg, kp, write_mx=False,
                                                     launch_opts=ops._launch_opts(), plan=p)

            want = run(plan)
            old = fp8tc.mx_quant_rowwise(x, None, fmt, rm, alg, kp, write_mx=False, launch_opts=ops._launch_opts())
            same_old = torch.equal(old[2], want[2]) and torch.equal(old[3].view(torch.int32), want[3].view(torch.int32))
            t0 = do_bench(lambda: fp8tc.mx_quant_rowwise(x, None, fmt, rm, alg, kp, write_mx=False,
                                                         launch_opts=ops._launch_opts()), warmup=10, rep=args.rep_ms)
            print(f"{m:>6} {k:>6} {name:>5} {'default quantizer':>34} {t0 * 1e3:>8.1f} {gbytes / (t0 * 1e-3):>7.0f}  "
                  f"fp8tc.mx_quant_rowwise")
            t = do_bench(lambda: run(plan), warmup=10, rep=args.rep_ms)
            print(f"{m:>6} {k:>6} {name:>5} {str(plan.pick(m)):>34} {t * 1e3:>8.1f} {gbytes / (t * 1e-3):>7.0f}  "
                  f"v2 rule{'' if same_old else ', BYTES DIFFER from the default quantizer'}")
            if args.variants:
                for v in _variants(fp8tc_quant2, plan, m):
                    got = run(v)
                    same = torch.equal(got[2], want[2]) and torch.equal(got[3].view(torch.int32),
                                                                        want[3].view(torch.int32))
                    tv = do_bench(lambda: run(v), warmup=10, rep=args.rep_ms)
                    print(f"{m:>6} {k:>6} {name:>5} {str(v.pick(m)):>34} {tv * 1e3:>8.1f} {gbytes / (tv * 1e-3):>7.0f}  "
                          f"variant{'' if same else ' BYTES DIFFER'}")


# ---------------------------------------------------------------------------------------------
# static counts
# ---------------------------------------------------------------------------------------------
def sass_counts() -> None:
    from omni_npu_quant.kernels.cuda.jit import fp8tc_quant2 as mod

    print("v2 quantizer: SASS instructions per bf16 element, per loop (apply path and with MX bytes; static counts)")
    for kp in (3328, 8192, 12288, 13824):
        plan = mod.rowwise_plan(kp)
        level = plan.levels[0][1:]
        rows, nb, single, nw = level
        for name, (fmt, rm, alg) in FORMATS.items():
            for wm in (False, True):
                ins = parse_sass(sass_of(compile_rowwise(mod, "bf16", fmt, rm, alg, level, write_mx=wm)))
                per = []
                for addr, txt in ins:
                    mm = re.search(r"BRA\s.*?0x([0-9a-f]+)", txt)
                    if mm and int(mm.group(1), 16) < addr:  # a backward branch closes a loop body
                        body = [t for a, t in ins if int(mm.group(1), 16) <= a <= addr]
                        el = sum({"128": 8, "64": 4}.get(w, 2) for w in re.findall(r"LDG\.E(?:\.(\d+))?", " ".join(body)))
                        per.append(f"{len(body) / max(el, 1):.1f}")
                whole = len(ins) / (rows * nb * 32 / (32 * nw))
                print(f"Kp {kp:>6} {name} write_mx={wm!s:5}: plan {level}: loops {per or '-'} instr/element; whole "
                      f"kernel / elements per thread {whole:.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default=DEFAULT_SHAPES, help="MxK list (default: %(default)s)")
    ap.add_argument("--formats", default="e4m3,e2m1")
    ap.add_argument("--variants", action="store_true", help="also time neighbouring plans (more compiles)")
    ap.add_argument("--rep-ms", type=int, default=50)
    ap.add_argument("--sass", action="store_true", help="static SASS counts (no GPU needed)")
    ap.add_argument("--check-sass", action="store_true", help="the miscompile check over plans (no GPU needed)")
    ap.add_argument("--kps", default=",".join(map(str, CHECK_KPS)), help="padded K for --check-sass")
    args = ap.parse_args()
    if args.sass or args.check_sass:
        why = can_compile()
        if why:
            sys.exit(f"cannot compile for sm_90a here: {why}")
        if args.sass:
            sass_counts()
        if args.check_sass:
            bad = check_sass(kps=tuple(int(v) for v in args.kps.split(",")), verbose=True)
            for what, hz in bad:
                print(f"HAZARD {what}:")
                for a, t, why in hz:
                    print(f"    /*{a:04x}*/ {t}   <- {why}")
            print(f"{len(bad)} compiled variant(s) with hazards")
            sys.exit(1 if bad else 0)
    elif not torch.cuda.is_available():
        sys.exit("no CUDA GPU: use --sass / --check-sass for the static checks")
    else:
        bench(args)


if __name__ == "__main__":
    main()
