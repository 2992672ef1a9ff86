"""Benchmark each scheme's full linear on the CUDA backend (activation quantization included) in one run
against bf16 ``F.linear``, fp8 rowwise ``torch._scaled_mm``, ``torch._int_mm`` and (when importable)
gemlite's A8W8_int8_dynamic / A16W8_MXFP / A16W4_MXFP / A8W4_MXFP_dynamic, plus one DiT block at real width.

Every linear case runs over a stack of L distinct layers whose *smallest* stored weight (4.25-bit MX) still
exceeds 3x the H200's 60 MB L2 (so no weight stays L2-resident): ``eager`` times one Python pass over the
stack, ``graph`` the replay of a CUDA graph that captured the same pass; both are reported per layer call
(``triton.testing.do_bench`` medians, us).  ``host_us`` = eager - graph.  ``vs_bf16`` = bf16 F.linear time /
case time, same mode, same run.

Correctness before timing: each of our cases is run once on the timed input and compared with the exact
reference kernel of its scheme (``CudaBackend(kernel="reference.*")``, same tensors, same device) on the
first ``CHECK_ROWS`` rows (every kernel is row-independent): ``rel_err_ref`` = ||y - y_ref|| / ||y_ref||,
printed, and ``check`` = FAIL above ``--check-tol`` (the case is still timed, so that the table shows it).
``rel_vs_bf16`` (every quantized case, gemlite included) is the quantization error against bf16 F.linear.

Work is split into units (one per N x K shape, one for the DiT block) so that a session runs it in parts
that each fit a 10-minute command: ``--part 1/2`` runs the first of two cost-balanced groups of units
(``--plan`` prints the groups and the case counts without a GPU).  ``--budget-s`` is a guard: once the
elapsed time passes it, the remaining cases are recorded as skipped instead of run; the JSON is rewritten
(atomically) after every case, so a kill at the limit loses at most the case in flight.  ``--merge A B``
joins part JSONs into one (``table()`` prints it).

    PYTHONPATH=. python tools/bench_linear.py --part 1/2 --out bench1.json --budget-s 500
    PYTHONPATH=. python tools/bench_linear.py --merge bench1.json bench2.json --out bench.json
    PYTHONPATH=. python tools/bench_linear.py --plan --part 1/2
"""
from __future__ import annotations

import argparse
import copy
import datetime
import json
import math
import os
import sys
import time

import torch

SHAPES = "8192x8192,12288x3072,3072x12288,13824x5120,5120x13824"  # N x K
MS = "1,16,256,4096,16384"
L2_BYTES = 60 << 20
STACK_BYTES = 3 * L2_BYTES + (16 << 20)  # the smallest stored stack (4.25 bits / weight) exceeds 3x L2
CHECK_ROWS = 256
GEMLITE = ("A8W8_int8_dynamic", "A16W8_MXFP", "A16W4_MXFP", "A8W4_MXFP_dynamic")
# our cases: label -> (scheme, pinned kernel or None, backend options, largest M timed).  The default selection
# of each scheme, plus the alternatives worth comparing: the exact E1 MX path (cuda.mx) pinned, the opt-in
# Triton FP8 GEMM of cuda.mx_fp8tc at decode (fp8tc_gemm="auto"), and the CUTLASS entry when it imports.
CASES = {
    "w8a8_dynamic": ("w8a8_dynamic", None, {}, None),
    "w8a8_dynamic[cuda.cutlass_w8a8]": ("w8a8_dynamic", "cuda.cutlass_w8a8", {"cutlass": "on"}, None),
    "mxfp8": ("mxfp8", None, {}, None),
    "mxfp8[cuda.mx]": ("mxfp8", "cuda.mx", {}, None),
    "mxfp4": ("mxfp4", None, {}, None),
    "mxfp4[cuda.mx]": ("mxfp4", "cuda.mx", {}, None),
    "mxfp4[fp8tc auto]": ("mxfp4", "cuda.mx_fp8tc", {"fp8tc_gemm": "auto"}, 256),
    "w4a8_mxfp": ("w4a8_mxfp", None, {}, None),
    "w4a8_mxfp[cuda.mx]": ("w4a8_mxfp", "cuda.mx", {}, None),
    "w4a8_mxfp[fp8tc auto]": ("w4a8_mxfp", "cuda.mx_fp8tc", {"fp8tc_gemm": "auto"}, 256),
    "mxfp4_dual": ("mxfp4_dual", None, {}, None),
    "w4a16": ("w4a16", None, {}, None),
    # the opt-in split-K small-M kernels of jit/gemv.py (backend option gemv=1), M <= 16 only
    "w8a8_dynamic[gemv]": ("w8a8_dynamic", "cuda.int8_dynamic", {"gemv": "1"}, 16),
    "mxfp8[gemv]": ("mxfp8", "cuda.mx", {"gemv": "1"}, 16),
    "mxfp4[gemv]": ("mxfp4", "cuda.mx", {"gemv": "1"}, 16),
    "w4a8_mxfp[gemv]": ("w4a8_mxfp", "cuda.mx", {"gemv": "1"}, 16),
}
# SVD low-rank + residual (issue 16), opt-in (--cases ...,mxfp4_svd,w8a8_dynamic_svd): rank 32 on random weights, the
# branch kernel of cuda.svd beside the residual's own kernel; the scheme options each case's scheme is built with
OPT_IN = {"mxfp4_svd": ("mxfp4_svd", None, {}, None), "w8a8_dynamic_svd": ("w8a8_dynamic_svd", None, {}, None),
          # cuda.svd's opt-in fused branch (the hidden recomputed per output tile; docs/svd.md section 3)
          "mxfp4_svd[fused]": ("mxfp4_svd", None, {"svd_branch": "fused"}, None),
          "w8a8_dynamic_svd[fused]": ("w8a8_dynamic_svd", None, {"svd_branch": "fused"}, None),
          # cuda.mx_fp8tc_dual: dual-scale MXFP4 on FP8 tensor cores (opt-in, interpreter-tested only)
          "mxfp4_dual[fp8tc]": ("mxfp4_dual", None, {"mx_fp8tc_dual": "on"}, None)}
