"""The optional nunchaku kernel entry (``cuda.svdq_nunchaku``, kernels/cuda/svdq_nunchaku.py) on the CPU: nunchaku is
not installable here, so the kernel itself is untested; these tests check its refusals, the layout conversion it
relies on (canonical -> nunchaku's layout -> our reader: bit for bit; and equal to the independent index-formula
packer tests/svd/nunchaku_pack.py), and, with a fake ``nunchaku`` module, that ``apply`` calls nunchaku's two ops the
way ``SVDQW4A4Linear.forward`` does, with operands that decode (through our reader) to the layer's canonical
tensors: the fake computes the reference from what it was handed and must equal the reference backend bit for bit."""
from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).parent))
import nunchaku_pack as NP  # noqa: E402

from omni_npu_quant.backends import ReferenceBackend  # noqa: E402
from omni_npu_quant.backends.capability import capability_row  # noqa: E402
from omni_npu_quant.checkpoint.nunchaku import load_nunchaku  # noqa: E402
from omni_npu_quant.kernels.base import KernelRefusal, Target  # noqa: E402
from omni_npu_quant.kernels.cuda.svdq_nunchaku import PAD_M, CudaSVDQNunchaku  # noqa: E402
from omni_npu_quant.numerics import nunchaku_layout as L  # noqa: E402
from omni_npu_quant.platform import DeviceInfo, device_from_name  # noqa: E402
from omni_npu_quant.schemes.registry import get_scheme  # noqa: E402

SCHEME = {"int4": "svdq_int4", "nvfp4": "svdq_nvfp4"}


def _same(a, b):
    if a.dtype == torch.float8_e4m3fn:
        a, b = a.view(torch.uint8), b.view(torch.uint8)
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)


def _layer(precision, n=256, k=384, rank=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) * 0.05
    w[:, 7] *= 20
    b = torch.randn(n, generator=g) * 0.1
    sm = torch.rand(k, generator=g) + 0.5
    return NP.svdquant_layer(w, b, sm, rank, precision)


@pytest.mark.parametrize("precision", ["int4", "nvfp4"])
def test_layout_round_trip_bit_for_bit(tmp_path, precision):
    nun, canon = _layer(precision)
    ours = L.to_nunchaku_layout(SCHEME[precision], canon)
    assert sorted(ours) == sorted(k for k in nun if k != "smooth_factor_orig")
    for key, v in ours.items():  # the package's reshape/permute packer = the test's index-formula packer
        assert _same(v, nun[key]), key
    save_file({f"blk.fc.{k}": v for k, v in ours.items()}, str(tmp_path / "m.safetensors"))
    name, back = load_nunchaku(tmp_path).layers["blk.fc"]
    assert name == SCHEME[precision] and sorted(back) == sorted(canon)
    for key in canon:
        assert _same(back[key], canon[key]), key


def test_layout_errors_name_the_rule():
    with pytest.raises(L.NunchakuLayoutError, match="N % 128 == 0 and K % 128 == 0"):
        L.pack_weight(torch.zeros(64, 128, dtype=torch.int8), signed=True)
    with pytest.raises(L.NunchakuLayoutError, match="multiples of 16"):
        L.pack_lowrank(torch.zeros(8, 128), down=True)
    with pytest.raises(L.NunchakuLayoutError, match="not svdq_int4 / svdq_nvfp4"):
        L.to_nunchaku_layout("mxfp4_svd", {})


def test_refusals_without_nunchaku(monkeypatch):
    monkeypatch.setitem(sys.modules, "nunchaku", None)  # any 'import nunchaku' raises ImportError
    ok, why = CudaSVDQNunchaku.is_supported(device_from_name("sm90"))
    assert not ok and "SM75/80/86/89/120a/121a" in why and "sm90" in why
    ok, why = CudaSVDQNunchaku.is_supported(device_from_name("sm80"))
    assert not ok and "nunchaku is not importable" in why
    row = capability_row("svdq_int4", "sm80")
    assert row.kernel == "cuda.svd"  # the Triton branch + reference residual, as before


