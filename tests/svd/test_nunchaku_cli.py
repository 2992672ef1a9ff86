"""``omni-npu-quant parity`` and ``inspect`` on nunchaku-format SVDQuant safetensors (synthetic files in nunchaku's
packing, ``tests/svd/nunchaku_pack.py``): layer-only and end to end in a built-in model, every layer on every
backend, the numbers recomputed here from the layers' own tensors, faults reported, bad files named."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).parent))
import nunchaku_pack as NP  # noqa: E402

from omni_npu_quant.cli.main import main  # noqa: E402

BACKENDS = "reference,npu-sim:A2,npu-sim:A5"
RUN = ["--backends", BACKENDS, "--repeat", "0", "--no-plot", "-q"]
# prefix -> (precision, N, K, rank); ranks must be multiples of 16 in nunchaku's low-rank packing (48: not a power of 2)
LAYERS = {"blocks.0.attn.to_q": ("int4", 256, 384, 48), "blocks.0.ff.proj_in": ("nvfp4", 128, 256, 16),
          "blocks.1.attn.to_k": ("int4", 128, 128, 32)}
AWQ = "blocks.0.norm1.linear"  # an AWQW4A16Linear (qweight + wscales + wzeros): listed, not read


def _layer(precision, n, k, rank, seed, w=None, bias=True):
    g = torch.Generator().manual_seed(seed)
    if w is None:
        w = torch.randn(n, k, generator=g) * 0.05
        w[:, 5] *= 25  # an outlier input channel, carried by smooth_factor and the branch
    b = torch.randn(n, generator=g) * 0.1 if bias else None
    sm = torch.rand(k, generator=g) + 0.5
    sm[5] = 6.0
    nun, canon = NP.svdquant_layer(w.float(), b, sm, rank, precision)
    return w.float(), nun, canon


def _awq(n=128, k=256):
    return {"qweight": torch.randint(-2 ** 31, 2 ** 31 - 1, (n // 4, k // 2), dtype=torch.int32),
            "wscales": torch.ones(k // 64, n, dtype=torch.bfloat16), "wzeros": torch.zeros(k // 64, n,
                                                                                            dtype=torch.bfloat16),
            "bias": torch.zeros(n, dtype=torch.bfloat16)}


def _save(path, layers, extra=None):
    t = {f"{p}.{k}": v.contiguous() for p, d in layers.items() for k, v in d.items()}
    t.update(extra or {})
    save_file(t, str(path))
    return path


@pytest.fixture(scope="module")
def nfile(tmp_path_factory):
    """(file, {prefix: (float weight, canonical tensors)}): two INT4 layers, one NVFP4, one AWQ W4A16 layer."""
    d = tmp_path_factory.mktemp("nunchaku")
    built = {p: _layer(*spec, seed=i) for i, (p, spec) in enumerate(LAYERS.items())}
    path = _save(d / "svdq-mixed_r48-tiny.safetensors", {p: nun for p, (_, nun, _) in built.items()} | {AWQ: _awq()},
                 {"blocks.0.norm.weight": torch.ones(8, dtype=torch.bfloat16)})
    return path, {p: (w, canon) for p, (w, _, canon) in built.items()}


def _parity(args, out):
    rc = main(["parity", "--out", str(out)] + RUN + args)
    rep = json.loads((out / "parity.json").read_text()) if (out / "parity.json").exists() else None
    return rc, rep


def _effective_weight(canon, precision, k):
    """fp32 (N, K) weight on the raw input, from the canonical tensors by the SVDQuant algebra (written out here)."""
    from omni_npu_quant.numerics.fp4 import decode_e2m1, unpack_fp4

    if precision == "int4":
        w = canon["weight"].float() * canon["weight_scale"].float().repeat_interleave(64, dim=1)
    else:
        w = decode_e2m1(unpack_fp4(canon["weight"], k)) * canon["weight_scale"].float().repeat_interleave(16, dim=1)
        w = w * canon["alpha"].float() * canon["wcscales"].float().unsqueeze(1)
    return w / canon["smooth_factor"].float() + canon["svd_lowrank_l2"].float() @ canon["svd_lowrank_l1"].float()


def test_layer_only_every_layer_on_every_backend_strict(nfile, tmp_path):
    path, built = nfile
    rc, rep = _parity(["--checkpoint", str(path), "--fail-on", "strict", "--batch", "1", "--seq", "32"], tmp_path / "o")
    assert rc == 0, rep and rep["verdict"]
    assert rep["source"]["description"].startswith("nunchaku checkpoint svdq-mixed_r48-tiny.safetensors "
                                                   "(2 svdq_int4, 1 svdq_nvfp4), layer-only")
    assert "layer-only" in rep["source"]["description"] and rep["end_to_end"] == {}
    assert AWQ in rep["source"]["skipped_layers"] and "AWQ W4A16" in rep["source"]["skipped_layers"][AWQ]
    assert [L["name"] for L in rep["layers"]] == sorted(LAYERS)
    for L in rep["layers"]:
        prec, n, k, _ = LAYERS[L["name"]]
        assert L["scheme"] == ("svdq_int4" if prec == "int4" else "svdq_nvfp4") and (L["n"], L["k"]) == (n, k)
        assert set(L["results"]) == set(BACKENDS.split(",")), L["results"].keys()
        for b in ("npu-sim:A2", "npu-sim:A5"):
            r = L["results"][b]
            assert r["status"] == "ok" and r["mode"] == "exact fallback", r
            # the decoded fallback runs the reference's own INT4 / NVFP4 quantizer: bytes identical, outputs identical
            assert r["quant"]["identical"] and set(r["quant"]["keys"]) == {"x_q", "x_scale"}, r["quant"]
            assert r["vs_reference"]["identical"], r["vs_reference"]
    assert rep["verdict"]["strict"]["pass"] and rep["verdict"]["smoke"]["pass"]
    md = (tmp_path / "o" / "parity.md").read_text()  # side by side: bytes identical, 0 ulp from the reference
    for b in ("npu-sim:A2", "npu-sim:A5"):
        assert f"| blocks.0.ff.proj_in | svdq_nvfp4 | (128, 256) | {b} | exact fallback | identical | 0 | 0 |" in md


def test_layer_numbers_are_those_of_the_layers(nfile, tmp_path):
    """vs_float of the reference recomputed here: the effective weight (residual / smooth_factor + L2 . L1, from the
    canonical tensors the writer produced) times the run's synthetic input, against the reference kernel's output."""
    from omni_npu_quant.backends.registry import get_backend
    from omni_npu_quant.parity.metrics import compare
    from omni_npu_quant.parity.source import build_source
    from omni_npu_quant.schemes.registry import get_scheme

    path, built = nfile
    rc, rep = _parity(["--checkpoint", str(path), "--batch", "1", "--seq", "32"], tmp_path / "o")
    assert rc == 0
    src = build_source(checkpoint=str(path), batch=1, seq=32)
    be = get_backend("reference")
    for L in rep["layers"]:
        name = L["name"]
        prec, n, k, _ = LAYERS[name]
        w_float, canon = built[name]
        x = src.synthetic_inputs[name]
        w_eff = _effective_weight(canon, prec, k)
        # the stored layer represents the float weight it was made from (up to its residual's 4-bit error)
        assert ((w_eff - w_float).norm() / w_float.norm()).item() < 0.1
        y_float = (x.float() @ w_eff.t() + canon["bias"].float()).to(torch.bfloat16)
        s = get_scheme(L["scheme"])
        y_ref = be.apply(be.prepare(s, canon, torch.bfloat16, where=name), x)
        want = compare(y_ref, y_float)
        got = L["results"]["reference"]["vs_float"]
        assert got["rel_l2"] == pytest.approx(want["rel_l2"], rel=1e-6, abs=1e-9), name
        assert got["cosine"] == pytest.approx(want["cosine"], rel=1e-9), name
        assert 0 < got["rel_l2"] < 0.3  # activation quantization error: present, bounded


def test_a_backend_that_changes_one_quantizer_byte_fails_strict(nfile, tmp_path, monkeypatch):
    from omni_npu_quant.backends.registry import get_backend
    from omni_npu_quant.parity import backends as B

    class Flip:
        """npu-sim:A5, but one activation byte of blocks.1.attn.to_k flipped (a wrong quantizer on one layer)."""

        def __init__(self, inner):
            self._inner = inner

        def __getattr__(self, a):
            return getattr(self._inner, a)

        def quantize_activation(self, p, x):
            q = self._inner.quantize_activation(p, x)
            if x.shape[-1] == 128:
                q["x_q"] = q["x_q"].clone()
                q["x_q"].view(-1)[3] ^= 1
            return q

    real = B.resolve_backend
    monkeypatch.setattr(B, "resolve_backend", lambda n: B.BackendStatus(n, Flip(get_backend(n)))
                        if n == "npu-sim:A5" else real(n))
    path, _ = nfile
    rc, rep = _parity(["--checkpoint", str(path), "--fail-on", "strict", "--seq", "16", "--batch", "1"], tmp_path / "o")
    assert rc == 1
    fails = rep["verdict"]["strict"]["failures"]
    assert fails and all(f.startswith("blocks.1.attn.to_k [npu-sim:A5]: quantizer bytes differ") for f in fails), fails
    assert not rep["layers"][2]["results"]["npu-sim:A5"]["quant"]["identical"]
    assert rep["layers"][0]["results"]["npu-sim:A5"]["quant"]["identical"]


def test_layers_filter_and_directory_form(nfile, tmp_path):
    path, _ = nfile
    d = tmp_path / "ckpt"
    d.mkdir()
    (d / path.name).write_bytes(path.read_bytes())
    save_file({"x.weight": torch.ones(4)}, str(d / "unquantized_layers.safetensors"))  # a float file beside it
    rc, rep = _parity(["--checkpoint", str(d), "--layers", "blocks.0.*,!*.ff.*", "--seq", "8", "--batch", "1"],
                      tmp_path / "o")
    assert rc == 0 and [L["name"] for L in rep["layers"]] == ["blocks.0.attn.to_q"]


def _tiny_dit_file(tmp_path, corrupt=False):
    from omni_npu_quant.models.tiny import build_tiny

    mods = dict(build_tiny("dit", seed=0, dtype=torch.bfloat16).named_modules())
    spec = {"blocks.0.ff.proj_in": ("int4", 48), "blocks.1.attn.to_v": ("nvfp4", 32)}
    layers = {}
    for i, (p, (prec, rank)) in enumerate(spec.items()):
        lin = mods[p]
        _, nun, _ = _layer(prec, lin.out_features, lin.in_features, rank, seed=10 + i, w=lin.weight.detach(),
                           bias=False)
        if lin.bias is not None:
            nun["bias"] = NP.pack_vector(lin.bias.detach().bfloat16())
        layers[p] = nun
    if corrupt:  # a wrong layout of one layer's qweight (K tiles rotated), as a broken writer would store it
        layers["blocks.1.attn.to_v"]["qweight"] = layers["blocks.1.attn.to_v"]["qweight"].roll(64, dims=1)
    return _save(tmp_path / ("bad.safetensors" if corrupt else "svdq.safetensors"), layers)


def test_end_to_end_in_a_model_with_matching_linears(tmp_path):
    path = _tiny_dit_file(tmp_path)
    rc, rep = _parity(["--checkpoint", str(path), "--model", "tiny-dit", "--fail-on", "strict", "--seq", "16",
                       "--batch", "1"], tmp_path / "o")
    assert rc == 0, rep["verdict"]
    assert rep["source"]["description"].endswith("end to end in tiny-dit") and rep["source"]["image_like"]
    assert [L["name"] for L in rep["layers"]] == ["blocks.0.ff.proj_in", "blocks.1.attn.to_v"]
    for b in BACKENDS.split(","):
        r = rep["end_to_end"][b]
        assert r["status"] == "ok" and r["vs_float"]["cosine"] > 0.95, (b, r)  # measured 0.979
    for b in ("npu-sim:A2", "npu-sim:A5"):
        assert rep["end_to_end"][b]["vs_reference"]["identical"]
    # a mis-stored layer: every backend agrees with the reference, but the reference no longer resembles the model
    bad = _tiny_dit_file(tmp_path, corrupt=True)
    rc, rep = _parity(["--checkpoint", str(bad), "--model", "tiny-dit", "--fail-on", "strict", "--seq", "16",
                       "--batch", "1"], tmp_path / "b")
    assert rc == 1
    fails = rep["verdict"]["strict"]["failures"]
    assert any(f.startswith("blocks.1.attn.to_v [reference]: cosine vs float") for f in fails), fails
    assert not any(f.startswith("blocks.0.ff.proj_in") for f in fails), fails


def test_inspect_lists_the_layers(nfile, capsys):
    path, _ = nfile
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "format nunchaku (SVDQuant)" in out and "validation: OK" in out
    rows = {ln.split()[0]: ln.split() for ln in out.splitlines() if ln.startswith("blocks.")}
    for p, (prec, n, k, rank) in LAYERS.items():
        scheme = "svdq_int4" if prec == "int4" else "svdq_nvfp4"
        assert rows[p][1:7] == [scheme, prec, "64" if prec == "int4" else "16", str(rank), str(k), "->"], rows[p]
        assert rows[p][7] == str(n)
    assert f"not read: {AWQ}: nunchaku AWQ W4A16" in out
    assert "kernel for svdq_int4: " in out and "kernel for svdq_nvfp4: " in out
    assert main(["inspect", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    got = {r["layer"]: (r["scheme"], r["rank"], r["group_size"], r["n"], r["k"]) for r in info["layers"]}
    assert got == {p: ("svdq_" + ("int4" if pr == "int4" else "nvfp4"), r, 64 if pr == "int4" else 16, n, k)
                   for p, (pr, n, k, r) in LAYERS.items()}
    q = next(r for r in info["layers"] if r["layer"] == "blocks.0.attn.to_q")
    assert q["stored"]["qweight"] == ["I8", [256, 192]] and q["stored"]["proj_down"] == ["BF16", [384, 48]]
    assert q["bytes"] == 256 * 192 + 6 * 256 * 2 + (384 + 256) * 48 * 2 + 384 * 2 + 256 * 2


def test_inspect_checks_nunchakus_metadata(tmp_path, capsys):
    _, nun, _ = _layer("int4", 128, 128, 16, seed=5)
    path = tmp_path / "m.safetensors"
    qc = {"method": "svdquant", "weight": {"dtype": "int4", "group_size": 64}, "rank": 32}
    save_file({f"fc.{k}": v.contiguous() for k, v in nun.items()}, str(path),
              metadata={"model_class": "NunchakuFluxTransformer2dModel", "quantization_config": json.dumps(qc)})
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "model_class NunchakuFluxTransformer2dModel" in out and '"rank": 32' in out
    assert ("warning: m.safetensors [fc.qweight]: quantization_config metadata says rank 32, the layer's tensors "
            "say 16") in out


def test_bad_files_are_named(nfile, tmp_path, capsys):
    path, _ = nfile
    plain = tmp_path / "float.safetensors"
    save_file({"a.weight": torch.ones(4, 4)}, str(plain))
    txt = tmp_path / "notes.txt"
    txt.write_text("hello")
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    two = tmp_path / "two"
    two.mkdir()
    for nm in ("svdq-int4.safetensors", "svdq-fp4.safetensors"):
        (two / nm).write_bytes(path.read_bytes())
    _, nun, _ = _layer("int4", 128, 256, 16, seed=3)
    nun["wscales"] = nun["wscales"][:2]
    broken = _save(tmp_path / "broken.safetensors", {"fc": nun})
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    cases = [
        ([str(plain)], "float.safetensors: a file, neither an AscendV1 / msModelSlim checkpoint directory"),
        ([str(txt)], "notes.txt: a file, neither an AscendV1"),
        ([str(empty)], "empty_dir: neither an AscendV1 / msModelSlim checkpoint directory"),
        ([str(two)], "several nunchaku-format safetensors files (svdq-fp4.safetensors, svdq-int4.safetensors)"),
        ([str(broken)], "broken.safetensors: tensor 'fc.wscales' has shape [2, 128]"),
        ([str(garbage)], "garbage.safetensors: cannot read the safetensors header"),
    ]
    for ck, msg in cases:
        assert main(["parity", "--out", str(tmp_path / "o"), "--checkpoint"] + ck + RUN) == 2, ck
        assert msg in capsys.readouterr().err, (ck, msg)
        assert main(["inspect"] + ck) == 1, ck
        assert msg.split(": ", 1)[-1] in capsys.readouterr().out, (ck, msg)
    for extra, msg in [(["--inputs", str(plain)], "--inputs needs --model with a nunchaku checkpoint"),
                       (["--model", "tiny-llama"], "are not linear layers of --model tiny-llama"),
                       (["--model", "tiny-dit", "--layers", "blocks.0.attn.to_q"],
                        "layer blocks.0.attn.to_q is K=384 -> N=256 in the checkpoint but 512 -> 512 in --model"),
                       (["--scheme", "mxfp4"], "--scheme applies to --model")]:
        assert main(["parity", "--out", str(tmp_path / "o"), "--checkpoint", str(path)] + RUN + extra) == 2, extra
        assert msg in capsys.readouterr().err, extra


@pytest.mark.gpu
def test_cuda_side_by_side(nfile, tmp_path):
    """On the GPU machine: the same file with the cuda backend beside the CPU ones (its residual quantizer is the
    reference's, run on the GPU: bytes identical; outputs within the strict E1 bound)."""
    path, _ = nfile
    out = tmp_path / "o"
    rc = main(["parity", "--out", str(out), "--checkpoint", str(path), "--backends", BACKENDS + ",cuda",
               "--repeat", "1", "--no-plot", "-q", "--fail-on", "strict"])
    rep = json.loads((out / "parity.json").read_text())
    assert rc == 0, rep["verdict"]["strict"]["failures"]
    assert next(b for b in rep["backends"] if b["name"] == "cuda")["available"]
    for L in rep["layers"]:
        r = L["results"]["cuda"]
        assert r["status"] == "ok", (L["name"], r)
        assert r["quant"] is not None and r["quant"]["identical"], (L["name"], r["quant"])