SCHEME_OPTS = {"mxfp4_svd": {"rank": 32}, "w8a8_dynamic_svd": {"rank": 32}}
# w8a16 is left out by default: no CUDA kernel implements it, so it would time the exact reference fallback
# (add it with --cases ...,w8a16 to see what that costs).
DIT_SCHEMES = ("w8a8_dynamic", "mxfp8", "mxfp4", "w4a8_mxfp", "mxfp4_dual", "w4a16")
DIT = {"dim": 3072, "heads": 24, "head_dim": 128, "mlp": 12288, "img_tokens": 4096, "txt_tokens": 512}
DIT_FLOAT = ["norm1.linear", "norm1_context.linear"]  # adaLN modulation stays float (as models.defaults keeps it)


# ---------------------------------------------------------------- plan: units and parts
def _units(shapes, ms, dit=True):
    us = [{"unit": f"{n}x{k}", "n": n, "k": k, "ms": list(ms)} for n, k in shapes]
    if dit:
        us.append({"unit": "dit", "n": DIT["dim"], "k": DIT["mlp"], "ms": [DIT["img_tokens"] + DIT["txt_tokens"]]})
    return us


def _unit_cost(u, n_cases):
    """Rough seconds, Triton compiles not included: per (M, case) 0.3 s fixed (two do_bench calls of
    ``rep_ms``, a graph capture, the reference check) plus ~20 passes over the L layers (do_bench's estimate,
    warmup and reps, eager and graph) at an average 2.5x bf16 time (bf16 ~ 250 TFLOP/s; the exact MX paths and
    gemlite are 3-6x slower at large M); per case 0.1 s per layer to prepare.  The DiT unit: per scheme two
    quantized copies of the block, a reference forward and the timing (~10 s)."""
    if u["unit"] == "dit":
        return 10.0 * len(DIT_SCHEMES) + 10.0
    layers = _layers(u["n"], u["k"])
    c = 0.1 * layers * n_cases
    for m in u["ms"]:
        c += n_cases * (0.3 + 20 * layers * 2.0 * m * u["n"] * u["k"] / 250e12 * 2.5)
    return c


def split_parts(units, n_parts, n_cases):
    """Cost-balanced groups (longest unit first onto the lightest group), each group in the given order."""
    groups = [[] for _ in range(n_parts)]
    load = [0.0] * n_parts
    for i in sorted(range(len(units)), key=lambda i: -_unit_cost(units[i], n_cases)):
        j = min(range(n_parts), key=lambda j: load[j])
        groups[j].append(i)
        load[j] += _unit_cost(units[i], n_cases)
    return [[units[i] for i in sorted(g)] for g in groups], load


def _layers(n, k):
    return max(3, min(16, math.ceil(STACK_BYTES / (n * k * 0.53))))


# ---------------------------------------------------------------- timing helpers
DEV = "cuda"  # "cpu" only for --dry-cpu (the whole pipeline on tiny shapes in Triton's interpreter: no timings)


def _sync():
    if DEV == "cuda":
        torch.cuda.synchronize()


def _bench(fn, rep_ms):
    if DEV != "cuda":  # dry run: one timed call, the numbers mean nothing
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e6
    from triton.testing import do_bench

    return do_bench(fn, warmup=5, rep=rep_ms, return_mode="median") * 1e3  # us


def _time_stack(calls, x, rep_ms, graph=True):
    """-> (eager us per call, graph us per call or nan, graph error or '')."""
    def run():
        for c in calls:
            c(x)

    run()
    _sync()
    t_e = _bench(run, rep_ms) / len(calls)
    t_g, err = float("nan"), ""
    if graph and DEV == "cuda":
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
            err = f"graph capture failed: {e!r}"[:200]
            print(err, file=sys.stderr)
    return t_e, t_g, err


def _rel(y, ref):
    y, ref = y.float(), ref.float()
    if not torch.isfinite(y).all():
        return float("inf")
    return float((y - ref).norm() / ref.norm().clamp_min(1e-30))


