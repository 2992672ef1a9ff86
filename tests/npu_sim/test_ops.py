"""Golden-vector tests of the torch_npu emulator, op by op (values worked out by hand from the CANN contracts)."""
from __future__ import annotations

import sys

import pytest
import torch

from omni_npu_quant import npu_sim
from omni_npu_quant.npu_sim import NpuSimError, make_module

A2, A3, A5 = make_module("A2"), make_module("A3"), make_module("A5")
BF16, FP16, F32 = torch.bfloat16, torch.float16, torch.float32


# ---- npu_dynamic_quant --------------------------------------------------------------
def test_dynamic_quant_golden():
    x = torch.tensor([[1.0, -2.0, 4.0, 0.5], [0.0, 0.0, 0.0, 0.0]], dtype=BF16)
    y, s = A2.npu_dynamic_quant(x)
    # inv = 127/4 = 31.75: 31.75 -> 32, -63.5 -> -64 (half to even), 127, 15.875 -> 16; zero row -> 0, scale 0
    assert y.tolist() == [[32, -64, 127, 16], [0, 0, 0, 0]]
    assert y.dtype == torch.int8 and s.dtype == F32 and s.shape == (2,)
    assert s[0].item() == (torch.tensor(4.0) * torch.tensor(1 / 127, dtype=F32)).item()
    assert s[1].item() == 0.0


def test_dynamic_quant_smooth_and_checks():
    x = torch.tensor([[1.0, 2.0]], dtype=FP16)
    y, _ = A2.npu_dynamic_quant(x, smooth_scales=torch.tensor([2.0, 0.5], dtype=FP16))
    assert y.tolist() == [[127, 64]]  # x*smooth = [2, 1]
    with pytest.raises(NpuSimError, match="smooth_scales dtype"):
        A2.npu_dynamic_quant(x, smooth_scales=torch.tensor([2.0, 0.5]))
    with pytest.raises(NpuSimError, match="float16/bfloat16"):
        A2.npu_dynamic_quant(x.float())
    with pytest.raises(NpuSimError, match="rank"):
        A2.npu_dynamic_quant(torch.ones(4, dtype=FP16))


# ---- npu_quantize / npu_trans_quant_param -------------------------------------------
def test_quantize_golden():
    x = torch.tensor([[0.5, 1.5, 2.5, -300.0, 127.4]], dtype=FP16)
    one = torch.tensor([1.0], dtype=FP16)
    y = A2.npu_quantize(x, one, torch.tensor([0.0], dtype=FP16), torch.qint8, -1, False)
    assert y.tolist() == [[0, 2, 2, -128, 127]]  # "round" == half to even here; saturating
    y = A2.npu_quantize(x, torch.tensor([2.0], dtype=FP16), torch.tensor([-1.0], dtype=FP16), torch.qint8, -1, False)
    assert y.tolist() == [[0, 2, 4, -128, 127]]
    with pytest.raises(NpuSimError, match="must equal input dtype"):
        A2.npu_quantize(x, torch.tensor([1.0]), None, torch.qint8, -1, False)
    with pytest.raises(NotImplementedError):
        A2.npu_quantize(x, one, None, torch.qint8, -1, True)


def test_trans_quant_param_golden():
    s = torch.tensor([1.0, 1.0 + 2.0 ** -20, -0.5], dtype=F32)
    v = A2.npu_trans_quant_param(s)
    assert v.dtype == torch.int64
    assert v.tolist() == [0x3F800000 | 1 << 46, 0x3F800000 | 1 << 46, 0xBF000000 | 1 << 46]
    with pytest.raises(NpuSimError, match="float32"):
        A2.npu_trans_quant_param(s.half())


# ---- npu_quant_matmul int8 -----------------------------------------------------------
def _int8_case():
    x1 = torch.tensor([[1, 2, -3], [4, 5, 6]], dtype=torch.int8)
    w_nk = torch.tensor([[1, 0, 1], [2, -1, 0]], dtype=torch.int8)  # (N, K)
    return x1, w_nk  # acc = [[-2, 0], [10, 3]]


