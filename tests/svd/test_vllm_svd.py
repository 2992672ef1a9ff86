"""SVD checkpoints through the vLLM plugin (vLLM 0.33's Python tree on CPU, TP=1): the rank of every layer is read
from the checkpoint's safetensors headers (``svd_lowrank_l1`` [rank, K], headers only), fused q/k/v and gate/up
shards are stacked along the rank (their factors are different matrices), and the layers' outputs equal the
reference backend on the same stacked tensors bit for bit and the per-shard reference within the fp32 summation
order of the branch.

Checkpoints: the real msModelSlim 26.1.0 ``W4A4_MXFP4_SVD`` and ``W8A8_SVD_DYNAMIC`` (``svd_res`` rank 8 +
``linear_quant`` on a tiny seeded Llama, as tests/svd/test_msmodelslim_svd.py makes them), and one written by our
writer with a different rank per fused shard."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
pytest.importorskip("vllm")

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent / "checkpoint"))
sys.path.insert(0, str(HERE.parent / "integrations"))
import msms_gen  # noqa: E402
import vllm_cases as C  # noqa: E402

from omni_npu_quant.kernels import reference_linear  # noqa: E402
from omni_npu_quant.schemes.svd_base import L1, L2  # noqa: E402

P = "model.layers.0"
ATTN = ("q_proj", "k_proj", "v_proj")
MLP = ("gate_proj", "up_proj")


@pytest.fixture(scope="module")
def vllm_tp1():
    from vllm.config import VllmConfig, set_current_vllm_config

    from omni_npu_quant.integrations.vllm.plugin import register, registered_methods

    register()
    with set_current_vllm_config(VllmConfig()):
        from vllm.distributed import parallel_state as ps

        if not ps.model_parallel_is_initialized():
            C.init_dist(1, 0, C.free_port())
        yield registered_methods()


@pytest.fixture(scope="module")
def ms_ckpts(tmp_path_factory):
    try:
        import msmodelslim  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as e:
        pytest.fail(f"{msms_gen.INSTALL_HINT} ({e})", pytrace=False)
    base = tmp_path_factory.mktemp("msms_svd_vllm")
    model = msms_gen.make_tiny_llama(base / "model", torch.bfloat16, hidden=64, inter=128, layers=1)
    calib = msms_gen.small_calib(base / "calib4.jsonl")
    pre = "    - type: svd_res\n      rank: 8\n      include: [\"*\"]\n"
    out = {}
    for scheme in ("w4a4_mxfp4", "w8a8_dynamic"):
        cfg = msms_gen.write_config(base / f"{scheme}.yaml", scheme, pre=pre, dataset=str(calib))
        out[scheme] = msms_gen.quantize(model, base / scheme, cfg)
    return out


def build(quant_config, hidden, head, heads, kv_heads, inter):
    C._no_compiled_cpu_gemm()
    from vllm.model_executor.layers.linear import MergedColumnParallelLinear, QKVParallelLinear, RowParallelLinear

    kw = dict(quant_config=quant_config, return_bias=False, params_dtype=torch.bfloat16)
    return {
        f"{P}.self_attn.qkv_proj": QKVParallelLinear(hidden, head, heads, kv_heads, bias=False,
                                                      prefix=f"{P}.self_attn.qkv_proj", **kw),
        f"{P}.self_attn.o_proj": RowParallelLinear(heads * head, hidden, bias=False, prefix=f"{P}.self_attn.o_proj",
                                                   **kw),
        f"{P}.mlp.gate_up_proj": MergedColumnParallelLinear(hidden, [inter, inter], bias=False,
                                                            prefix=f"{P}.mlp.gate_up_proj", **kw),
        f"{P}.mlp.down_proj": RowParallelLinear(inter, hidden, bias=False, prefix=f"{P}.mlp.down_proj", **kw),
    }


SHARDS = {f"{P}.self_attn.{n}": (f"{P}.self_attn.qkv_proj", n[0]) for n in ATTN}
SHARDS.update({f"{P}.mlp.{n}": (f"{P}.mlp.gate_up_proj", i) for i, n in enumerate(MLP)})
SHARDS.update({f"{P}.self_attn.o_proj": (f"{P}.self_attn.o_proj", None), f"{P}.mlp.down_proj": (f"{P}.mlp.down_proj", None)})
FUSED = {}
for hf, (vp, _) in SHARDS.items():
    FUSED.setdefault(vp, []).append(hf)


def load_into(layers, ckpt_dir: Path, cfg):
    """vLLM's model loader: checkpoint names -> the fused shards' loaders (as tests/integrations/vllm_cases.py)."""
    from safetensors import safe_open

    mapper = cfg.get_checkpoint_weight_mapper()
    for f in sorted(Path(ckpt_dir).glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as sf:
            for key in sf.keys():
                name = mapper.map_name(key)
                hf, _, suffix = name.rpartition(".")
                if hf not in SHARDS:
                    continue
                prefix, shard = SHARDS[hf]
                param = getattr(layers[prefix], suffix)
                if shard is None:
                    param.weight_loader(param, sf.get_tensor(key))
                else:
                    param.weight_loader(param, sf.get_tensor(key), shard)
    for layer in layers.values():
        layer.quant_method.process_weights_after_loading(layer)


def stacked(sets: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The fused layer's tensor set: residual tensors concatenated along N, factors stacked along the rank (L2
    block-diagonal), shared tensors (one per input) taken once."""
    if len(sets) == 1:
        return dict(sets[0])
    ns = [t[L2].shape[0] for t in sets]
    out = {}
    for key in sets[0]:
        if key in (L1, L2):
            continue
        vs = [t[key] for t in sets]
        if vs[0].dim() >= 1 and all(v.shape[0] == n for v, n in zip(vs, ns)):
            out[key] = torch.cat(vs, 0)
        else:
            assert all(torch.equal(v, vs[0]) for v in vs), key
            out[key] = vs[0]
    out[L1] = torch.cat([t[L1].float() for t in sets], 0)
    out[L2] = torch.block_diag(*[t[L2].float() for t in sets])
    return out