def _ref_kernel(scheme_name):
    """The exact reference kernel implementing a scheme (what the check compares against)."""
    from omni_npu_quant.kernels.registry import kernel_classes

    for c in kernel_classes():
        if c.device_kind == "cpu" and scheme_name in c.schemes:
            return c.name
    raise ValueError(f"no reference kernel implements {scheme_name}")


def _gemlite_layers(kind, ws, biases, dtype):
    """L distinct gemlite layers: the first converted from (ws[0], biases[0]), the others deep copies of it
    (distinct memory, as our stacks; converting every layer would cost seconds per shape)."""
    from gemlite import helper as H

    def lin():
        m = torch.nn.Linear(ws[0].shape[1], ws[0].shape[0], bias=True, device=ws[0].device, dtype=dtype)
        with torch.no_grad():
            m.weight.copy_(ws[0])
            m.bias.copy_(biases[0])
        return m

    def proc():
        if kind == "A8W4_MXFP_dynamic":
            return H.A8W4_MXFP_dynamic(device="cuda:0", dtype=dtype, post_scale=True)
        return getattr(H, kind)(device="cuda:0", dtype=dtype)

    first = proc().from_linear(lin())
    out = [first]
    for _ in ws[1:]:
        try:
            out.append(copy.deepcopy(first))
        except Exception:  # noqa: BLE001 - not copyable: convert again
            out.append(proc().from_linear(lin()))
    return out


def _gemlite(meta):
    try:
        import gemlite

        gemlite.set_autotune(False)
        cfg = os.path.join(os.path.dirname(gemlite.__file__), "configs", "h100.json")
        if os.path.exists(cfg):
            gemlite.load_config(cfg)
        meta["gemlite"] = getattr(gemlite, "__version__", "?") + " (autotune off, its h100 config cache)"
        return gemlite
    except Exception as e:  # noqa: BLE001
        meta["gemlite"] = f"not importable: {e!r}"[:200]
        return None


# ---------------------------------------------------------------- the run
class Run:
    def __init__(self, out_path, budget_s, rep_ms, check_tol, graph_max_m):
        self.out_path, self.budget_s, self.rep_ms = out_path, budget_s, rep_ms
        self.check_tol, self.graph_max_m = check_tol, graph_max_m
        self.t0 = time.monotonic()
        self.rows: list[dict] = []
        self.meta: dict = {}

    def elapsed(self):
        return time.monotonic() - self.t0

    def over(self, what):
        if self.budget_s and self.elapsed() > self.budget_s:
            self.meta.setdefault("skipped_budget", []).append(what)
            return True
        return False

    def add(self, row):
        self.rows.append(row)
        chk = row.get("check", "")
        print(f"[{self.elapsed():6.0f}s] {row.get('unit')} m={row['m']:<5} {row['what']:<34} "
              f"eager {row['eager_us']:9.1f} graph {row['graph_us']:9.1f}"
              + (f" rel_ref {row['rel_err_ref']:.2e} {chk}" if "rel_err_ref" in row else "")
              + (f" rel_bf16 {row['rel_vs_bf16']:.2e}" if "rel_vs_bf16" in row else ""), file=sys.stderr, flush=True)
        self.dump()

    def dump(self):
        if not self.out_path:
            return
        self.meta["elapsed_s"] = round(self.elapsed(), 1)
        _dump(self.out_path, {"meta": self.meta, "rows": self.rows})


def _our_stack(label, spec, ws0, b0, L, n, k):
    """-> (calls over L prepared copies, reference PreparedLinear + backend, kernel name) or a refusal string."""
    from omni_npu_quant.backends import CudaBackend
    from omni_npu_quant.schemes.registry import get_scheme

    name, kern, opts, _ = spec
    sch = get_scheme(name, **SCHEME_OPTS.get(name, {}))
    bad = sch.shape_problem(n, k)
    if bad:
        return bad
    try:
        be = CudaBackend(kernel=kern, **opts)
        t = sch.quantize_weight(ws0.float(), b0)
        ps = [be.prepare(sch, {kk: v.clone() for kk, v in t.items()}, torch.bfloat16, where=label) for _ in range(L)]
        ref_be = CudaBackend(kernel=_ref_kernel(name))
        ref_p = ref_be.prepare(sch, {kk: v.clone() for kk, v in t.items()}, torch.bfloat16, where=label + " ref")
    except Exception as e:  # noqa: BLE001 - a kernel that cannot run here: say why, go on
        return f"{type(e).__name__}: {e}"[:400]
    calls = [lambda x, p=p, be=be: be.apply(p, x) for p in ps]
    return calls, (ref_be, ref_p), ps[0].kernel_name