def test_quant_matmul_int8_modes():
    x1, w = _int8_case()
    x2 = A2.npu_format_cast(w.t().contiguous(), 29)
    bias = torch.tensor([1, -1], dtype=torch.int32)
    out = A2.npu_quant_matmul(x1, x2, torch.tensor([0.5, 2.0]), bias=bias, output_dtype=BF16)
    assert out.dtype == BF16 and out.float().tolist() == [[-0.5, -2.0], [5.5, 4.0]]
    # int32 output: exact accumulator (+ bias), from a transpose view of (N, K)
    assert A2.npu_quant_matmul(x1, w.t(), torch.ones(1), output_dtype=torch.int32).tolist() == [[-2, 0], [10, 3]]
    # per-token: acc * scale * pertoken + float bias
    out = A2.npu_quant_matmul(x1, x2, torch.tensor([1.0, 0.5]), pertoken_scale=torch.tensor([2.0, 0.25]),
                              bias=torch.tensor([0.25, 0.0]), output_dtype=FP16)
    assert out.float().tolist() == [[-3.75, 0.0], [2.75, 0.375]]
    # fp16 output: the fp32 scale is FP19-truncated (npu_trans_quant_param), same as an int64 scale
    s = torch.tensor([1.0 + 2.0 ** -12, 1.0])
    a = A2.npu_quant_matmul(x1, x2, s, output_dtype=FP16)
    b = A2.npu_quant_matmul(x1, x2, A2.npu_trans_quant_param(s), output_dtype=FP16)
    assert torch.equal(a, b) and a.float().tolist() == [[-2.0, 0.0], [10.0, 3.0]]
    # int8 requant: clip(round(acc*scale) + offset)
    r = A2.npu_quant_matmul(x1, x2, torch.tensor([30.0, 1.0]), offset=torch.tensor([3.0]), output_dtype=torch.int8)
    assert r.tolist() == [[-57, 3], [127, 6]]


