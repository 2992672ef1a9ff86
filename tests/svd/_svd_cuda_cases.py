"""Shared cases of the ``cuda.svd`` checks: the same code runs on the GPU (tests/svd/test_svd_gpu.py) and on the
CPU through Triton's interpreter (tests/svd/test_svd_schemes.py::test_cuda_svd_every_scheme_in_triton_interpreter).

Tolerances (the output is ``round_act(residual + bias + branch)``; kernel and reference round once each):

* residual, per family (the residual kernel's own exactness, measured by running the residual alone):
  ``cuda.int8_*``: exact int32 accumulators and the reference's fp32 epilogue, output rounded to the activation
  dtype: <= 1 ulp of it; ``cuda.cutlass_w8a8*`` (vLLM's CUTLASS int8 GEMM, E2 with a bias: it reads the bias in
  bf16): <= 2 ulp + 2^-8 |bias|; ``cuda.mx``: exact products, fp32 accumulation order: 1e-5 of the output scale + 1 ulp;
  ``cuda.mx_fp8tc``: E2, 1e-3 of the output scale + 1 ulp (its own contract); the reference kernels run on the GPU
  (``reference.*``, e.g. the svdq residuals): fp32 GEMM order, 1e-5 of the output scale + 1 ulp.
* branch (``lowrank_branch`` is the twin): fp32 accumulation in another order may flip the rounding of the hidden
  to the activation dtype: ``|dh| <= ulp_act(h) + K * 2^-24 * (|x| . |L1|^T)``, then ``|dy| <= |dh| . |L2|^T +
  r * 2^-24 * (|h| . |L2|^T)``.
* whole layer: ``|y - y_ref| <= |res - res_ref| (measured, checked above) + branch bound + 1 ulp_act(y_ref)``.
"""
from __future__ import annotations

import torch

F32 = torch.float32
SVD_NAMES = ("mxfp4_svd", "mxfp8_svd", "w4a8_mxfp_svd", "mxfp4_dual_svd", "w8a8_dynamic_svd", "w8a8_static_svd",
             "svdq_int4", "svdq_nvfp4")
EPS24 = 2.0 ** -24


def ulp_rel(dtype) -> float:
    return {torch.bfloat16: 2.0 ** -7, torch.float16: 2.0 ** -10, torch.float32: 2.0 ** -23}[dtype]