def run_shape(R: Run, u, case_names, gl):
    dev = torch.device(DEV)
    n, k = u["n"], u["k"]
    L = _layers(n, k)
    g = torch.Generator(device=dev).manual_seed(0)
    ws = [torch.randn(n, k, device=dev, dtype=torch.bfloat16, generator=g) * 0.02 for _ in range(L)]
    bs = [torch.randn(n, device=dev, generator=g) for _ in range(L)]
    w_i8 = [torch.randint(-127, 128, (n, k), device=dev, dtype=torch.int8, generator=g) for _ in range(L)]
    w_f8 = [(torch.randn(n, k, device=dev, generator=g) * 50).clamp(-448, 448).to(torch.float8_e4m3fn)
            for _ in range(L)]
    sb = torch.ones(1, n, device=dev)
    ours, refs = {}, {}
    for label in case_names:
        if R.over(f"{u['unit']} prepare {label}"):
            continue
        r = _our_stack(label, CASES[label], ws[0], bs[0], L, n, k)
        if isinstance(r, str):
            R.meta.setdefault("unavailable", {})[f"{u['unit']} {label}"] = r
            print(f"{u['unit']} {label}: not run: {r}", file=sys.stderr)
            continue
        ours[label], refs[label], kname = r
        R.meta.setdefault("kernels", {})[label] = kname
    gls = {}
    if gl is not None:
        for kind in GEMLITE:
            if R.over(f"{u['unit']} prepare gemlite {kind}"):
                continue
            try:
                layers = _gemlite_layers(kind, ws, bs, torch.bfloat16)
                gls[f"gemlite {kind}"] = [lambda x, l=l: l(x) for l in layers]
            except Exception as e:  # noqa: BLE001
                R.meta.setdefault("unavailable", {})[f"{u['unit']} gemlite {kind}"] = f"{e!r}"[:300]
    for m in u["ms"]:
        x = torch.randn(m, k, device=dev, dtype=torch.bfloat16, generator=g)
        flops = 2.0 * m * n * k
        base = {"unit": u["unit"], "n": n, "k": k, "m": m, "layers": L}
        y_bf16 = torch.nn.functional.linear(x[:CHECK_ROWS], ws[0], bs[0].to(torch.bfloat16))
        cases = {"bf16 F.linear": [lambda x, w=w, b=b.to(torch.bfloat16): torch.nn.functional.linear(x, w, b)
                                   for w, b in zip(ws, bs)]}
        xi8 = torch.randint(-127, 128, (max(m, 17), k), device=dev, dtype=torch.int8, generator=g)
        cases["raw torch._int_mm" + (" (M'=17)" if m <= 16 else "")] = [lambda x, w=w: torch._int_mm(xi8, w.t())
                                                                        for w in w_i8]
        xf8 = torch.randn(m, k, device=dev, generator=g).to(torch.float8_e4m3fn)
        sa = torch.ones(m, 1, device=dev)
        cases["raw fp8 rowwise _scaled_mm"] = [lambda x, w=w: torch._scaled_mm(xf8, w.t(), sa, sb,
                                                                               out_dtype=torch.bfloat16) for w in w_f8]
        for label, calls in ours.items():
            mx = CASES[label][3]
            if mx is None or m <= mx:
                cases[label] = calls
        cases.update(gls)
        t_ref = None
        for what, calls in cases.items():
            if R.over(f"{u['unit']} m={m} {what}"):
                continue
            tc = time.monotonic()
            row = dict(base, what=what)
            try:
                if what in refs or what in gls:
                    y = calls[0](x)[:CHECK_ROWS]
                    row["rel_vs_bf16"] = _rel(y, y_bf16)
                if what in refs:
                    ref_be, ref_p = refs[what]
                    row["kernel"] = R.meta["kernels"][what]
                    row["rel_err_ref"] = _rel(y, ref_be.apply(ref_p, x[:CHECK_ROWS]))
                    row["check"] = "ok" if row["rel_err_ref"] <= R.check_tol else "FAIL"
                    del y
                te, tg, err = _time_stack(calls, x, R.rep_ms,
                                          graph=m <= R.graph_max_m or what == "bf16 F.linear")
                if err:
                    row["error"] = err
            except Exception as e:  # noqa: BLE001
                print(f"{what} m={m} n={n} k={k} failed: {e!r}"[:300], file=sys.stderr)
                te = tg = float("nan")
                row["error"] = f"{e!r}"[:300]
            if t_ref is None:
                t_ref = (te, tg)
            row.update(eager_us=te, graph_us=tg, host_us=te - tg, vs_bf16_eager=t_ref[0] / te,
                       vs_bf16_graph=t_ref[1] / tg, tflops_eager=flops / te / 1e6, case_s=round(time.monotonic() - tc, 2))
            R.add(row)
        del x, xi8, xf8, cases
    del ours, refs, gls, ws, w_i8, w_f8
    if DEV == "cuda":
        torch.cuda.empty_cache()