def test_quant_matmul_documented_defaults():
    """torch-npu wheel 2.14.0 docstring: output_dtype=None -> int8; pertoken_scale is 1-D (m,)."""
    x1, w = _int8_case()  # acc = [[-2, 0], [10, 3]]
    out = A2.npu_quant_matmul(x1, w.t(), torch.tensor([30.0, 1.0]))  # was float16 before
    assert out.dtype == torch.int8 and out.tolist() == [[-60, 0], [127, 3]]
    assert torch.equal(out, A2.npu_quant_matmul(x1, w.t(), torch.tensor([30.0, 1.0]), output_dtype=torch.int8))
    with pytest.raises(NpuSimError, match="output_dtype=None means int8"):  # per-token needs a float output
        A2.npu_quant_matmul(x1, w.t(), torch.ones(2), pertoken_scale=torch.ones(2))
    # batched x1 (B, m, K): pertoken_scale is (m,), applied to every batch; the old (B, m) form is refused
    xb = torch.stack([x1, -x1])
    pt = torch.tensor([2.0, 0.25])
    yb = A2.npu_quant_matmul(xb, w.t(), torch.ones(2), pertoken_scale=pt, output_dtype=BF16)
    assert yb.shape == (2, 2, 2) and yb.float().tolist() == [[[-4.0, 0.0], [2.5, 0.75]], [[4.0, 0.0], [-2.5, -0.75]]]
    with pytest.raises(NpuSimError, match=r"1-D \(2,\)"):
        A2.npu_quant_matmul(xb, w.t(), torch.ones(2), pertoken_scale=pt.repeat(2, 1), output_dtype=BF16)
    with pytest.raises(NpuSimError, match=r"1-D \(2,\)"):
        A2.npu_quant_matmul(x1, w.t(), torch.ones(2), pertoken_scale=pt.reshape(2, 1), output_dtype=BF16)
    # MX modes: None is int8 there too, which they do not support
    m, n, k = 1, 1, 64
    kw = dict(scale_dtype=A5.float8_e8m0fnu, pertoken_scale_dtype=A5.float8_e8m0fnu, x1_dtype=A5.float4_e2m1fn_x2,
              x2_dtype=A5.float4_e2m1fn_x2, group_sizes=[1, 1, 32])
    with pytest.raises(NpuSimError, match="output_dtype=None means int8"):
        A5.npu_quant_matmul(torch.zeros(m, k // 2, dtype=torch.uint8), torch.zeros(n, k // 2, dtype=torch.uint8).t(),
                            torch.full((n, 1, 2), 127, dtype=torch.uint8).transpose(0, 1),
                            pertoken_scale=torch.full((m, 1, 2), 127, dtype=torch.uint8), **kw)


def test_quant_matmul_int8_rejections():
    x1, w = _int8_case()
    x2 = w.t()
    with pytest.raises(NpuSimError, match="DT_FLOAT16"):
        A2.npu_quant_matmul(x1, x2, torch.tensor([1.0, 1.0], dtype=FP16), output_dtype=FP16)
    with pytest.raises(NpuSimError, match="int32 bias only"):
        A2.npu_quant_matmul(x1, x2, torch.ones(2), bias=torch.ones(2), output_dtype=FP16)
    with pytest.raises(NpuSimError, match="int64/fp32"):
        A2.npu_quant_matmul(x1, x2, torch.ones(2, dtype=BF16), output_dtype=FP16)
    with pytest.raises(NpuSimError, match="expected"):
        A2.npu_quant_matmul(x1, torch.zeros(2, 2, dtype=torch.int8), torch.ones(2), output_dtype=BF16)
    with pytest.raises(NotImplementedError, match="int32-packed"):
        A2.npu_quant_matmul(torch.zeros(2, 1, dtype=torch.int32), torch.zeros(8, 1, dtype=torch.int32), torch.ones(1),
                            output_dtype=FP16)
    big = torch.zeros(1, 65536, dtype=torch.int8)
    with pytest.raises(NpuSimError, match="65535"):
        A2.npu_quant_matmul(big, torch.zeros(65536, 1, dtype=torch.int8), torch.ones(1), output_dtype=BF16)


# ---- MX ops: A5 only -----------------------------------------------------------------
@pytest.mark.parametrize("mod", [A2, A3], ids=["A2", "A3"])
def test_mx_ops_raise_on_a2_a3(mod):
    x = torch.ones(2, 64, dtype=BF16)
    with pytest.raises(NpuSimError, match="361001"):
        mod.npu_dynamic_mx_quant(x)
    with pytest.raises(NpuSimError, match="361001"):
        mod.npu_dynamic_dual_level_mx_quant(torch.ones(2, 512, dtype=BF16))
    with pytest.raises(NpuSimError, match="361001"):
        mod.npu_dual_level_quant_matmul(*[torch.zeros(1)] * 6)
    with pytest.raises(NpuSimError, match="361001"):
        mod.npu_quant_matmul(torch.zeros(2, 32, dtype=torch.uint8), torch.zeros(32, 2, dtype=torch.uint8), torch.zeros(1),
                             x1_dtype=mod.float4_e2m1fn_x2, x2_dtype=mod.float4_e2m1fn_x2, group_sizes=[1, 1, 32])


def _fp4_row():
    x = torch.zeros(1, 64, dtype=BF16)
    x[0, :4] = torch.tensor([6.0, 5.0, 2.5, 0.25])
    return x


@pytest.mark.parametrize("mode,expect", [("rint", [6.0, 4.0, 2.0, 0.0]), ("round", [6.0, 6.0, 3.0, 0.5]),
                                         ("floor", [6.0, 4.0, 2.0, 0.0])])
def test_dynamic_mx_quant_fp4_golden(mode, expect):
    y, s = A5.npu_dynamic_mx_quant(_fp4_row(), dst_type=A5.float4_e2m1fn_x2, round_mode=mode)
    assert y.dtype == torch.uint8 and y.shape == (1, 32) and s.shape == (1, 1, 2) and s.dtype == torch.uint8
    # block 0: amax 6 -> E = floor(log2 6) - 2 = 0 -> code 127; block 1 all zero -> code 0 (2^-127)
    assert s.tolist() == [[[127, 0]]]
    codes = {0.0: 0, 0.5: 1, 2.0: 4, 3.0: 5, 4.0: 6, 6.0: 7}
    c = [codes[v] for v in expect]
    assert y[0, :2].tolist() == [c[0] | c[1] << 4, c[2] | c[3] << 4]  # low nibble first
    assert bool((y[0, 2:] == 0).all())


def test_dynamic_mx_quant_fp8_golden_and_checks():
    x = torch.zeros(2, 96, dtype=FP16)
    x[0, 0], x[0, 1], x[1, 40] = 1.0, 2.0 ** -10, -3.0
    y, s = A5.npu_dynamic_mx_quant(x, dst_type=torch.float8_e4m3fn)
    assert y.dtype == torch.float8_e4m3fn and s.shape == (2, 2, 2)
    # row 0 block 0: amax 1 -> E = 0 - 8 = -8 (code 119); 1 -> 256, 2^-10 -> 2^-2
    assert s[0, 0, 0].item() == 119 and y[0, 0].float().item() == 256.0 and y[0, 1].float().item() == 0.25
    # row 1 block 1: amax 3 -> E = 1 - 8 = -7 (code 120); padding pair entry (block 3) = 0
    assert s[1, 0, 1].item() == 120 and s[1, 1, 1].item() == 0 and y[1, 40].float().item() == -384.0
    with pytest.raises(NpuSimError, match="rint"):
        A5.npu_dynamic_mx_quant(x, dst_type=torch.float8_e4m3fn, round_mode="round")
    with pytest.raises(NpuSimError, match="block_size"):
        A5.npu_dynamic_mx_quant(x, block_size=48)
    with pytest.raises(NpuSimError, match="scale_alg=1"):
        A5.npu_dynamic_mx_quant(x, scale_alg=1)


def test_mx_quant_matmul_golden_and_layout_rules():
    # K = 128: x1 all 1.0 (FP4 code 2), scale 2^1; weight all 0.5 (code 1), scale 2^-1 -> out = 128 * 0.5 = 64
    m, n, k = 2, 3, 128
    x1 = torch.full((m, k // 2), 2 | 2 << 4, dtype=torch.uint8)
    w = torch.full((n, k // 2), 1 | 1 << 4, dtype=torch.uint8)
    xs = torch.full((m, 2, 2), 128, dtype=torch.uint8)
    ws = torch.full((n, 2, 2), 126, dtype=torch.uint8)
    kw = dict(scale_dtype=A5.float8_e8m0fnu, pertoken_scale_dtype=A5.float8_e8m0fnu, x1_dtype=A5.float4_e2m1fn_x2,
              x2_dtype=A5.float4_e2m1fn_x2, group_sizes=[1, 1, 32], output_dtype=BF16)
    out = A5.npu_quant_matmul(x1, w.t(), ws.transpose(0, 1), pertoken_scale=xs, bias=torch.arange(3.0), **kw)
    assert out.dtype == BF16 and out.float().tolist() == [[64.0, 65.0, 66.0]] * 2
    with pytest.raises(NpuSimError, match="same transposition"):
        A5.npu_quant_matmul(x1, w.t(), ws.transpose(0, 1).contiguous(), pertoken_scale=xs, **kw)
    with pytest.raises(NpuSimError, match="group_sizes"):
        A5.npu_quant_matmul(x1, w.t(), ws.transpose(0, 1), pertoken_scale=xs, **{**kw, "group_sizes": [0, 0, 32]})
    with pytest.raises(NpuSimError, match="float32"):
        A5.npu_quant_matmul(x1, w.t(), ws.transpose(0, 1), pertoken_scale=xs, bias=torch.ones(3, dtype=BF16), **kw)
    with pytest.raises(NpuSimError, match="transpose view"):
        A5.npu_quant_matmul(x1, w.t().contiguous(), ws.transpose(0, 1), pertoken_scale=xs, **kw)


def test_dual_level_quant_golden_and_checks():
    x = torch.zeros(1, 512, dtype=BF16)
    x[0, 0], x[0, 1], x[0, 40] = 12.0, -3.0, 0.75
    y, l0, l1 = A5.npu_dynamic_dual_level_mx_quant(x)
    # l0 = 12/6 = 2 -> t = [6, -1.5, ..., 0.375]; block 0 amax 6 -> e = 0 (code 127); block 1 amax .375 -> e = -4
    assert l0.tolist() == [[2.0]] and l0.dtype == F32
    assert y.shape == (1, 256) and l1.shape == (1, 8, 2)
    assert l1[0, 0].tolist() == [127, 123]
    assert y[0, 0].item() == (7 | (8 + 3) << 4)  # 6 -> code 7; -1.5 -> sign | code 3
    assert y[0, 20].item() == 7  # element 40: 0.375 / 2^-4 = 6 -> code 7, low nibble of byte 20
    with pytest.raises(NpuSimError, match="smooth_scale dtype"):
        A5.npu_dynamic_dual_level_mx_quant(x, smooth_scale=torch.ones(512))
    with pytest.raises(NpuSimError, match="even"):
        A5.npu_dynamic_dual_level_mx_quant(torch.ones(1, 511, dtype=BF16))


def test_dual_level_matmul_golden_and_nz_rule():
    m, n, k = 1, 2, 1024
    x1 = torch.full((m, k // 2), 2 | 2 << 4, dtype=torch.uint8)  # 1.0
    w = torch.full((n, k // 2), 2 | 2 << 4, dtype=torch.uint8)
    x1_l1 = torch.full((m, k // 64, 2), 127, dtype=torch.uint8)
    w_l1 = torch.full((n, k // 64, 2), 127, dtype=torch.uint8)
    x1_l0 = torch.tensor([[2.0, 1.0]])
    w_l0 = torch.tensor([[3.0, 1.0], [0.5, 4.0]])  # (K/512, N)
    w_nz = A5.npu_format_cast(w.view(torch.int8), 29, customize_dtype=torch.int8)
    out = A5.npu_dual_level_quant_matmul(x1, w_nz, x1_l0, w_l0, x1_l1, w_l1, bias=torch.tensor([2.0, 0.0]),
                                         output_dtype=5)
    # block 0: 512 * 2 * [3, 1]; block 1: 512 * 1 * [0.5, 4]; + bias
    assert out.dtype == FP16 and out.float().tolist() == [[3072 + 256 + 2.0, 1024 + 2048.0]]
    with pytest.raises(NpuSimError, match="FRACTAL_NZ"):
        A5.npu_dual_level_quant_matmul(x1, w, x1_l0, w_l0, x1_l1, w_l1)
    with pytest.raises(NpuSimError, match="x2_level0_scale"):
        A5.npu_dual_level_quant_matmul(x1, w_nz, x1_l0, w_l0.t().contiguous()[:1], x1_l1, w_l1)


def test_weight_quant_batchmatmul_golden_and_checks():
    x = torch.tensor([[1.0, 1.0]], dtype=BF16)
    w = torch.tensor([[2], [3]], dtype=torch.int8)  # (k=2, n=1)
    out = A2.npu_weight_quant_batchmatmul(x, w, torch.tensor([0.5], dtype=BF16), torch.tensor([1.0], dtype=BF16),
                                          bias=torch.tensor([1.0]))
    assert out.dtype == BF16 and out.float().tolist() == [[4.5]]  # (2+1)*.5 + (3+1)*.5 + 1
    with pytest.raises(NpuSimError, match="antiquant_scale dtype"):
        A2.npu_weight_quant_batchmatmul(x, w, torch.tensor([0.5]))
    with pytest.raises(NpuSimError, match="bias must be"):
        A2.npu_weight_quant_batchmatmul(x, w, torch.tensor([0.5], dtype=BF16), bias=torch.tensor([1.0], dtype=BF16))
    xk = torch.ones(1, 64, dtype=FP16)
    wk = torch.ones(64, 2, dtype=torch.int8)
    g = A2.npu_weight_quant_batchmatmul(xk, wk, torch.tensor([[1.0, 2.0], [0.5, 0.25]], dtype=FP16),
                                        antiquant_group_size=32)
    assert g.float().tolist() == [[48.0, 72.0]]
    with pytest.raises(NpuSimError, match="antiquant_group_size"):
        A2.npu_weight_quant_batchmatmul(xk, wk, torch.ones(4, 2, dtype=FP16), antiquant_group_size=16)


def test_format_and_dtype_cast():
    w = torch.arange(6, dtype=torch.int8).reshape(2, 3)
    nz = A2.npu_format_cast(w, 29)
    assert A2.get_npu_format(nz) == 29 and A2.get_npu_format(w) == 2 and torch.equal(nz, w)
    assert A2.get_npu_format(nz.t()) == 2  # a view loses the format, as on A5
    assert A2.get_npu_format(A2.npu_format_cast(torch.ones(3), 29)) == 2  # 1-D stays ND
    assert A5.npu_dtype_cast(torch.tensor([0.5, 6.0, -1.0, 0.0]), A5.float4_e2m1fn_x2).tolist() == [0x71, 0x0A]
    assert A5.npu_dtype_cast(torch.tensor([448.0]), A5.float8_e4m3fn).dtype == torch.float8_e4m3fn
    with pytest.raises(ValueError, match="not representable"):
        A5.npu_dtype_cast(torch.tensor([0.7]), A5.float4_e2m1fn_x2)


def test_install_and_env(monkeypatch):
    before = sys.modules.get("torch_npu")
    with npu_sim.install("A3") as mod:
        import torch_npu

        assert torch_npu is mod and torch.npu.get_soc_version() == 250
        assert torch_npu.npu.get_device_name() == "Ascend910_9391" and torch_npu.float4_e2m1fn_x2 == 296
    assert sys.modules.get("torch_npu") is before and not hasattr(torch, "npu")
    monkeypatch.setenv(npu_sim.ENV, "a5")
    try:
        assert npu_sim.install_from_env().npu.get_soc_version() == 260
    finally:
        npu_sim.uninstall()
    assert sys.modules.get("torch_npu") is before and not hasattr(torch, "npu")
    monkeypatch.setenv(npu_sim.ENV, "B9")
    with pytest.raises(ValueError, match="accepted values are A2, A3, A5"):
        npu_sim.install_from_env()