def residual_tol(kernel_name: str, res_ref: torch.Tensor, dtype, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Elementwise bound of |res_kernel - res_ref| for the residual kernel family (module docstring)."""
    one_ulp = ulp_rel(dtype) * res_ref.abs() + torch.finfo(dtype).tiny
    if kernel_name.startswith("cuda.int8"):
        return one_ulp
    if kernel_name.startswith("cuda.cutlass"):
        return 2 * one_ulp + (0.0 if bias is None else 2.0 ** -8 * bias.float().abs())
    scale = float(res_ref.abs().amax().clamp(min=1e-30))
    rel = 1e-3 if kernel_name == "cuda.mx_fp8tc" else 1e-5
    return rel * scale + one_ulp


def branch_tol(x2: torch.Tensor, l1: torch.Tensor, l2: torch.Tensor, dtype) -> torch.Tensor:
    x, a, b = x2.float(), l1.float(), l2.float()
    h = x @ a.t()
    dh = ulp_rel(dtype) * h.abs() + x.shape[1] * EPS24 * (x.abs() @ a.abs().t()) + torch.finfo(dtype).tiny
    return dh @ b.abs().t() + b.shape[1] * EPS24 * (h.abs() @ b.abs().t())


def make_layer(name: str, n: int, k: int, rank: int, *, bias: bool, zero_branch: bool, seed: int):
    """(scheme, tensors) with a rank-``rank`` branch (or an all-zero one) and a bias."""
    from omni_npu_quant.schemes.registry import get_scheme

    g = torch.Generator().manual_seed(seed)
    s = get_scheme(name, rank=rank)
    w = (torch.randn(n, rank, generator=g) @ torch.randn(rank, k, generator=g)) * 0.05 \
        + torch.randn(n, k, generator=g) * 0.02
    b = torch.randn(n, generator=g) * 0.1 if bias else None
    calib = {"act_min": -4.0, "act_max": 5.0} if name == "w8a8_static_svd" else {}
    t = s.quantize_weight(w, b, **calib)
    t.pop("weight_offset", None)  # symmetric static int8 (what cuda.int8_static takes)
    if name.startswith("svdq"):
        t["smooth_factor"] = (torch.rand(k, generator=g) + 0.5).to(torch.bfloat16)
    if zero_branch:
        t["svd_lowrank_l1"] = torch.zeros_like(t["svd_lowrank_l1"])
        t["svd_lowrank_l2"] = torch.zeros_like(t["svd_lowrank_l2"])
    s.validate(t, where=f"{name}.fc")
    return s, t


def _bytes(t):
    return t.view(torch.uint8) if t.dtype.itemsize == 1 and t.dtype != torch.uint8 else t


def check_layer(cuda_be, ref_be, name, dtype, ms, *, n, k, rank, bias, zero_branch, seed, device):
    """Every check of one layer; returns a list of failures (empty = pass) and the residual kernel name."""
    fails = []
    s, t = make_layer(name, n, k, rank, bias=bias, zero_branch=zero_branch, seed=seed)
    pr = ref_be.prepare(s, t, dtype, where=name)
    pc = cuda_be.prepare(s, t, dtype, where=name)
    rk = pc.residual.kernel.name if pc.kernel.name == "cuda.svd" else None
    if pc.kernel.name != "cuda.svd":
        return [(name, "kernel", pc.kernel.name)], rk
    g = torch.Generator().manual_seed(seed + 1)
    for m in ms:
        x = (torch.randn(m, k, generator=g) * 2).to(dtype)
        xd = x.to(device)
        qa, qc = ref_be.quantize_activation(pr, x), cuda_be.quantize_activation(pc, xd)
        # every output the reference quantizer reports, byte for byte (a kernel may report more, e.g. its GEMM layout)
        if not set(qa) <= set(qc) or not all(torch.equal(_bytes(qc[key].cpu()), _bytes(qa[key])) for key in qa):
            fails.append((name, str(dtype), m, "quantizer bytes differ"))
        res_r = pr.residual.kernel.apply(pr.residual, x, add_bias=True).float()
        res_c = pc.residual.kernel.apply(pc.residual, xd, add_bias=True).float().cpu()
        dres = (res_c - res_r).abs()
        rt = residual_tol(rk, res_r, dtype, t.get("bias"))
        if not bool((dres <= rt).all()):
            fails.append((name, str(dtype), m, "residual", rk, float((dres / rt).max())))
        y_r = ref_be.apply(pr, x).float()
        y_c = cuda_be.apply(pc, xd).cpu()
        if y_c.dtype != dtype or y_c.shape != (m, n):
            fails.append((name, str(dtype), m, "output", str(y_c.dtype), tuple(y_c.shape)))
            continue
        y_c = y_c.float()
        if zero_branch:  # res + 0 exactly: the layer is its residual, rounded once
            if not torch.equal(y_c, res_c.to(dtype).float()):
                fails.append((name, str(dtype), m, "zero branch changed the residual"))
            continue
        bt = branch_tol(x, t["svd_lowrank_l1"].to(dtype), t["svd_lowrank_l2"].to(dtype), dtype)
        tol = dres + bt + ulp_rel(dtype) * y_r.abs() + torch.finfo(dtype).tiny
        if not bool(((y_c - y_r).abs() <= tol).all()):
            fails.append((name, str(dtype), m, "output", float(((y_c - y_r).abs() / tol).max())))
        # the branch matters here: without it the output would be off (so this check can fail)
        if float((res_r + 0 - y_r).abs().max()) <= float(tol.max()):
            fails.append((name, str(dtype), m, "branch too small to be checked"))
    return fails, rk


def check_lowrank_add(lowrank_add, device, dtype, m, k, r, n, seed, res_dtype=F32):
    """The Triton branch kernel vs its pure-torch twin (``res + lowrank_branch``); returns failures.  ``res_dtype``:
    the residual's dtype (the split form also reads a 16-bit residual; the twin adds it in fp32)."""
    from omni_npu_quant.schemes.svd_base import lowrank_branch

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g).to(dtype)
    l1 = (torch.randn(r, k, generator=g) * 0.1).to(dtype)
    l2 = (torch.randn(n, r, generator=g) * 0.1).to(dtype)
    res = torch.randn(m, n, generator=g).to(res_dtype)
    want = res.float() + lowrank_branch(x, l1, l2, dtype)
    got = lowrank_add(x.to(device), l1.to(device), l2.to(device), res.to(device)).cpu()
    # one fp32 ulp of the output, not half: both kernels accumulate the branch onto the residual inside the tensor
    # core's dot, whose adder does not round to nearest (H200, 2026-12-02: rank 1, M 300, outputs one fp32 ulp off
    # the twin's single rounding, 1.14x and 1.74x the half-ulp bound; Triton folds a separate add into the dot)
    tol = branch_tol(x, l1, l2, dtype) + 2 * EPS24 * want.abs()
    if got.dtype != F32 or got.shape != (m, n) or not bool(((got - want).abs() <= tol).all()):
        return [(str(dtype), m, k, r, n, str(got.dtype), float(((got - want).abs() / tol).max()) if m else 0.0)]
    z = lowrank_add(x.to(device), torch.zeros_like(l1).to(device), torch.zeros_like(l2).to(device), res.to(device))
    if not torch.equal(z.cpu(), res.float()):
        return [(str(dtype), m, k, r, n, "zero factors changed res")]
    return []