# ---------------------------------------------------------------- DiT block
class _PlainDoubleBlock(torch.nn.Module):
    """A FLUX-like double-stream block in plain torch (used when diffusers does not import): per stream an
    adaLN modulation (6 x dim), LayerNorm, q/k/v projections with RMS-normed q/k, one joint SDPA over the
    text + image tokens, an output projection, gated residuals and a GELU(tanh) MLP of width ``mlp``."""

    def __init__(self, dim, heads, head_dim, mlp):
        super().__init__()
        nn = torch.nn
        self.heads, self.head_dim = heads, head_dim

        def stream():
            s = nn.Module()
            s.mod = nn.Linear(dim, 6 * dim)
            s.q, s.k, s.v, s.out = (nn.Linear(dim, dim) for _ in range(4))
            s.nq, s.nk = nn.RMSNorm(head_dim, eps=1e-6), nn.RMSNorm(head_dim, eps=1e-6)
            s.up, s.down = nn.Linear(dim, mlp), nn.Linear(mlp, dim)
            return s

        self.img, self.txt = stream(), stream()
        self.ln = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)

    def _pre(self, s, x, temb):
        sh, sc, ga, sh2, sc2, ga2 = s.mod(torch.nn.functional.silu(temb)).unsqueeze(1).chunk(6, dim=-1)
        h = self.ln(x) * (1 + sc) + sh
        b, t, _ = h.shape
        q, k, v = (f(h).view(b, t, self.heads, self.head_dim).transpose(1, 2) for f in (s.q, s.k, s.v))
        return s.nq(q), s.nk(k), v, (ga, sh2, sc2, ga2)

    def _post(self, s, x, a, mod):
        ga, sh2, sc2, ga2 = mod
        x = x + ga * s.out(a)
        h = self.ln(x) * (1 + sc2) + sh2
        return x + ga2 * s.down(torch.nn.functional.gelu(s.up(h), approximate="tanh"))

    def forward(self, hidden_states, encoder_hidden_states, temb, image_rotary_emb=None):
        qi, ki, vi, mi = self._pre(self.img, hidden_states, temb)
        qt, kt, vt, mt = self._pre(self.txt, encoder_hidden_states, temb)
        a = torch.nn.functional.scaled_dot_product_attention(torch.cat([qt, qi], 2), torch.cat([kt, ki], 2),
                                                             torch.cat([vt, vi], 2))
        b, h, t, d = a.shape
        a = a.transpose(1, 2).reshape(b, t, h * d)
        nt = encoder_hidden_states.shape[1]
        return (self._post(self.txt, encoder_hidden_states, a[:, :nt], mt),
                self._post(self.img, hidden_states, a[:, nt:], mi))


def _dit_block(dev):
    """-> (module, forward(module), description, float-kept layer names)."""
    D = DIT
    g = torch.Generator(device=dev).manual_seed(1)
    hs = torch.randn(1, D["img_tokens"], D["dim"], device=dev, dtype=torch.bfloat16, generator=g)
    enc = torch.randn(1, D["txt_tokens"], D["dim"], device=dev, dtype=torch.bfloat16, generator=g)
    temb = torch.randn(1, D["dim"], device=dev, dtype=torch.bfloat16, generator=g)
    try:
        import diffusers
        from diffusers.models.transformers.transformer_flux import FluxTransformerBlock

        blk = FluxTransformerBlock(dim=D["dim"], num_attention_heads=D["heads"], attention_head_dim=D["head_dim"])
        rot = None
        try:
            from diffusers.models.embeddings import FluxPosEmbed

            side = int(math.isqrt(D["img_tokens"]))
            ids = torch.zeros(D["txt_tokens"] + D["img_tokens"], 3, device=dev)
            ids[D["txt_tokens"]:, 1] = torch.arange(side, device=dev).repeat_interleave(side).float()
            ids[D["txt_tokens"]:, 2] = torch.arange(side, device=dev).repeat(side).float()
            rot = FluxPosEmbed(theta=10000, axes_dim=[16, 56, 56])(ids)
        except Exception as e:  # noqa: BLE001
            print(f"dit: no RoPE ({e!r})", file=sys.stderr)
        desc = (f"diffusers {diffusers.__version__} FluxTransformerBlock (dim {D['dim']}, {D['heads']} heads x "
                f"{D['head_dim']}, MLP {D['mlp']}; {D['img_tokens']} image + {D['txt_tokens']} text tokens; "
                f"{'RoPE' if rot is not None else 'no RoPE'}; its attention processor, SDPA)")
        floats = list(DIT_FLOAT)

        def fwd(b):
            return b(hidden_states=hs, encoder_hidden_states=enc, temb=temb, image_rotary_emb=rot)
    except Exception as e:  # noqa: BLE001
        blk = _PlainDoubleBlock(D["dim"], D["heads"], D["head_dim"], D["mlp"])
        desc = (f"plain-torch FLUX-like double-stream block (diffusers not importable: {e!r}"[:160] + "); no RoPE, "
                f"bf16 SDPA")
        floats = ["img.mod", "txt.mod"]

        def fwd(b):
            return b(hs, enc, temb)
    blk = blk.to(dev, torch.bfloat16).eval()
    return blk, fwd, desc, floats


