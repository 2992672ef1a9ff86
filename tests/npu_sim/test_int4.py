"""int4 weights (issue 15, W4A16): ``npu_convert_weight_to_int4pack`` and int4 ``npu_weight_quant_batchmatmul``.

Expected values are worked out by hand (or with exact fractions, rounding with RNE to the x dtype) from the
contracts: torch-npu wheel 2.14.0 ``torch_npu/_op_plugin_docs.py`` (both ops), hicann/ops-nn
``aclnnWeightQuantBatchMatmulV2`` (A2/A3 constraints) and the CANN reference golden
``matmul/weight_quant_batch_matmul_v2/tests/assets/wqbmmv2_kernel_golden.py``: ``w = rnd(rnd(w + offset) * scale)``
in the x dtype, fp32 accumulation, fp32 bias, one final cast.
"""
from __future__ import annotations

import pytest
import torch

from omni_npu_quant.npu_sim import NpuSimError, make_module
from omni_npu_quant.numerics.int4 import pack_int4, unpack_int4

A2, A3, A5 = make_module("A2"), make_module("A3"), make_module("A5")
BF16, FP16, F32, I32 = torch.bfloat16, torch.float16, torch.float32, torch.int32


def _pack(w_kn):  # (K, N) int values -> (K, N/8) int32 through the op under test
    return A2.npu_convert_weight_to_int4pack(torch.tensor(w_kn, dtype=I32))


# ---- npu_convert_weight_to_int4pack ------------------------------------------------------------
def test_int4pack_golden():
    w = torch.tensor([[1, 2, 3, 4, 5, 6, 7, -8], [-1] * 8, [0, -1, 0, 0, 0, 0, 0, 0]], dtype=I32)
    out = A2.npu_convert_weight_to_int4pack(w)
    assert out.dtype == I32 and out.shape == (3, 1)
    # nibbles LSB first: 1,2,...,7 then -8 -> 0x8 -> 0x87654321; all -1 -> 0xFFFFFFFF; -1 at position 1 -> 0xF0
    assert out.flatten().tolist() == [0x87654321 - 2 ** 32, -1, 0xF0]
    assert torch.equal(unpack_int4(out), w) and torch.equal(pack_int4(w), out)
    # (n, k) input: packs along its last dim too; 16 -> 2 words; inner_k_tiles is reserved (vllm-ascend passes 1)
    w2 = torch.arange(-8, 8, dtype=I32).repeat(3, 1)
    o2 = A3.npu_convert_weight_to_int4pack(w2, inner_k_tiles=1)
    assert o2.shape == (3, 2) and o2[0].tolist() == [0xFEDCBA98 - 2 ** 32, 0x76543210]  # -8..-1 -> nibbles 8..F, then 0..7


def test_int4pack_checks():
    ok = torch.zeros(2, 8, dtype=I32)
    for bad, msg in ((torch.full((1, 8), 8, dtype=I32), r"\[-8, 7\]"), (torch.full((1, 8), -9, dtype=I32), r"\[-8, 7\]"),
                     (torch.zeros(2, 12, dtype=I32), "multiple of 8"), (torch.zeros(8, 2, dtype=I32).t(), "contiguous"),
                     (torch.zeros(1, 2, 8, dtype=I32), "2-D"), (torch.zeros(2, 8, dtype=torch.int8), "int32"),
                     (torch.zeros(0, 8, dtype=I32), "empty")):
        with pytest.raises(NpuSimError, match=msg):
            A2.npu_convert_weight_to_int4pack(bad)
    with pytest.raises(NpuSimError, match="inner_k_tiles"):
        A2.npu_convert_weight_to_int4pack(ok, inner_k_tiles=None)
    # NZ in -> NZ out
    assert A2.get_npu_format(A2.npu_convert_weight_to_int4pack(A2.npu_format_cast(ok, 29))) == 29
    assert A2.get_npu_format(A2.npu_convert_weight_to_int4pack(ok)) == 2


def test_int4pack_fp4_values_on_a5_only():
    v = torch.tensor([[0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.5]])
    with pytest.raises(NpuSimError, match="Ascend 950"):
        A2.npu_convert_weight_to_int4pack(v)
    out = A5.npu_convert_weight_to_int4pack(v)
    assert out.dtype == F32 and out.view(I32).tolist() == [[0x97654321 - 2 ** 32]]  # E2M1 codes 1..7, -0.5 = 9
    with pytest.raises(NpuSimError, match="E2M1"):
        A5.npu_convert_weight_to_int4pack(torch.full((1, 8), 0.75))