def check_layers(layers, ck, scheme_name, hidden, inter, ranks):
    from omni_npu_quant.schemes.registry import get_scheme

    g = torch.Generator().manual_seed(0)
    for prefix, layer in layers.items():
        names = FUSED[prefix]
        sets = [ck.layers[n].tensors for n in names]
        assert layer.omni_svd_ranks == [ranks[n] for n in names], prefix
        k = sets[0][L1].shape[1]
        x = (torch.randn(5, k, generator=g) * 2).to(torch.bfloat16)
        y = layer(x)
        sch = get_scheme(scheme_name)
        assert torch.equal(y, reference_linear(sch, x, stacked(sets))), prefix
        per_shard = torch.cat([reference_linear(sch, x, t) for t in sets], -1).float()
        err = ((y.float() - per_shard).norm() / per_shard.norm()).item()
        assert err < 2e-3, (prefix, err)  # bf16 rounding of the hidden in another fp32 order at most
        # and the factors matter: the residual alone is far off (so the check above can fail)
        res = torch.cat([reference_linear(sch.residual, x, sch.split(t)[0]) for t in sets], -1).float()
        assert ((res - per_shard).norm() / per_shard.norm()).item() > 20 * err + 1e-3, prefix


@pytest.mark.parametrize("scheme,label,name", [("w4a4_mxfp4", "W4A4_MXFP4_SVD", "mxfp4_svd"),
                                               ("w8a8_dynamic", "W8A8_SVD_DYNAMIC", "w8a8_dynamic_svd")])
def test_real_msmodelslim_svd_checkpoint_in_vllm(vllm_tp1, ms_ckpts, scheme, label, name):
    from omni_npu_quant.checkpoint import load_checkpoint

    out = ms_ckpts[scheme]
    desc = json.loads((out / "quant_model_description.json").read_text())
    assert desc[f"{P}.mlp.down_proj.weight"] == label
    cfg = vllm_tp1["omni_npu_quant"].from_config(desc)
    cfg.packed_modules_mapping = C.PACKED
    cfg.maybe_update_config(str(out))  # what VllmConfig does: the model directory (whose headers hold the ranks)
    assert cfg.svd_index()[f"{P}.self_attn.q_proj"][:2] == (8, 64)
    layers = build(cfg, 64, 16, 4, 2, 128)
    load_into(layers, out, cfg)
    ck = load_checkpoint(out)
    check_layers(layers, ck, name, 64, 128, {n: 8 for n in SHARDS})