def _fake_nunchaku(calls, ref_tensors_seen):
    """A ``nunchaku`` package whose two ops check the operands' types and shapes as nunchaku's C++ asserts them,
    decode them with our reader and compute the reference from them."""
    def quantize(input, output=None, oscales=None, lora_down=None, lora_act_out=None, smooth=None, fuse_glu=False,
                 fp4=False, pad_size=256):
        m, k = input.shape
        mp = -(-m // pad_size) * pad_size
        g = 16 if fp4 else 64
        assert input.dtype in (torch.bfloat16, torch.float16) and not fuse_glu
        assert lora_down.dtype == input.dtype and lora_down.shape[0] == k and smooth.shape == (k,)
        assert smooth.dtype == input.dtype
        calls.append(("quantize", dict(x=input.clone(), lora_down=lora_down, smooth=smooth, fp4=fp4, pad=pad_size)))
        qx = torch.zeros(mp, k // 2, dtype=torch.uint8)
        sc = torch.zeros(k // g, mp, dtype=torch.float8_e4m3fn if fp4 else input.dtype)
        lora = torch.zeros(mp, lora_down.shape[1], dtype=torch.float32)
        lora[:m] = input.float() @ L.unpack_lowrank(lora_down, down=True).float().t()
        return qx, sc, lora

    def gemm(act=None, wgt=None, out=None, ascales=None, wscales=None, lora_act_in=None, lora_up=None, bias=None,
             fp4=False, alpha=1.0, wcscales=None, act_unsigned=False, **rest):
        assert not rest or all(v in (None, False) for v in rest.values()), rest
        q = calls[-1][1]
        n = wgt.shape[0]
        m = out.shape[0]
        assert wgt.dtype == torch.int8 and act.shape == (act.shape[0], wgt.shape[1]) and act.shape[0] % 256 == 0
        assert 0 <= act.shape[0] - m < 256 and lora_act_in.shape == (act.shape[0], lora_up.shape[1])
        assert lora_act_in.dtype == torch.float32 and ascales.shape[1] == act.shape[0]
        assert isinstance(alpha, float) and act_unsigned is False and fp4 == q["fp4"]
        for t in (out, lora_up) + tuple(v for v in (bias, wcscales) if v is not None):
            assert t.dtype == q["x"].dtype  # nunchaku's one-16-bit-dtype rule
        assert wscales.dtype == (torch.float8_e4m3fn if fp4 else q["x"].dtype)
        canon = {"weight": L.unpack_weight(wgt, signed=not fp4),
                 "smooth_factor": L.unpack_vector(q["smooth"]),
                 "svd_lowrank_l1": L.unpack_lowrank(q["lora_down"], down=True),
                 "svd_lowrank_l2": L.unpack_lowrank(lora_up, down=False)}
        if fp4:
            from omni_npu_quant.numerics.fp4 import pack_fp4
            canon.update(weight=pack_fp4(canon["weight"]), weight_scale=L.unpack_micro_scales(wscales, n),
                         alpha=torch.tensor([alpha], dtype=torch.float32))
            if wcscales is not None:
                canon["wcscales"] = L.unpack_vector(wcscales)
        else:
            canon["weight_scale"] = L.unpack_wscales(wscales, n)
        if bias is not None:
            canon["bias"] = L.unpack_vector(bias)
        ref_tensors_seen.append(canon)
        s = get_scheme("svdq_nvfp4" if fp4 else "svdq_int4")
        be = ReferenceBackend()
        out.copy_(be.apply(be.prepare(s, canon, q["x"].dtype), q["x"]))
        calls.append(("gemm", dict(m=m, n=n, bias=bias is not None)))

    pkg, ops, mg, mq = (types.ModuleType(n) for n in ("nunchaku", "nunchaku.ops", "nunchaku.ops.gemm",
                                                       "nunchaku.ops.quantize"))
    mg.svdq_gemm_w4a4_cuda, mq.svdq_quantize_w4a4_act_fuse_lora_cuda = gemm, quantize
    pkg.ops, ops.gemm, ops.quantize = ops, mg, mq
    return {"nunchaku": pkg, "nunchaku.ops": ops, "nunchaku.ops.gemm": mg, "nunchaku.ops.quantize": mq}


@pytest.mark.parametrize("precision,family", [("int4", "sm80"), ("int4", "sm89"), ("nvfp4", "sm120")])
def test_fake_nunchaku_gets_the_right_operands(monkeypatch, precision, family):
    calls, seen = [], []
    for name, mod in _fake_nunchaku(calls, seen).items():
        monkeypatch.setitem(sys.modules, name, mod)
    dev = device_from_name(family)
    ok, why = CudaSVDQNunchaku.is_supported(dev)
    assert ok, why
    # selection: with nunchaku importable the entry comes before cuda.svd on its families, not on SM90
    assert capability_row(SCHEME[precision], family).kernel == "cuda.svdq_nunchaku"
    assert capability_row(SCHEME[precision], "sm90").kernel == "cuda.svd"
    kern = CudaSVDQNunchaku(Target(DeviceInfo("cuda", family, f"fake {family}"), "cpu"))
    s = get_scheme(SCHEME[precision])
    _, canon = _layer(precision, seed=2)
    n, k = canon["svd_lowrank_l2"].shape[0], canon["svd_lowrank_l1"].shape[1]
    assert kern.can_implement(s, n, k, torch.bfloat16) == (True, "")
    p = kern.prepare(s, canon, torch.bfloat16, n, k, "blk.fc")
    ref = ReferenceBackend()
    pr = ref.prepare(s, canon, torch.bfloat16)
    g = torch.Generator().manual_seed(3)
    for m in (1, 16, 300):
        x = torch.randn(m, k, generator=g).bfloat16()
        for add_bias in (False, True):  # the last call (checked below) carries the bias
            calls.clear()
            y = kern.apply(p, x, add_bias=add_bias)
            assert [c[0] for c in calls] == ["quantize", "gemm"] and calls[0][1]["pad"] == PAD_M
            assert calls[1][1] == {"m": m, "n": n, "bias": add_bias}
            assert y.dtype == torch.bfloat16 and y.shape == (m, n)
            assert torch.equal(y, ref.apply(pr, x, add_bias=add_bias)), (m, add_bias)
    # what nunchaku was handed decodes to the canonical tensors, bit for bit
    got = seen[-1]
    for key in canon:
        assert key in got and torch.equal(got[key].float(), canon[key].float()), key
    assert got.keys() == canon.keys()


def test_fake_nunchaku_refusals(monkeypatch):
    for name, mod in _fake_nunchaku([], []).items():
        monkeypatch.setitem(sys.modules, name, mod)
    kern = CudaSVDQNunchaku(Target(DeviceInfo("cuda", "sm89", "fake sm89"), "cpu"))
    ok, why = kern.can_implement(get_scheme("svdq_nvfp4"), 256, 256, torch.bfloat16)
    assert not ok and "NVFP4 needs the FP4 MMA" in why
    ok, why = kern.can_implement(get_scheme("svdq_int4"), 256, 256, torch.float32)
    assert not ok and "bf16 / fp16" in why
    ok, why = kern.can_implement(get_scheme("svdq_int4"), 192, 256, torch.bfloat16)
    assert not ok and "N % 128 == 0" in why
    ok, why = kern.can_implement(get_scheme("mxfp4_svd"), 256, 256, torch.bfloat16)
    assert not ok
    s = get_scheme("svdq_int4", rank=8)
    t = s.quantize_weight(torch.randn(256, 256) * 0.05)
    with pytest.raises(KernelRefusal, match="rank 8: nunchaku's low-rank kernels need rank % 16 == 0"):
        kern.prepare(s, t, torch.bfloat16, 256, 256, "fc")