# ---- npu_weight_quant_batchmatmul, int4 -----------------------------------------------------------
W1 = [[7, 7, -8, -8, 5, -8, 3, 0],
      [-1, 5, 7, -3, 0, 7, -8, 1],
      [0, -8, 1, 2, -7, 6, -2, -5],
      [1, 2, 3, 4, 5, 6, 7, -8],
      [-8, -7, -6, -5, -4, -3, -2, -1],
      [2, 0, 0, 0, 0, 0, 0, 0],
      [0, 0, 0, 0, 0, 0, 0, 7],
      [-8] * 8]  # (K = 8, N = 8)


def _case1():
    off = torch.tensor([3 / 64, 1 / 64, 0, -0.5, 0.25, 1 / 64, -1 / 64, 0], dtype=BF16)
    sc = torch.tensor([1 + 2 ** -7, 1, 0.5, 2, -1, 3, 0.1, 1], dtype=BF16)  # 0.1 -> bf16 0.10009765625
    x = torch.cat([torch.eye(8)[:2], torch.ones(1, 8)]).to(BF16)  # rows: pick k=0, pick k=1, sum over k
    return x, _pack(W1), sc, off


def test_int4_per_channel_golden_bf16_ties():
    x, w, sc, off = _case1()
    out = A2.npu_weight_quant_batchmatmul(x, w, sc, off)
    assert out.dtype == BF16 and out.shape == (3, 8)
    # [0,0]: 7 + 3/64 = 7.046875 is halfway between bf16 7.03125 and 7.0625 -> even 7.0625; x 1.0078125 = 7.1176...
    #        -> bf16 7.125 (a fp32 dequant would give 7.09375).  [0,1]: 7 + 1/64 halfway -> even 7.0.
    # [0,5]: -8 + 1/64 halfway between -7.96875 and -8 -> -8, x 3 = -24.  [0,6]: 2.984375 x 0.10009765625 -> 0.298828125
    assert out[0].float().tolist() == [7.125, 7.0, -4.0, -17.0, -5.25, -24.0, 0.298828125, 0.0]
    assert out[1].float().tolist() == [-0.9609375, 5.0, 3.5, -7.0, -0.25, 21.0, -0.80078125, 1.0]
    # sums over k of the dequantized (bf16) weights, exact in fp32, one final rounding
    assert out[2].float().tolist() == [-6.625, -8.9375, -5.5, -44.0, 7.0, 0.15625, -1.0078125, -14.0]
    # (1, n) shapes and an fp32 bias (bf16 x) added before the final cast
    b = A2.npu_weight_quant_batchmatmul(x, w, sc.reshape(1, 8), off.reshape(1, 8), bias=torch.full((8,), 0.5))
    assert b[0, :2].float().tolist() == [7.625, 7.5]
    # no offset; per-tensor scale (1,) and (1, 1)
    t = A2.npu_weight_quant_batchmatmul(x[:1], w, torch.tensor([0.5], dtype=BF16))
    assert t.float().tolist() == [[3.5, 3.5, -4.0, -4.0, 2.5, -4.0, 1.5, 0.0]]
    assert torch.equal(t, A2.npu_weight_quant_batchmatmul(x[:1], w, torch.tensor([[0.5]], dtype=BF16),
                                                          weight_dtype=torch.quint4x2))


K2, N2, G2 = 96, 8, 32  # 3 groups: an odd group count is accepted (ceil(K / group) rows of scales)


def _case2():
    w = [[((k * 3 + n * 5) % 16) - 8 for n in range(N2)] for k in range(K2)]
    sc = torch.tensor([[2.0 ** -g * (1 + n / 8) for n in range(N2)] for g in range(3)], dtype=FP16)
    off = torch.tensor([[(g - 1) / 2 + (n % 2) / 512 for n in range(N2)] for g in range(3)], dtype=FP16)
    x = torch.zeros(2, K2, dtype=FP16)
    x[0, 32:64] = 1.0  # sum over group 1
    x[1, 95] = 1.0  # the last row (group 2)
    return w, sc, off, x