RANKS = {f"{P}.self_attn.q_proj": 16, f"{P}.self_attn.k_proj": 8, f"{P}.self_attn.v_proj": 24,
         f"{P}.self_attn.o_proj": 8, f"{P}.mlp.gate_proj": 8, f"{P}.mlp.up_proj": 16, f"{P}.mlp.down_proj": 16}
DIMS = dict(hidden=128, head=32, heads=4, kv_heads=2, inter=192)


@pytest.fixture(scope="module")
def mixed_rank_ckpt(tmp_path_factory):
    """Our writer: mxfp4_svd with a different rank per fused shard (factors FLOAT-labelled as msModelSlim does)."""
    from omni_npu_quant.checkpoint import write_ascendv1
    from omni_npu_quant.schemes.registry import get_scheme

    h, d, i = DIMS["hidden"], DIMS["head"], DIMS["inter"]
    shapes = {"q_proj": (DIMS["heads"] * d, h), "k_proj": (DIMS["kv_heads"] * d, h), "v_proj": (DIMS["kv_heads"] * d, h),
              "o_proj": (h, DIMS["heads"] * d), "gate_proj": (i, h), "up_proj": (i, h), "down_proj": (h, i)}
    g = torch.Generator().manual_seed(4)
    layers = {}
    for hf, r in RANKS.items():
        n, k = shapes[hf.rpartition(".")[2]]
        w = torch.randn(n, r, generator=g) @ torch.randn(r, k, generator=g) * 0.05 + torch.randn(n, k, generator=g) * 0.02
        layers[hf] = ("W4A4_MXFP4_SVD", get_scheme("mxfp4_svd", rank=r).quantize_weight(w))
    out = write_ascendv1(tmp_path_factory.mktemp("mixed") / "ck", layers, {})
    desc_path = out / "quant_model_description.json"
    desc = json.loads(desc_path.read_text())
    for key in list(desc):
        if key.endswith((L1, L2)):
            desc[key] = "FLOAT"
    desc_path.write_text(json.dumps(desc))
    return out


def test_fused_shards_with_different_ranks(vllm_tp1, mixed_rank_ckpt):
    from omni_npu_quant.checkpoint import load_checkpoint

    desc = json.loads((mixed_rank_ckpt / "quant_model_description.json").read_text())
    cfg = vllm_tp1["omni_npu_quant"].from_config(desc)
    cfg.packed_modules_mapping = C.PACKED
    cfg.maybe_update_config(str(mixed_rank_ckpt))
    layers = build(cfg, **DIMS)
    qkv = layers[f"{P}.self_attn.qkv_proj"]
    assert tuple(qkv.svd_lowrank_l1.shape) == (48, 128) and tuple(qkv.svd_lowrank_l2.shape) == (256, 48)
    load_into(layers, mixed_rank_ckpt, cfg)
    check_layers(layers, load_checkpoint(mixed_rank_ckpt), "mxfp4_svd", DIMS["hidden"], DIMS["inter"], RANKS)


def test_rank_override_and_clear_errors(vllm_tp1, mixed_rank_ckpt):
    from omni_npu_quant.schemes.base import SchemeValidationError

    desc = json.loads((mixed_rank_ckpt / "quant_model_description.json").read_text())
    cls = vllm_tp1["omni_npu_quant"]
    # no model directory and no scheme option: the rank is unknown -> a clear error naming the option
    cfg = cls.from_config(desc)
    cfg.packed_modules_mapping = C.PACKED
    with pytest.raises(ValueError, match=r"rank is unknown.*scheme_options \{'mxfp4_svd': \{'rank': R\}\}"):
        build(cfg, **DIMS)
    # scheme_options overrides; where the headers are readable they must agree
    cfg = cls(desc, scheme_options={"mxfp4_svd": {"rank": 8}})
    cfg.packed_modules_mapping = C.PACKED
    cfg.maybe_update_config(str(mixed_rank_ckpt))
    with pytest.raises(ValueError, match="scheme_options give mxfp4_svd rank 8, but the checkpoint's"):
        build(cfg, **DIMS)
    # scheme_options alone (no readable headers): used as given; a factor of another rank is refused at load
    cfg = cls(desc, scheme_options={"mxfp4_svd": {"rank": 16}})
    cfg.packed_modules_mapping = C.PACKED
    layers = build(cfg, **DIMS)
    qkv = layers[f"{P}.self_attn.qkv_proj"]
    assert qkv.omni_svd_ranks == [16, 16, 16]
    with pytest.raises(SchemeValidationError, match=r"'svd_lowrank_l1' of shard 'k' has rank 8, expected 16"):
        qkv.svd_lowrank_l1.weight_loader(qkv.svd_lowrank_l1, torch.zeros(8, 128), "k")
    # a fused SVD factor loaded without a shard id cannot be split
    with pytest.raises(SchemeValidationError, match="loaded for the whole fused layer"):
        qkv.svd_lowrank_l2.weight_loader(qkv.svd_lowrank_l2, torch.zeros(256, 16))


