"""Quick GPU check of cuda.mx_fp8tc against the reference backend (one process, few compiles; bf16 on the
default torch._scaled_mm path, fp16 on the opt-in Triton FP8 GEMM):
the E2 contract |y - ref| <= 1e-3 * max|ref| + 1 ulp, identical quantize_activation bytes, NaN rows,
and one CUDA-graph replay.  Prints one line per case and 'SMOKE FAILS [...]' last.

    PYTHONPATH=. python tools/fp8tc_smoke.py
"""
from __future__ import annotations

import sys

import torch

sys.path.insert(0, "tests/backends/cuda")
from _cuda_cases import same_bits  # noqa: E402
from omni_npu_quant.backends import CudaBackend, ReferenceBackend  # noqa: E402
from omni_npu_quant.schemes.registry import get_scheme  # noqa: E402

fails = []
g = torch.Generator().manual_seed(0)
ref = ReferenceBackend()
for name in ("mxfp8", "mxfp4", "w4a8_mxfp"):
    sch = get_scheme(name)
    n, k = 256, 1024
    w = torch.randn(n, k, generator=g) * 0.05
    w[3] *= 2.0 ** (torch.arange(k) // 32 % 20 - 12).float()  # 20 binades, finite in fp16
    t = sch.quantize_weight(w, torch.randn(n, generator=g))
    for dtype in (torch.bfloat16, torch.float16):
        cuda = CudaBackend() if dtype == torch.bfloat16 else CudaBackend(fp8tc_gemm="auto")  # fp16: Triton GEMM
        pr, pc = ref.prepare(sch, t, dtype), cuda.prepare(sch, t, dtype)
        for m in (33, 300):
            x = (torch.randn(m, k, generator=g) * 2).to(dtype)
            x[1, 5] = float("nan")
            qa, qb = ref.quantize_activation(pr, x), cuda.quantize_activation(pc, x)
            same = all(same_bits(qb[key].cpu(), qa[key]) for key in qa)
            yr, yc = ref.apply(pr, x).float(), cuda.apply(pc, x).cpu().float()
            nan_ok = torch.equal(torch.isnan(yr), torch.isnan(yc))
            fin = ~torch.isnan(yr)
            err = (yc[fin] - yr[fin]).abs().max().item()
            tol = 1e-3 * yr[fin].abs().max().item() + (torch.finfo(dtype).eps * yr[fin].abs()).max().item()
            ok = same and nan_ok and err <= tol
            print(f"{name} {str(dtype)[6:]} m={m} kernel={pc.kernel_name} scaled_mm={pc.scaled_mm} bytes={same} "
                  f"nan={nan_ok} maxerr={err:.3g} tol={tol:.3g} {'ok' if ok else 'FAIL'}", flush=True)
            if not ok:
                fails.append((name, str(dtype), m))
        if dtype == torch.bfloat16 and torch.cuda.is_available():
            xg = torch.randn(300, k, device="cuda", dtype=dtype)
            cuda.apply(pc, xg)
            torch.cuda.synchronize()
            gr = torch.cuda.CUDAGraph()
            with torch.cuda.graph(gr):
                out = cuda.apply(pc, xg)
            xg.copy_(torch.randn(300, k, device="cuda", dtype=dtype))
            gr.replay()
            ok = same_bits(out, cuda.apply(pc, xg))
            print(f"{name} graph replay {'ok' if ok else 'FAIL'}", flush=True)
            if not ok:
                fails.append((name, "graph"))
print("SMOKE FAILS", fails)