def run_dit(R: Run, schemes):
    import omni_npu_quant as onq
    from omni_npu_quant.backends import CudaBackend

    dev = torch.device(DEV)
    blk, fwd, desc, floats = _dit_block(dev)
    R.meta["dit"] = desc
    m = DIT["img_tokens"] + DIT["txt_tokens"]
    base = {"unit": "dit", "n": DIT["dim"], "k": DIT["mlp"], "m": m, "layers": 1}
    with torch.no_grad():
        y_bf16 = torch.cat([t.reshape(-1) for t in fwd(blk)])
        t_ref = None
        for label in ("bf16",) + tuple(schemes):
            if R.over(f"dit {label}"):
                continue
            tc = time.monotonic()
            row = dict(base, what=f"DiT block {label}")
            try:
                if label == "bf16":
                    mod = blk
                else:
                    cfg = onq.QuantConfig(scheme=label, ignored_layers=floats)
                    ref = onq.quantize_(copy.deepcopy(blk), cfg, backend=CudaBackend(kernel=_ref_kernel(label)))
                    y_ref = torch.cat([t.reshape(-1) for t in fwd(ref)])
                    del ref
                    mod = onq.quantize_(copy.deepcopy(blk), cfg, backend=CudaBackend())
                    y = torch.cat([t.reshape(-1) for t in fwd(mod)])
                    row["rel_err_ref"] = _rel(y, y_ref)
                    row["check"] = "ok" if row["rel_err_ref"] <= R.check_tol else "FAIL"
                    row["rel_vs_bf16"] = _rel(y, y_bf16)
                    row["kernel"] = ",".join(sorted({q.prepared.kernel_name for q in mod.modules()
                                                     if hasattr(q, "prepared") and hasattr(q.prepared, "kernel_name")}))
                    row["quantized_layers"] = sum(type(q).__name__ == "QuantLinear" for q in mod.modules())
                    del y, y_ref
                te, tg, err = _time_stack([lambda _x, mod=mod: fwd(mod)], None, R.rep_ms, graph=True)
                if err:
                    row["error"] = err
                if mod is not blk:
                    del mod
            except Exception as e:  # noqa: BLE001
                print(f"dit {label} failed: {e!r}"[:300], file=sys.stderr)
                te = tg = float("nan")
                row["error"] = f"{e!r}"[:300]
            if t_ref is None:
                t_ref = (te, tg)
            row.update(eager_us=te, graph_us=tg, host_us=te - tg, vs_bf16_eager=t_ref[0] / te,
                       vs_bf16_graph=t_ref[1] / tg, case_s=round(time.monotonic() - tc, 2))
            R.add(row)
            if DEV == "cuda":
                torch.cuda.empty_cache()


def run(units, case_names, out_path, rep_ms=20, gemlite_ok=True, budget_s=0.0, check_tol=2e-2, graph_max_m=4096,
        part="1/1", dit_schemes=DIT_SCHEMES):
    from omni_npu_quant.kernels.cuda.jit import ops as cuda_ops

    import triton

    R = Run(out_path, budget_s, rep_ms, check_tol, graph_max_m)
    if DEV == "cuda":
        props = torch.cuda.get_device_properties(0)
        name, sms = props.name, props.multi_processor_count
    else:
        name, sms = "cpu (--dry-cpu: Triton interpreter, timings meaningless)", 0
    R.meta.update({
        "device": name, "sms": sms, "torch": torch.__version__,
        "triton": triton.__version__, "cuda": torch.version.cuda,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "part": part,
        "units": [u["unit"] for u in units], "budget_s": budget_s, "rep_ms": rep_ms, "check_rows": CHECK_ROWS,
        "check_tol": check_tol,
        "timer": "triton.testing.do_bench median, us per layer call over a stack of distinct layers",
        "autotune": os.environ.get("OMNI_NPU_QUANT_CUDA_AUTOTUNE", "0"),
        # cuda.mx_fp8tc's activation quantizer (read when each case's backend is made): "v2" (default) or "v1"
        "fp8tc_quant": os.environ.get("OMNI_NPU_QUANT_FP8TC_QUANT") or "v2"})
    gl = _gemlite(R.meta) if gemlite_ok else None
    R.dump()
    if DEV == "cuda":
        a = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
        b = torch.empty_like(a)
        R.meta["copy_GBps_read_plus_write"] = 2 * a.numel() / _bench(lambda: b.copy_(a), 50) / 1e3
        del a, b
    for u in units:
        if u["unit"] == "dit":
            run_dit(R, dit_schemes)
        else:
            run_shape(R, u, case_names, gl)
        print(f"unit {u['unit']} done at {R.elapsed():.0f}s", file=sys.stderr, flush=True)
    R.meta["chosen_configs"] = {str(kk): v for kk, v in cuda_ops.CHOSEN.items()}
    R.meta["finished"] = True
    R.dump()
    return {"meta": R.meta, "rows": R.rows}


def profile_host(path, n=4096, k=4096, calls=300):
    """cProfile of eager M=1 calls (where the host time per call goes), one block per case."""
    import cProfile
    import io
    import pstats

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


