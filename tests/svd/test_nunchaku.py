"""nunchaku SVDQuant checkpoints: the writer's index formulas against the store-order tables in nunchaku's packer,
the reader's inversion bit for bit, the loaded layers on every backend and through ``load_quantized``, errors."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).parent))
import nunchaku_pack as NP  # noqa: E402

from omni_npu_quant.backends.registry import get_backend  # noqa: E402
from omni_npu_quant.checkpoint.nunchaku import NunchakuError, is_nunchaku, load_nunchaku  # noqa: E402
from omni_npu_quant.schemes.registry import get_scheme  # noqa: E402


def stored_order(positions: torch.Tensor) -> torch.Tensor:
    """canonical flat index at each stored position."""
    inv = torch.empty(positions.numel(), dtype=torch.int64)
    inv[positions.reshape(-1)] = torch.arange(positions.numel())
    return inv


def test_writer_matches_nunchakus_documented_store_orders():
    # pack_scale, warp_n = 128: "0 1 8 9 / 2 3 10 11 / 4 5 12 13 / 6 7 14 15 / 16 17 24 25 ... 118 119 126 127"
    order = stored_order(NP.scale_positions(128, 1))
    assert order[:20].tolist() == [0, 1, 8, 9, 2, 3, 10, 11, 4, 5, 12, 13, 6, 7, 14, 15, 16, 17, 24, 25]
    assert order[-4:].tolist() == [118, 119, 126, 127]
    # pack_micro_scale: lane 0 "0 32 64 96", lane 1 "8 40 72 104", lane 4 "1 33 65 97", 4 groups per entry
    rows = stored_order(NP.micro_scale_positions(128, 4)) // 4
    assert rows[:16].tolist() == [0] * 4 + [32] * 4 + [64] * 4 + [96] * 4
    assert rows[16:32:4].tolist() == [8, 40, 72, 104] and rows[4 * 16:4 * 16 + 16:4].tolist() == [1, 33, 65, 97]
    # weight: int32 word = 8 consecutive k of one row; then k_pack (+32), n_pack (+8 rows), k lanes (+8 k), n lanes
    n, k = 128, 128
    words = stored_order(NP.weight_positions(n, k)).view(-1, 8)
    rc = lambda w: (int(words[w, 0]) // k, [int(v) % k for v in words[w]])  # noqa: E731
    assert rc(0) == (0, list(range(0, 8))) and rc(1) == (0, list(range(32, 40)))
    assert rc(2) == (8, list(range(0, 8))) and rc(4) == (0, list(range(8, 16))) and rc(16) == (1, list(range(8)))


def _write(tmp_path, layers, extra=None, name="model.safetensors"):
    t = {f"{p}.{k}": v.contiguous() for p, d in layers.items() for k, v in d.items()}
    t.update(extra or {})
    path = tmp_path / name
    save_file(t, str(path))
    return path


def _same(a, b):
    if a.dtype == torch.float8_e4m3fn:
        a, b = a.view(torch.uint8), b.view(torch.uint8)
    return a.dtype == b.dtype and torch.equal(a, b)


def _layer(precision, n=256, k=384, rank=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) * 0.05
    w[:, 5] *= 25  # an outlier input channel
    b = torch.randn(n, generator=g) * 0.1
    sm = torch.rand(k, generator=g) + 0.5
    sm[5] = 6.0
    nun, canon = NP.svdquant_layer(w, b, sm, rank, precision)
    return w, nun, canon


@pytest.mark.parametrize("precision", ["int4", "nvfp4"])
def test_reader_recovers_canonical_tensors_bit_for_bit(tmp_path, precision):
    _, nun, canon = _layer(precision)
    path = _write(tmp_path, {"blocks.0.attn.to_q": nun}, {"blocks.0.norm.weight": torch.ones(8)})
    assert is_nunchaku(path) and is_nunchaku(tmp_path) and not is_nunchaku(tmp_path / "nope")
    ck = load_nunchaku(tmp_path)
    name, ts = ck.layers["blocks.0.attn.to_q"]
    assert name == ("svdq_int4" if precision == "int4" else "svdq_nvfp4")
    assert sorted(ts) == sorted(canon)
    for key in canon:
        assert _same(ts[key], canon[key]), key
    assert list(ck.float_tensors) == ["blocks.0.norm.weight"]
    assert ck.ignored == ["blocks.0.attn.to_q.smooth_factor_orig"]


@pytest.mark.parametrize("precision", ["int4", "nvfp4"])
def test_loaded_layer_runs_on_every_backend(tmp_path, precision):
    w, nun, canon = _layer(precision, seed=1)
    _write(tmp_path, {"fc": nun})
    name, ts = load_nunchaku(tmp_path).layers["fc"]
    s = get_scheme(name)
    x = (torch.randn(3, 7, w.shape[1]) * 0.5).bfloat16()
    y_float = x.float() @ w.t() + canon["bias"].float()
    outs = {}
    for bn in ("reference", "npu-sim:A5", "npu-sim:A2", "npu-sim:A3"):
        be = get_backend(bn)
        p = be.prepare(s, ts, torch.bfloat16, where="fc")
        outs[bn] = be.apply(p, x)
    for bn in ("npu-sim:A5", "npu-sim:A2", "npu-sim:A3"):  # the decoded fallback runs the reference math
        assert torch.equal(outs[bn], outs["reference"]), bn
    rel = ((outs["reference"].float() - y_float).norm() / y_float.norm()).item()
    # without the branch (residual only) the error is far larger: the branch carries the outlier channel
    be = get_backend("reference")
    res_only = be.apply(be.prepare(s.residual, s.split(ts)[0], torch.bfloat16), x).float()
    rel_res = ((res_only - y_float).norm() / y_float.norm()).item()
    assert rel < 0.2 and rel_res > 3 * rel, (rel, rel_res)


def test_load_quantized_takes_the_nunchaku_layers(tmp_path):
    from omni_npu_quant.integrations.torch.api import load_quantized

    w, nun, canon = _layer("int4", n=128, k=256, rank=16, seed=2)
    _write(tmp_path, {"blk.proj": nun})
    ck = load_nunchaku(tmp_path)
    model = torch.nn.Sequential()
    blk = torch.nn.Module()
    blk.proj = torch.nn.Linear(256, 128, dtype=torch.bfloat16)
    model.add_module("blk", blk)
    load_quantized(model, ck.entries(), "npu-sim:A5")
    x = torch.randn(4, 256).bfloat16()
    be = get_backend("reference")
    ref = be.apply(be.prepare(get_scheme("svdq_int4"), ck.layers["blk.proj"][1], torch.bfloat16), x)
    assert torch.equal(model.blk.proj(x), ref)


@pytest.mark.parametrize("mutate, msg", [
    (lambda d: d.__setitem__("qweight", d["qweight"].to(torch.int16)), "'fc.qweight' must be int8"),
    (lambda d: d.__setitem__("qweight", d["qweight"][:64]), "N % 128 == 0"),
    (lambda d: d.__setitem__("wscales", d["wscales"][:2]), "'fc.wscales' has shape"),
    (lambda d: d.__setitem__("wscales", d["wscales"].float()), "'fc.wscales' has dtype"),
    (lambda d: d.pop("proj_up"), "no proj_up / lora_up"),
    (lambda d: (d.__setitem__("proj_down", d["proj_down"][:, :8]), d.__setitem__("proj_up", d["proj_up"][:, :8])),
     "rank % 16 == 0"),
    (lambda d: d.__setitem__("proj_up", d["proj_up"].repeat(1, 2)), "has rank 32, fc.proj_down has rank 16"),
    (lambda d: d.__setitem__("wtscale", torch.ones(())), "belongs to NVFP4 layers"),
    (lambda d: d.__setitem__("smooth_factor", d["smooth_factor"][:100]), "'fc.smooth_factor' must hold K"),
    (lambda d: d.__setitem__("smooth_factor", torch.zeros_like(d["smooth_factor"])), "smooth_factor' holds zeros"),
])
def test_bad_checkpoints_name_file_and_tensor(tmp_path, mutate, msg):
    _, nun, _ = _layer("int4", n=128, k=256, rank=16, seed=3)
    mutate(nun)
    _write(tmp_path, {"fc": nun})
    with pytest.raises(NunchakuError, match=msg) as e:
        load_nunchaku(tmp_path)
    assert "model.safetensors" in str(e.value)


def test_missing_paths_are_clear(tmp_path):
    with pytest.raises(NunchakuError, match="no such file or directory"):
        load_nunchaku(tmp_path / "absent")
    with pytest.raises(NunchakuError, match="no .safetensors file"):
        load_nunchaku(tmp_path)