def test_int4_per_group_golden_fp16_and_transposed_weight():
    w, sc, off, x = _case2()
    wt = torch.tensor(w, dtype=I32)
    out = A2.npu_weight_quant_batchmatmul(x, _pack(w), sc, off, antiquant_group_size=G2)
    assert out.dtype == FP16
    # row 1, n = 1: w = -6, offset 0.5 + 1/512: -5.498046875 is halfway between fp16 -5.49609375 and -5.5 -> even
    #   -5.5; x scale 0.25 * 1.125 -> -1.546875
    assert out[1].float().tolist() == [1.375, -1.546875, -0.15625, 1.546875, -2.4375, -0.6083984375, 1.53125,
                                       -3.515625]
    assert out[0].float().tolist() == [-8.0, -8.984375, -10.0, -10.9765625, -12.0, -12.96875, -14.0, -14.96875]
    # the same weight as the transpose view (K/8, N) of a (N, K/8) packing (packed along K), and transposed
    # scale / offset views, as in the wheel's npu_convert_weight_to_int4pack example
    w_t = A2.npu_convert_weight_to_int4pack(wt.t().contiguous()).t()
    assert w_t.shape == (K2 // 8, N2) and not w_t.is_contiguous()
    out_t = A2.npu_weight_quant_batchmatmul(x, w_t, sc.t().contiguous().t(), off.t().contiguous().t(),
                                            antiquant_group_size=G2)
    assert torch.equal(out_t, out)


def test_int4_partial_last_group_bf16():
    k, n = 80, 8  # groups of 32, 32, 16
    w = [[((kk * 7 + nn) % 16) - 8 for nn in range(n)] for kk in range(k)]
    sc = torch.tensor([[0.25] * n, [0.5] * n, [0.75] * n], dtype=BF16)
    x = torch.zeros(1, k, dtype=BF16)
    x[0, 79] = 1.0
    out = A2.npu_weight_quant_batchmatmul(x, _pack(w), sc, antiquant_group_size=32)
    assert out.float().tolist() == [[0.75, 1.5, 2.25, 3.0, 3.75, 4.5, 5.25, -6.0]]  # row 79 = [1..7, -8] x 0.75
    with pytest.raises(NpuSimError, match=r"\(ceil\(K/group\) = 3, N = 8\)"):
        A2.npu_weight_quant_batchmatmul(x, _pack(w), sc[:2], antiquant_group_size=32)


def test_int4_pipeline_from_the_wheel_example():
    """int32 (k, n) values -> npu_convert_weight_to_int4pack -> npu_weight_quant_batchmatmul (and the (n, k) way)."""
    k, n = 16, 16
    gen = torch.Generator().manual_seed(0)
    w = torch.randint(-8, 8, (k, n), dtype=I32, generator=gen)
    x = torch.ones(1, k, dtype=FP16)
    want = [0.5 * s for s in w.sum(0).tolist()]  # exact integer sums
    sc = torch.full((1, n), 0.5, dtype=FP16)
    assert A2.npu_weight_quant_batchmatmul(x, A2.npu_convert_weight_to_int4pack(w), sc).float().tolist() == [want]
    packed_nk = A2.npu_convert_weight_to_int4pack(w.t().contiguous())  # (n, k/8)
    sc_t = torch.full((n, 1), 0.5, dtype=FP16).transpose(-1, -2)
    assert A2.npu_weight_quant_batchmatmul(x, packed_nk.transpose(-1, -2), sc_t).float().tolist() == [want]


def test_int4_argument_checks():
    x, w, sc, off = _case1()
    xf = x.to(FP16)
    cases = [
        (dict(x=x, weight=w, antiquant_scale=sc.float()), "antiquant_scale dtype"),
        (dict(x=x, weight=w, antiquant_scale=sc, antiquant_offset=off.half()), "antiquant_offset dtype"),
        (dict(x=x, weight=w, antiquant_scale=sc, antiquant_offset=off[:1]), "antiquant_offset shape"),
        (dict(x=x, weight=w, antiquant_scale=torch.ones(2, 8, dtype=BF16)), r"antiquant_scale must be \(1,\)"),
        (dict(x=x, weight=w, antiquant_scale=sc, bias=torch.ones(8, dtype=BF16)), "bias must be torch.float32"),
        (dict(x=xf, weight=w, antiquant_scale=sc.half(), bias=torch.ones(8)), "bias must be torch.float16"),
        (dict(x=x, weight=w, antiquant_scale=sc, bias=torch.ones(2, 8)), r"bias must be \(8,\) or \(1, 8\)"),
        (dict(x=x, weight=w, antiquant_scale=sc, weight_dtype=torch.int8), "weight_dtype"),
        (dict(x=x, weight=w.to(torch.int8), antiquant_scale=sc, weight_dtype=torch.quint4x2), "int32 holding 8"),
        (dict(x=x[:, :4], weight=w, antiquant_scale=sc), "holds K=8, N=8"),
        (dict(x=x.reshape(1, 3, 8), weight=w, antiquant_scale=sc), "2-D"),
        (dict(x=x, weight=w, antiquant_scale=sc, inner_precise=2), "inner_precise"),
        (dict(x=x, weight=torch.zeros(8, 1, dtype=I32).t(), antiquant_scale=sc), "with transpose is not supported"),
        (dict(x=x, weight=torch.zeros(8, 2, dtype=I32)[:, :1], antiquant_scale=sc), "contiguous"),
    ]
    for kw, msg in cases:
        with pytest.raises(NpuSimError, match=msg):
            A2.npu_weight_quant_batchmatmul(**kw)
    with pytest.raises(NotImplementedError, match="quant_scale"):
        A2.npu_weight_quant_batchmatmul(x, w, sc, quant_scale=torch.ones(8))
    # group sizes: multiples of 32 in [32, K-1]
    w96 = _pack([[0] * 8] * 96)
    x96 = torch.zeros(1, 96, dtype=BF16)
    for gs in (16, 48, 96, 128):
        with pytest.raises(NpuSimError, match="antiquant_group_size"):
            A2.npu_weight_quant_batchmatmul(x96, w96, torch.ones(-(-96 // gs), 8, dtype=BF16), antiquant_group_size=gs)
    assert A2.npu_weight_quant_batchmatmul(x96, w96, torch.ones(2, 8, dtype=BF16), antiquant_group_size=64).shape == (1, 8)


def test_int4_fractal_nz_rules():
    k, n = 128, 64
    x = torch.ones(1, k, dtype=BF16)
    w = A2.npu_convert_weight_to_int4pack(A2.npu_format_cast(torch.ones(k, n, dtype=I32), 29))
    assert A2.get_npu_format(w) == 29
    ok = A2.npu_weight_quant_batchmatmul(x, w, torch.full((2, n), 0.5, dtype=BF16), antiquant_group_size=64)
    assert ok.float().tolist() == [[64.0] * n]  # 128 x 1 x 0.5
    with pytest.raises(NpuSimError, match="group 64 or 128|antiquant_group_size 64 or 128"):
        A2.npu_weight_quant_batchmatmul(x, w, torch.ones(4, n, dtype=BF16), antiquant_group_size=32)
    with pytest.raises(NpuSimError, match="per-channel: the weight must be transposed"):
        A2.npu_weight_quant_batchmatmul(x, w, torch.ones(n, dtype=BF16))
    with pytest.raises(NpuSimError, match="not per-tensor"):
        A2.npu_weight_quant_batchmatmul(x, w, torch.ones(1, dtype=BF16))
    w_n32 = A2.npu_convert_weight_to_int4pack(A2.npu_format_cast(torch.ones(k, 32, dtype=I32), 29))
    with pytest.raises(NpuSimError, match="N % 64"):
        A2.npu_weight_quant_batchmatmul(x, w_n32, torch.ones(2, 32, dtype=BF16), antiquant_group_size=64)


@pytest.mark.parametrize("dt", [BF16, FP16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("gs", [0, 32, 64, 128], ids=["per-channel", "g32", "g64", "g128"])
@pytest.mark.parametrize("trans", [False, True], ids=["kn", "nk-view"])
def test_int4_w4a16_sweep_against_unpacked_weights(dt, gs, trans):
    """The W4A16 layouts (per-channel, groups 32/64/128, both weight layouts) against the unpacked int weights:
    catches packing orientation and group-to-K mapping at realistic sizes (K = 320: 10 / 5 / 3 groups, last partial)."""
    gen = torch.Generator().manual_seed(gs + trans)
    m, k, n = 5, 320, 48
    q = torch.randint(-8, 8, (k, n), dtype=I32, generator=gen)  # int4 values, logical (K, N)
    g = -(-k // gs) if gs else 1
    sc = (torch.rand(g, n, generator=gen) * 0.02 + 0.001).to(dt)
    zp = torch.randint(-3, 4, (g, n), generator=gen).to(dt)  # msModelSlim zero point: w = (q - zp) * s
    x = torch.randn(m, k, generator=gen).to(dt)
    w = A2.npu_convert_weight_to_int4pack(q.t().contiguous()).t() if trans else A2.npu_convert_weight_to_int4pack(q)
    kw = dict(antiquant_group_size=gs) if gs else {}
    out = A2.npu_weight_quant_batchmatmul(x, w, sc if gs else sc[0], -zp if gs else -zp[0], **kw)  # the op adds
    # reference: loop over K groups on the original int values, same roundings (x dtype after add and multiply)
    deq = torch.empty(k, n, dtype=torch.float64)
    for kk in range(0, k, gs or k):
        gi = kk // gs if gs else 0
        blk = q[kk:kk + (gs or k)].double()
        t = (blk - zp[gi].double()).to(dt).double()
        deq[kk:kk + (gs or k)] = (t * sc[gi].double()).to(dt).double()
    ref = (x.double() @ deq).to(dt)
    assert out.dtype == dt and out.shape == (m, n)
    ulp = torch.finfo(dt).eps
    assert bool(((out.double() - ref.double()).abs() <= ref.double().abs() * ulp + 1e-6).all())


def test_int4_soc_specific_rules():
    """A5 (aclnnWeightQuantBatchMatmulV2, Ascend 950 tables): bias may be bf16 for bf16 x; NZ int4 needs a
    non-transposed weight for per-channel too; x must be contiguous.  A2/A3 keep fp32-only bias for bf16 x."""
    x, w, sc, off = _case1()
    b16 = torch.full((8,), 0.5, dtype=BF16)
    with pytest.raises(NpuSimError, match="bias must be torch.float32 for"):
        A2.npu_weight_quant_batchmatmul(x, w, sc, off, bias=b16)
    a5 = A5.npu_weight_quant_batchmatmul(x, w, sc, off, bias=b16)
    assert torch.equal(a5, A2.npu_weight_quant_batchmatmul(x, w, sc, off, bias=b16.float()))
    with pytest.raises(NpuSimError, match="contiguous on A5"):
        A5.npu_weight_quant_batchmatmul(x.t().contiguous().t(), w, sc)
    k, n = 128, 64
    w_nz = A5.npu_convert_weight_to_int4pack(A5.npu_format_cast(torch.ones(k, n, dtype=I32), 29))
    xk = torch.ones(1, k, dtype=BF16)
    assert A5.npu_weight_quant_batchmatmul(xk, w_nz, torch.full((n,), 0.5, dtype=BF16)).float().tolist() == [[64.0] * n]
    with pytest.raises(NpuSimError, match="per-channel: the weight must be transposed"):  # the A2 rule
        A2.npu_weight_quant_batchmatmul(xk, w_nz, torch.full((n,), 0.5, dtype=BF16))
    with pytest.raises(NpuSimError, match="on A5: per-channel or per-group"):
        A5.npu_weight_quant_batchmatmul(xk, w_nz, torch.ones(1, dtype=BF16))
    # int8 weights follow the same bias rule
    w8 = torch.tensor([[2], [3]], dtype=torch.int8)
    x8 = torch.ones(1, 2, dtype=BF16)
    assert A5.npu_weight_quant_batchmatmul(x8, w8, torch.tensor([0.5], dtype=BF16),
                                           bias=torch.tensor([1.0], dtype=BF16)).float().tolist() == [[3.5]]


def test_int4_parameter_flow_like_vllm_ascend():
    """vllm-ascend's dense wNa16 kernel: ``layer.weight_packed.data = npu_convert_weight_to_int4pack(q_kn)``, scales
    (G, N), then ``npu_weight_quant_batchmatmul(x=x, weight=layer.weight_packed, ...)`` with keyword arguments."""
    k, n, gs = 128, 16, 64
    gen = torch.Generator().manual_seed(3)
    q = torch.randint(-8, 8, (k, n), dtype=I32, generator=gen)
    layer = torch.nn.Module()
    layer.weight_packed = torch.nn.Parameter(torch.empty(n, k // 8, dtype=I32), requires_grad=False)
    layer.weight_packed.data = A2.npu_convert_weight_to_int4pack(q)
    layer.weight_scale = torch.nn.Parameter(torch.full((k // gs, n), 0.25, dtype=BF16), requires_grad=False)
    x = torch.ones(2, k, dtype=BF16)
    out = A2.npu_weight_quant_batchmatmul(x=x, weight=layer.weight_packed, antiquant_scale=layer.weight_scale,
                                          antiquant_offset=None, antiquant_group_size=gs, bias=None)
    want = (0.25 * q.sum(0).double()).to(BF16).float().tolist()  # q * 0.25 exact, fp32 sum exact, one bf16 rounding
    assert out.float().tolist() == [want] * 2
    assert layer.weight_packed.shape == (k, n // 8)