# ---------------------------------------------------------------- JSON, merge, table
def _dump(path, res):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(res, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def merge(paths):
    """Part JSONs -> one result: meta of the first part plus every part's own meta under ``parts``; rows in
    part order.  A missing or unreadable part is named in ``meta.missing_parts``."""
    metas, rows, missing = [], [], []
    for p in paths:
        try:
            with open(p) as f:
                r = json.load(f)
        except (OSError, ValueError) as e:
            missing.append(f"{p}: {e}")
            continue
        metas.append(r["meta"])
        rows += r["rows"]
    if not metas:
        raise ValueError(f"merge: no readable part among {list(paths)}: {missing}")
    meta = dict(metas[0])
    for mm in metas[1:]:
        meta.setdefault("kernels", {}).update(mm.get("kernels", {}))
        meta.setdefault("unavailable", {}).update(mm.get("unavailable", {}))
    meta["parts"] = [{k: mm.get(k) for k in ("part", "units", "date", "elapsed_s", "finished", "skipped_budget",
                                              "copy_GBps_read_plus_write", "dit")} for mm in metas]
    meta["units"] = [u for mm in metas for u in mm.get("units", [])]
    meta["skipped_budget"] = [s for mm in metas for s in mm.get("skipped_budget", [])]
    meta["dit"] = next((mm["dit"] for mm in metas if "dit" in mm), None)
    if missing:
        meta["missing_parts"] = missing
    return {"meta": meta, "rows": rows}


def table(res) -> str:
    m = res["meta"]
    lines = [f"# {m['device']} torch {m['torch']} triton {m['triton']} {m['date']} "
             f"copy {m.get('copy_GBps_read_plus_write', 0):.0f} GB/s gemlite {m.get('gemlite', '-')}"]
    if m.get("dit"):
        lines.append(f"# DiT block: {m['dit']}")
    for p in m.get("parts", []):
        lines.append(f"# part {p.get('part')}: units {p.get('units')} {p.get('elapsed_s')} s"
                     f"{'' if p.get('finished') else ' (NOT finished)'}")
    if m.get("skipped_budget"):
        lines.append(f"# skipped by the time budget: {len(m['skipped_budget'])} cases, first: {m['skipped_budget'][0]}")
    if m.get("missing_parts"):
        lines.append(f"# missing parts: {m['missing_parts']}")
    lines.append(f"{'N':>5} {'K':>5} {'M':>5} {'what':<34} {'eager us':>9} {'graph us':>9} {'host':>7} {'xbf16 e':>7} "
                 f"{'xbf16 g':>7} {'rel ref':>8} {'rel bf16':>8}")
    fails = []
    for r in res["rows"]:
        rr = f"{r['rel_err_ref']:>8.1e}" if "rel_err_ref" in r else f"{'':>8}"
        rb = f"{r['rel_vs_bf16']:>8.1e}" if "rel_vs_bf16" in r else f"{'':>8}"
        flag = " FAIL" if r.get("check") == "FAIL" else (" ERR" if r.get("error") else "")
        lines.append(f"{r['n']:>5} {r['k']:>5} {r['m']:>5} {r['what']:<34} {r['eager_us']:>9.1f} {r['graph_us']:>9.1f} "
                     f"{r['host_us']:>7.1f} {r['vs_bf16_eager']:>7.2f} {r['vs_bf16_graph']:>7.2f} {rr} {rb}{flag}")
        if r.get("check") == "FAIL":
            fails.append(f"{r['n']}x{r['k']} m={r['m']} {r['what']} rel {r['rel_err_ref']:.2e}")
    if m.get("unavailable"):
        lines.append("# not run: " + "; ".join(f"{k}: {v}"[:160] for k, v in m["unavailable"].items()))
    lines.append(f"# correctness vs the reference: {len(fails)} FAIL" + (": " + "; ".join(fails) if fails else ""))
    return "\n".join(lines)


def preference(res, fast="w8a8_dynamic[cuda.cutlass_w8a8]", base="w8a8_dynamic", family="sm90"):
    """The ``PREFERENCE`` entry (kernels/cuda/cutlass_w8a8.py) a result supports: per measured M, CUTLASS where
    it was faster than our Triton kernel on every shape (CUDA-graph time at M <= 16, where decode runs under
    graphs; eager above) and passed its reference check; ranges ascending, the last open-ended."""
    by_m: dict[int, list[bool]] = {}
    rows = {(r["unit"], r["m"], r["what"]): r for r in res["rows"]}
    for (unit, m, what), r in rows.items():
        if what != fast or r.get("check") != "ok":
            continue
        b = rows.get((unit, m, base))
        if b is None:
            continue
        key = "graph_us" if m <= 16 else "eager_us"
        if r[key] == r[key] and b[key] == b[key]:  # both measured (not NaN)
            by_m.setdefault(m, []).append(r[key] < b[key])
    if not by_m:
        return None
    ms = sorted(by_m)
    wins = ["cutlass" if all(by_m[m]) else "triton" for m in ms]
    ranges = []
    for i, (m, w) in enumerate(zip(ms, wins)):
        last = i == len(ms) - 1
        if last or wins[i + 1] != w:
            ranges.append((None if last else m, w))
    return {(family, base): tuple(ranges)}


def _parse_part(s):
    try:
        i, n = (int(v) for v in s.split("/"))
    except ValueError:
        raise SystemExit(f"--part must look like 1/2, got {s!r}")
    if not 1 <= i <= n:
        raise SystemExit(f"--part {s}: need 1 <= i <= n")
    return i, n


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default=SHAPES, help="N x K list")
    ap.add_argument("--ms", default=MS, help="M list (every shape)")
    ap.add_argument("--cases", default=",".join(CASES), help=f"our cases, from: {', '.join(CASES)}, w8a16, {', '.join(OPT_IN)}")
    ap.add_argument("--no-dit", action="store_true", help="leave out the DiT-block unit")
    ap.add_argument("--dit-schemes", default=",".join(DIT_SCHEMES), help="schemes of the DiT-block unit")
    ap.add_argument("--part", default="1/1", help="i/n: run the i-th of n cost-balanced groups of units")
    ap.add_argument("--budget-s", type=float, default=0.0, help="skip the remaining cases once this many s passed")
    ap.add_argument("--rep-ms", type=int, default=20, help="do_bench rep (ms) per case and mode")
    ap.add_argument("--check-tol", type=float, default=2e-2, help="rel error vs the reference above which: FAIL")
    ap.add_argument("--graph-max-m", type=int, default=4096, help="graph replay only up to this M (bf16 always)")
    ap.add_argument("--no-gemlite", action="store_true")
    ap.add_argument("--out", default="", help="JSON output path (rewritten after every case)")
    ap.add_argument("--plan", action="store_true", help="print the units of each part and the cost estimate; no GPU")
    ap.add_argument("--merge", nargs="+", default=None, help="part JSONs to merge into --out (and print the table)")
    ap.add_argument("--table", default="", help="print the table of this JSON and exit")
    ap.add_argument("--preference", default="", help="print the cutlass_w8a8 PREFERENCE entry this JSON supports")
    ap.add_argument("--profile-host", default="", help="write a cProfile of eager M=1 calls here and exit")
    ap.add_argument("--dry-cpu", action="store_true",
                    help="CPU dry run of the whole pipeline (tiny shapes and DiT block, Triton interpreter, no "
                         "timings): catches a broken case before GPU time is spent.  Triton 3.6's interpreter has no "
                         "tl.dot_scaled (MX cases error) and mis-evaluates bf16 tl.dot (w4a16 FAILs there)")
    a = ap.parse_args(argv)
    if a.table:
        with open(a.table) as f:
            print(table(json.load(f)))
        return 0
    if a.preference:
        with open(a.preference) as f:
            print(preference(json.load(f)))
        return 0
    if a.merge:
        res = merge(a.merge)
        if a.out:
            _dump(a.out, res)
        print(table(res))
        return 0
    if "w8a16" in a.cases.split(","):
        CASES["w8a16"] = ("w8a16", None, {}, None)
    CASES.update({c: OPT_IN[c] for c in a.cases.split(",") if c in OPT_IN})
    names = [c for c in a.cases.split(",") if c]
    unknown = [c for c in names if c not in CASES]
    if unknown:
        raise SystemExit(f"--cases: unknown {unknown}; known: {', '.join(CASES)}, w8a16, {', '.join(OPT_IN)}")
    dit_schemes = tuple(d for d in a.dit_schemes.split(",") if d)
    shapes = [tuple(int(v) for v in s.split("x")) for s in a.shapes.split(",") if s]
    units = _units(shapes, [int(s) for s in a.ms.split(",")], dit=not a.no_dit)
    i, n_parts = _parse_part(a.part)
    n_cases = 3 + len(names) + (0 if a.no_gemlite else len(GEMLITE))
    groups, load = split_parts(units, n_parts, n_cases)
    if a.plan:
        for j, (gr, ld) in enumerate(zip(groups, load), 1):
            pts = sum(len(u["ms"]) for u in gr if u["unit"] != "dit")
            print(f"part {j}/{n_parts}: {[u['unit'] for u in gr]}: {pts} (shape, M) points x {n_cases} cases x "
                  f"(eager + graph) do_bench of {a.rep_ms} ms; estimate ~{ld:.0f} s plus Triton compiles")
        return 0
    if a.dry_cpu:
        global DEV
        from omni_npu_quant.kernels.cuda.jit import interpret

        interpret.enable()
        DEV = "cpu"
        DIT.update(dim=256, heads=2, head_dim=128, mlp=1024, img_tokens=64, txt_tokens=16)
        units = _units([(64, 512)], [1, 17], dit=not a.no_dit)
        res = run(units, names, a.out, 1, False, 0.0, a.check_tol, a.graph_max_m, "dry-cpu", dit_schemes)
        print(table(res))
        return 0
    if not torch.cuda.is_available():
        print("bench_linear: needs a CUDA GPU (torch.cuda.is_available() is False)", file=sys.stderr)
        return 2
    if a.profile_host:
        profile_host(a.profile_host)
        return 0
    res = run(groups[i - 1], names, a.out, a.rep_ms, not a.no_gemlite, a.budget_s, a.check_tol, a.graph_max_m, a.part,
              dit_schemes)
    print(table(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
