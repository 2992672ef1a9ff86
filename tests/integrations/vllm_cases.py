"""Shared helpers for the vLLM plugin tests (TP=1 in-process, TP=2 in spawned gloo workers).

A tiny decoder block with real vLLM parallel linears: QKV (fused q/k/v), o_proj (row, bias),
gate_up (merged column), down_proj (row) and a plain column layer with bias.  K per rank stays a
multiple of 512 at TP=2 so dual-scale applies everywhere.
"""
from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import torch
from omni_npu_quant.kernels import reference_linear

os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")

H, HEAD, HEADS, KV_HEADS, INTER = 1024, 128, 8, 4, 1024
PACKED = {"qkv_proj": ["q_proj", "k_proj", "v_proj"], "gate_up_proj": ["gate_proj", "up_proj"]}
P = "model.layers.0"
# HF name -> (vLLM module prefix, shard id or None)
HF_TO_VLLM = {
    f"{P}.self_attn.q_proj": (f"{P}.self_attn.qkv_proj", "q"),
    f"{P}.self_attn.k_proj": (f"{P}.self_attn.qkv_proj", "k"),
    f"{P}.self_attn.v_proj": (f"{P}.self_attn.qkv_proj", "v"),
    f"{P}.self_attn.o_proj": (f"{P}.self_attn.o_proj", None),
    f"{P}.mlp.gate_proj": (f"{P}.mlp.gate_up_proj", 0),
    f"{P}.mlp.up_proj": (f"{P}.mlp.gate_up_proj", 1),
    f"{P}.mlp.down_proj": (f"{P}.mlp.down_proj", None),
    f"{P}.mlp.extra_proj": (f"{P}.mlp.extra_proj", None),
}
# vLLM prefix -> HF names in output order
FUSED = {
    f"{P}.self_attn.qkv_proj": [f"{P}.self_attn.{n}" for n in ("q_proj", "k_proj", "v_proj")],
    f"{P}.self_attn.o_proj": [f"{P}.self_attn.o_proj"],
    f"{P}.mlp.gate_up_proj": [f"{P}.mlp.gate_proj", f"{P}.mlp.up_proj"],
    f"{P}.mlp.down_proj": [f"{P}.mlp.down_proj"],
    f"{P}.mlp.extra_proj": [f"{P}.mlp.extra_proj"],
}
ROW = {f"{P}.self_attn.o_proj", f"{P}.mlp.down_proj"}
SHAPES = {  # HF name -> (N, K, has_bias)
    f"{P}.self_attn.q_proj": (HEADS * HEAD, H, False),
    f"{P}.self_attn.k_proj": (KV_HEADS * HEAD, H, False),
    f"{P}.self_attn.v_proj": (KV_HEADS * HEAD, H, False),
    f"{P}.self_attn.o_proj": (H, HEADS * HEAD, True),
    f"{P}.mlp.gate_proj": (INTER, H, False),
    f"{P}.mlp.up_proj": (INTER, H, False),
    f"{P}.mlp.down_proj": (H, INTER, False),
    f"{P}.mlp.extra_proj": (256, H, True),
}
CKPT_SCHEMES = ["w8a8_dynamic", "w8a8_static", "w8a8_static_i64", "mxfp8", "mxfp4", "w4a8_mxfp", "mxfp4_dual"]
ONLINE_SCHEMES = ["w8a8_dynamic", "mxfp8", "mxfp4", "w4a8_mxfp", "mxfp4_dual"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_dist(world_size: int, rank: int, port: int):
    from vllm.distributed import init_distributed_environment, initialize_model_parallel

    init_distributed_environment(world_size=world_size, rank=rank, local_rank=rank, backend="gloo",
                                 distributed_init_method=f"tcp://127.0.0.1:{port}")
    initialize_model_parallel(world_size, 1)


def float_weights(seed: int = 0) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, (n, k, has_bias) in SHAPES.items():
        w = (torch.randn(n, k, generator=g) / k ** 0.5).to(torch.bfloat16)
        b = (torch.randn(n, generator=g) * 0.1).to(torch.bfloat16) if has_bias else None
        out[name] = (w, b)
    return out


def base_scheme(case: str) -> str:
    return "w8a8_static" if case.startswith("w8a8_static") else case


def tensor_sets(case: str, seed: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    """Quantized tensor sets per HF layer; dual-scale adds smoothing (identical across fused shards)."""
    from omni_npu_quant.schemes.registry import get_scheme

    sch = get_scheme(base_scheme(case))
    g = torch.Generator().manual_seed(seed + 7)
    ms_qkv = torch.rand(H, generator=g) + 0.5
    ms_gu = torch.rand(H, generator=g) + 0.5
    out = {}
    for name, (w, b) in float_weights(seed).items():
        calib = {}
        if case.startswith("w8a8_static"):
            calib = dict(act_min=-3.0, act_max=5.0, deq_scale_dtype=torch.int64 if case.endswith("i64") else torch.float32)
        t = sch.quantize_weight(w, b, **calib)
        if case == "mxfp4_dual":
            if "q_proj" in name or "k_proj" in name or "v_proj" in name:
                t["mul_scale"] = ms_qkv.clone()
            elif "gate_proj" in name or "up_proj" in name:
                t["mul_scale"] = ms_gu.clone()
            elif "down_proj" in name:
                t["mul_scale"] = torch.rand(INTER, generator=g) + 0.5
        out[name] = t
    return out


def write_case(out_dir: Path, case: str) -> Path:
    from omni_npu_quant.checkpoint import write_ascendv1
    from omni_npu_quant.schemes.registry import get_scheme

    label = get_scheme(base_scheme(case)).label
    layers = {n: (label, t) for n, t in tensor_sets(case).items()}
    floats = {f"{P}.input_layernorm.weight": torch.ones(H, dtype=torch.bfloat16)}
    return write_ascendv1(out_dir, layers, floats)


def _no_compiled_cpu_gemm() -> None:
    """vLLM's CPU unquantized GEMM dispatch picks its compiled AMX kernels (``torch.ops._C``) on CPUs with
    AMX tiles; the Python-only vLLM tree installed for these tests has no ``_C``, so keep its oneDNN path."""
    import vllm.model_executor.layers.utils as vutils

    vutils.check_cpu_sgl_kernel = lambda n, k, dtype: False


def build_layers(quant_config, dtype=torch.bfloat16) -> dict:
    _no_compiled_cpu_gemm()
    from vllm.model_executor.layers.linear import (ColumnParallelLinear, MergedColumnParallelLinear,
                                                   QKVParallelLinear, RowParallelLinear)

    kw = dict(quant_config=quant_config, return_bias=False, params_dtype=dtype)
    return {
        f"{P}.self_attn.qkv_proj": QKVParallelLinear(H, HEAD, HEADS, KV_HEADS, bias=False,
                                                      prefix=f"{P}.self_attn.qkv_proj", **kw),
        f"{P}.self_attn.o_proj": RowParallelLinear(HEADS * HEAD, H, bias=True, prefix=f"{P}.self_attn.o_proj", **kw),
        f"{P}.mlp.gate_up_proj": MergedColumnParallelLinear(H, [INTER, INTER], bias=False,
                                                            prefix=f"{P}.mlp.gate_up_proj", **kw),
        f"{P}.mlp.down_proj": RowParallelLinear(INTER, H, bias=False, prefix=f"{P}.mlp.down_proj", **kw),
        f"{P}.mlp.extra_proj": ColumnParallelLinear(H, 256, bias=True, prefix=f"{P}.mlp.extra_proj", **kw),
    }


def _load_one(layers, hf_name: str, suffix: str, tensor: torch.Tensor):
    prefix, shard = HF_TO_VLLM[hf_name]
    layer = layers[prefix]
    param = getattr(layer, suffix)
    if shard is None:
        param.weight_loader(param, tensor)
    else:
        param.weight_loader(param, tensor, shard)


def load_checkpoint_into(layers, ckpt_dir: Path, quant_config):
    """What vLLM's model loader does: map checkpoint names, route q/k/v and gate/up to fused shards."""
    from safetensors import safe_open

    mapper = quant_config.get_checkpoint_weight_mapper()
    for f in sorted(Path(ckpt_dir).glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as sf:
            for key in sf.keys():
                name = mapper.map_name(key)
                if name is None:
                    continue
                hf, _, suffix = name.rpartition(".")
                if hf not in HF_TO_VLLM:
                    continue  # norms etc.
                _load_one(layers, hf, suffix, sf.get_tensor(key))
    for layer in layers.values():
        layer.quant_method.process_weights_after_loading(layer)


def load_float_into(layers, seed: int = 0):
    for name, (w, b) in float_weights(seed).items():
        _load_one(layers, name, "weight", w)
        if b is not None:
            _load_one(layers, name, "bias", b)
    for layer in layers.values():
        layer.quant_method.process_weights_after_loading(layer)


def reference_outputs(sets: dict[str, dict[str, torch.Tensor]], scheme_name: str, x: torch.Tensor,
                      bias_dtype=torch.bfloat16) -> dict[str, torch.Tensor]:
    """TP=1 reference per vLLM prefix (fused shards concatenated).  The layer's bias is held in the
    model dtype by vLLM, so the reference uses the bias rounded to it."""
    from omni_npu_quant.schemes.registry import get_scheme

    sch = get_scheme(scheme_name)
    out = {}
    for prefix, names in FUSED.items():
        parts = []
        for n in names:
            t = dict(sets[n])
            if "bias" in t:
                t["bias"] = t["bias"].to(bias_dtype).float()
            parts.append(reference_linear(sch, x[prefix], t))
        out[prefix] = torch.cat(parts, dim=-1)
    return out


def inputs(seed: int = 3) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    xs = {}
    for prefix, names in FUSED.items():
        k = SHAPES[names[0]][1]
        x = (torch.randn(4, k, generator=g) * 2).to(torch.bfloat16)
        x[0, :5] = 0
        x[1, 7] = 200.0
        xs[prefix] = x
    return xs


def rank_columns(prefix: str, full: torch.Tensor, rank: int, tp: int) -> torch.Tensor:
    """The output columns a column-parallel rank computes."""
    names = FUSED[prefix]
    cols, off = [], 0
    for n in names:
        width = SHAPES[n][0]
        step = width // tp
        cols.append(full[..., off + rank * step: off + (rank + 1) * step])
        off += width
    return torch.cat(cols, dim=-1)


def rank_input(prefix: str, x: torch.Tensor, rank: int, tp: int) -> torch.Tensor:
    if prefix in ROW and tp > 1:
        k = x.shape[-1] // tp
        return x[..., rank * k:(rank + 1) * k].contiguous()
    return x


def row_partial_sum(sets, scheme_name: str, prefix: str, x: torch.Tensor, tp: int) -> torch.Tensor:
    """What a row-parallel layer at TP=tp must return: the bf16 sum over ranks of the reference on each
    rank's K slice (every tensor with an input_dim cut into tp equal parts; bias / quant_bias on rank 0)."""
    from omni_npu_quant.schemes.registry import get_scheme

    sch = get_scheme(scheme_name)
    (name,) = FUSED[prefix]
    t_full = dict(sets[name])
    if "bias" in t_full:
        t_full["bias"] = t_full["bias"].to(torch.bfloat16).float()
    n, k, _ = SHAPES[name]
    specs = {sp.name: sp for sp in sch.specs_for(t_full, n, k)}
    total = None
    for r in range(tp):
        t = {}
        for key, v in t_full.items():
            d = specs[key].input_dim
            if d is None:
                t[key] = v
            else:
                step = v.shape[d] // tp
                t[key] = v.narrow(d, r * step, step).contiguous()
        if r > 0:
            t.pop("bias", None)
        part = reference_linear(sch, rank_input(prefix, x, r, tp), t, add_bias=(r == 0))
        total = part if total is None else total + part
    return total


def tp_worker(rank: int, world: int, port: int, ckpt_root: str, result_dir: str):
    """Spawned TP worker: every layer type x every scheme, online and from checkpoints."""
    import traceback

    from vllm.config import VllmConfig, set_current_vllm_config

    from omni_npu_quant.integrations.vllm.plugin import register, registered_methods
    from omni_npu_quant.schemes.registry import get_scheme

    res = {}
    try:
        register()
        methods = registered_methods()
        with set_current_vllm_config(VllmConfig()):
            init_dist(world, rank, port)
            xs = inputs()
            runs = [("online", s) for s in ONLINE_SCHEMES] + [("ckpt", c) for c in CKPT_SCHEMES]
            for mode, case in runs:
                if mode == "online":
                    cfg = methods[f"omni_npu_{case}"].from_config({})
                    sch = get_scheme(case)
                    sets = {n: sch.quantize_weight(w, b) for n, (w, b) in float_weights().items()}
                else:
                    desc = json.loads((Path(ckpt_root) / case / "quant_model_description.json").read_text())
                    cfg = methods["omni_npu_quant"].from_config(desc)
                    sets = tensor_sets(case)
                cfg.packed_modules_mapping = PACKED
                layers = build_layers(cfg)
                if mode == "online":
                    load_float_into(layers)
                else:
                    load_checkpoint_into(layers, Path(ckpt_root) / case, cfg)
                ref = reference_outputs(sets, base_scheme(case), xs)
                for prefix, layer in layers.items():
                    y = layer(rank_input(prefix, xs[prefix], rank, world)).float()
                    r = ref[prefix].float()
                    if prefix in ROW:
                        exp = row_partial_sum(sets, base_scheme(case), prefix, xs[prefix], world).float()
                        err = float((y - r).norm() / r.norm())
                        res[f"{mode}:{case}:{prefix}"] = ("row", [bool(torch.equal(y, exp)), err])
                    else:
                        res[f"{mode}:{case}:{prefix}"] = ("col", bool(torch.equal(y, rank_columns(prefix, r, rank, world))))
                if mode == "online" and case == "w8a8_dynamic":
                    # global amax: each rank's row-parallel int8 weight is the TP=1 weight's K slice
                    w, _ = float_weights()[f"{P}.mlp.down_proj"]
                    full = get_scheme(case).quantize_weight(w)
                    lay = layers[f"{P}.mlp.down_proj"]
                    k = lay.omni_k
                    res["global_amax_weight"] = bool(torch.equal(lay.weight.data, full["weight"][:, rank * k:(rank + 1) * k]))
                    res["global_amax_scale"] = bool(torch.equal(lay.weight_scale.data, full["weight_scale"]))
    except Exception:
        res["error"] = traceback.format_exc()
    Path(result_dir, f"rank{rank}.json").write_text(json.dumps(res))