def tp_worker(rank: int, world: int, port: int, ckpt: str, result_dir: str):
    """Spawned TP rank: the mixed-rank checkpoint's layers; column outputs vs the TP=1 reference's columns, row
    outputs (all-reduced over the K slices) vs the TP=1 reference."""
    import traceback

    from vllm.config import VllmConfig, set_current_vllm_config

    from omni_npu_quant.checkpoint import load_checkpoint
    from omni_npu_quant.integrations.vllm.plugin import register, registered_methods
    from omni_npu_quant.schemes.registry import get_scheme

    res = {}
    try:
        register()
        with set_current_vllm_config(VllmConfig()):
            C.init_dist(world, rank, port)
            desc = json.loads((Path(ckpt) / "quant_model_description.json").read_text())
            cfg = registered_methods()["omni_npu_quant"].from_config(desc)
            cfg.packed_modules_mapping = C.PACKED
            cfg.maybe_update_config(ckpt)
            layers = build(cfg, **DIMS)
            load_into(layers, Path(ckpt), cfg)
            ck = load_checkpoint(ckpt)
            sch = get_scheme("mxfp4_svd")
            g = torch.Generator().manual_seed(1)
            for prefix, layer in layers.items():
                sets = [ck.layers[n].tensors for n in FUSED[prefix]]
                k = sets[0][L1].shape[1]
                x = (torch.randn(5, k, generator=g) * 2).to(torch.bfloat16)
                parts = [reference_linear(sch, x, t).float() for t in sets]
                if layer.omni_is_row:
                    kl = k // world
                    y = layer(x[:, rank * kl:(rank + 1) * kl].contiguous()).float()
                    want = parts[0]
                else:
                    y = layer(x).float()
                    want = torch.cat([p[:, rank * (p.shape[1] // world):(rank + 1) * (p.shape[1] // world)]
                                      for p in parts], -1)
                res[prefix] = [bool(layer.omni_is_row), float((y - want).norm() / want.norm()),
                               list(layer.svd_lowrank_l1.shape), list(layer.svd_lowrank_l2.shape)]
    except Exception:
        res["error"] = traceback.format_exc()
    Path(result_dir, f"rank{rank}.json").write_text(json.dumps(res))


def test_tp2_factors_shard(mixed_rank_ckpt, tmp_path):
    """TP=2 in two spawned gloo ranks: L2 follows N (column-parallel: each rank's output rows of every shard), L1
    follows K (row-parallel: each rank's K slice, the partial branch outputs summed by the all-reduce)."""
    import torch.multiprocessing as mp

    mp.start_processes(tp_worker, args=(2, C.free_port(), str(mixed_rank_ckpt), str(tmp_path)), nprocs=2, join=True,
                       start_method="spawn")
    for rank in range(2):
        res = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert "error" not in res, res.get("error")
        assert len(res) == 4
        for prefix, (is_row, err, l1_shape, l2_shape) in res.items():
            r = sum(RANKS[n] for n in FUSED[prefix])
            if is_row:  # K halves; L2 full
                assert l1_shape[0] == r and l2_shape == [DIMS["hidden"], r], (prefix, l1_shape, l2_shape)
                assert err < 2e-2, (rank, prefix, err)  # the hidden is rounded per rank before the all-reduce
            else:  # N halves; L1 full
                assert l1_shape == [r, DIMS["hidden"]] and l2_shape[1] == r, (prefix, l1_shape, l2_shape)
                assert err < 2e-3, (rank, prefix, err)
