"""vLLM ``LinearMethodBase`` for every scheme (imports vLLM; loaded by ``plugin.register``).

Parameters are created from the schemes' ``TensorSpec`` (``input_dim`` / ``output_dim`` /
``per_tensor``), so vLLM's loader v2 shards them correctly under tensor parallelism:

* input_dim and output_dim -> ``ModelWeightParameter`` (weight) / ``GroupQuantScaleParameter`` (MX scales,
  ``weight_dual_scale``, per-group int8 scales);
* output_dim only -> ``ChannelQuantScaleParameter`` (per-channel scales, ``deq_scale``, ``quant_bias``);
* input_dim only -> ``RowvLLMParameter`` (``mul_scale``);
* per_tensor -> ``PerTensorScaleParameter`` with one slot per fused shard (``input_scale``, ``input_offset``).

Every loader is wrapped: int64 ``deq_scale`` is decoded (never ``copy_`` of an int64 bit pattern into
fp32), 1-byte weights stored as uint8 are reinterpreted, and per-shard values are recorded so fused
q/k/v (gate/up) layers can be checked for identical ``mul_scale`` / ``input_scale`` / ``input_offset``.
``process_weights_after_loading`` hands the tensor set to the backend's ``prepare``; ``apply`` runs the
backend's ``apply``.
"""
from __future__ import annotations

import torch
from torch.nn import Parameter

from vllm.model_executor.layers.linear import (LinearMethodBase, RowParallelLinear,
                                               register_weight_loader_v2_supported_method)
from vllm.model_executor.parameter import (BasevLLMParameter, ChannelQuantScaleParameter, GroupQuantScaleParameter,
                                           ModelWeightParameter, PerTensorScaleParameter, RowvLLMParameter)

from ...schemes.base import Scheme, SchemeValidationError
from ...schemes.svd_base import L1, L2, SVDScheme
from ...checkpoint.layout import SHARED_INPUT_TENSORS
from ...numerics.int8 import deq_scale_fp32
from ..torch.module import resolve_backend

__all__ = ["OmniNpuLinearMethod"]

# tensors that must be identical across the shards of a fused layer (one input feeds every shard)


def _param_for(spec, shape, dtype, loader, n_shards):
    data = torch.empty(shape, dtype=dtype)
    if spec.per_tensor:
        return PerTensorScaleParameter(data=torch.empty(n_shards, dtype=dtype), weight_loader=loader)
    if spec.input_dim is not None and spec.output_dim is not None:
        cls = ModelWeightParameter if spec.name == "weight" else GroupQuantScaleParameter
        return cls(data=data, input_dim=spec.input_dim, output_dim=spec.output_dim, weight_loader=loader)
    if spec.output_dim is not None:
        return ChannelQuantScaleParameter(data=data, output_dim=spec.output_dim, weight_loader=loader)
    if spec.input_dim is not None:
        return RowvLLMParameter(data=data, input_dim=spec.input_dim, weight_loader=loader)
    return BasevLLMParameter(data=data, weight_loader=loader)


@register_weight_loader_v2_supported_method
class OmniNpuLinearMethod(LinearMethodBase):
    """One quantized linear: ``scheme`` from a checkpoint (``online=False``) or from float weights."""

    def __init__(self, scheme: Scheme, *, prefix: str = "", online: bool = False, backend=None,
                 group_size: int = 0, svd_ranks: list[int] | None = None):
        self.scheme = scheme
        self.prefix = prefix
        self.online = online
        self.backend_request = backend
        self.group_size = int(group_size or 0)
        self.svd_ranks = None if svd_ranks is None else [int(r) for r in svd_ranks]  # per fused shard (SVD only)
        self.backend = None

    # ------------------------------------------------------------------------------------------------
    def create_weights(self, layer, input_size_per_partition, output_partition_sizes, input_size, output_size,
                       params_dtype, **extra_weight_attrs):
        base_loader = extra_weight_attrs["weight_loader"]
        k, n = int(input_size_per_partition), int(sum(output_partition_sizes))
        where = self.prefix or type(layer).__name__
        s = self.scheme
        is_row = isinstance(layer, RowParallelLinear)
        bad = s.shape_problem(n, k)
        if bad:
            raise ValueError(f"{where}: {bad} (K per tensor-parallel rank; input_size {input_size}, "
                             f"tp_size {getattr(layer, 'tp_size', 1)})")
        layer.omni_scheme = s
        layer.omni_act_dtype = params_dtype
        layer.omni_k = k
        layer.omni_n = n
        layer.omni_is_row = is_row
        layer.omni_n_shards = len(output_partition_sizes)
        layer.omni_loaded = {}   # name -> set of shard ids seen
        layer.omni_shard_values = {}  # name -> {shard id: tensor} for SHARED_INPUT_TENSORS
        layer.omni_param_names = []
        layer.omni_loader_name = getattr(base_loader, "__name__", "")  # "weight_loader_v2" expected

        def wrap(name):
            def loader(param, loaded, *args, **kwargs):
                shard = args[0] if args else kwargs.get("loaded_shard_id")
                if name == "deq_scale" and loaded.dtype == torch.int64:
                    loaded = deq_scale_fp32(loaded)  # int64 bit pattern -> fp32 value (never a numeric cast)
                elif (loaded.dtype != param.dtype and loaded.element_size() == 1 and param.element_size() == 1
                      and not loaded.is_floating_point() and param.dtype not in (torch.int8, torch.uint8)):
                    loaded = loaded.view(param.dtype)  # fp8 weights stored as raw uint8 bytes
                if name in SHARED_INPUT_TENSORS:
                    layer.omni_shard_values.setdefault(name, {})[shard] = loaded.detach().clone().float().reshape(-1)
                layer.omni_loaded.setdefault(name, set()).add(shard)
                return base_loader(param, loaded, *args, **kwargs)
            return loader

        if self.online:
            w = ModelWeightParameter(data=torch.empty(n, k, dtype=params_dtype), input_dim=1, output_dim=0,
                                     weight_loader=wrap("weight"))
            layer.register_parameter("weight", w)
            layer.omni_param_names.append("weight")
            return
        svd = isinstance(s, SVDScheme)
        base = s.residual if svd else s  # an SVD layer: the residual's parameters, then the stacked factors
        if base.per_group_scales and self.group_size and self.group_size < input_size:
            if k % self.group_size:
                raise ValueError(f"{where}: group_size {self.group_size} does not divide K={k}")
            specs = base.tensor_specs(n, k, groups=k // self.group_size)
        else:
            specs = base.tensor_specs(n, k)
        for spec in specs:
            if spec.name == "bias":
                continue  # the vLLM layer owns its bias parameter
            p = _param_for(spec, spec.shape, spec.dtypes[0], wrap(spec.name), len(output_partition_sizes))
            layer.register_parameter(spec.name, p)
            layer.omni_param_names.append(spec.name)
        layer.omni_optional = {spec.name for spec in specs if spec.optional}
        if svd:
            self._create_lowrank(layer, n, k, wrap, where)

    # ------------------------------------------------------------------------------------------------
    def _create_lowrank(self, layer, n: int, k: int, wrap, where: str) -> None:
        """``svd_lowrank_l1`` / ``svd_lowrank_l2`` of an SVD layer, fused shards stacked along the rank.

        Shard i (rank r_i) owns rows ``[o_i, o_i + r_i)`` of L1 [R, K] and the block (its output rows, columns
        ``[o_i, o_i + r_i)``) of L2 [N, R], zeros elsewhere (R = sum r_i): ``x . L1^T . L2^T`` is then each shard's own
        branch (the other shards' ranks contribute exact zeros), so q/k/v (gate/up) with equal or different ranks
        run as one layer.  L1 follows K (row-parallel: this rank's K slice), L2 follows N through vLLM's own
        loaders (the shard's columns are placed first).  Held in fp32 (exact for any 16-bit checkpoint dtype)."""
        n_shards = layer.omni_n_shards
        ranks = self.svd_ranks or [self.scheme.online_rank] * n_shards
        if len(ranks) != n_shards:
            raise ValueError(f"{where}: {len(ranks)} SVD rank(s) {ranks} for a layer of {n_shards} fused shard(s)")
        offsets = [sum(ranks[:i]) for i in range(n_shards)]
        total = sum(ranks)
        tp_rank = int(getattr(layer, "tp_rank", 0) or 0)
        layer.omni_svd_ranks = list(ranks)

        def shard_index(shard) -> int:
            if shard is None:
                if n_shards > 1:
                    raise SchemeValidationError(f"{where}: an SVD factor was loaded for the whole fused layer; its "
                                                f"shards' factors must be loaded one by one (per q/k/v, gate/up)")
                return 0
            return {"q": 0, "k": 1, "v": 2}.get(shard, shard) if isinstance(shard, str) else int(shard)

        def check_rank(name, shard, got):
            i = shard_index(shard)
            if got != ranks[i]:
                raise SchemeValidationError(f"{where}: '{name}' of shard {shard!r} has rank {got}, expected "
                                            f"{ranks[i]} (the rank read from the checkpoint headers or scheme_options)")
            return i

        def load_l1(param, loaded, *args, **kwargs):
            shard = args[0] if args else kwargs.get("loaded_shard_id")
            if loaded.dim() != 2:
                raise SchemeValidationError(f"{where}: '{L1}' must be [rank, K], got {list(loaded.shape)}")
            i = check_rank(L1, shard, int(loaded.shape[0]))
            if layer.omni_is_row and loaded.shape[1] != k:  # row-parallel: this rank's K slice
                loaded = loaded.narrow(1, tp_rank * k, k)
            if loaded.shape[1] != k:
                raise SchemeValidationError(f"{where}: '{L1}' has K={loaded.shape[1]}, expected {k}")
            param.data[offsets[i]: offsets[i] + ranks[i]].copy_(loaded)
            layer.omni_loaded.setdefault(L1, set()).add(shard)

        l2_base = wrap(L2)

        def load_l2(param, loaded, *args, **kwargs):
            shard = args[0] if args else kwargs.get("loaded_shard_id")
            if loaded.dim() != 2:
                raise SchemeValidationError(f"{where}: '{L2}' must be [N, rank], got {list(loaded.shape)}")
            i = check_rank(L2, shard, int(loaded.shape[1]))
            wide = loaded.new_zeros((loaded.shape[0], total))
            wide[:, offsets[i]: offsets[i] + ranks[i]] = loaded
            return l2_base(param, wide, *args, **kwargs)  # vLLM places the shard's rows (and the TP slice)

        layer.register_parameter(L1, RowvLLMParameter(data=torch.zeros(total, k, dtype=torch.float32), input_dim=1,
                                                      weight_loader=load_l1))
        layer.register_parameter(L2, ChannelQuantScaleParameter(data=torch.zeros(n, total, dtype=torch.float32),
                                                                output_dim=0, weight_loader=load_l2))
        layer.omni_param_names += [L1, L2]

    # ------------------------------------------------------------------------------------------------
    def _online_tensors(self, layer) -> dict[str, torch.Tensor]:
        s, w = self.scheme, layer.weight.data
        tp = getattr(layer, "tp_size", 1)
        if s.row_amax_weight_scale and layer.omni_is_row and tp > 1:
            # per-output-row scale from the GLOBAL row amax, so TP>1 weights equal TP=1 weights:
            # append the all-reduced amax as one extra column; the numerics rule then picks it.
            import torch.distributed as dist
            from vllm.distributed import get_tp_group

            amax = w.float().abs().amax(dim=-1)
            group = get_tp_group()
            dist.all_reduce(amax, op=dist.ReduceOp.MAX, group=group.cpu_group if amax.device.type == "cpu"
                            else group.device_group)
            aug = torch.cat([w, amax.to(w.dtype).unsqueeze(-1)], dim=-1)
            t = s.quantize_weight(aug)
            t["weight"] = t["weight"][:, :-1].contiguous()
            return t
        return s.quantize_weight(w)

    def _check_shards(self, layer, name: str, where: str):
        vals = layer.omni_shard_values.get(name, {})
        if len(vals) > 1:
            items = list(vals.items())
            ref_id, ref = items[0]
            for sid, v in items[1:]:
                if v.shape != ref.shape or not torch.equal(v, ref):
                    raise SchemeValidationError(
                        f"{where}: fused shards disagree on '{name}' (shard {ref_id!r} vs {sid!r}); q/k/v "
                        f"(gate/up) share one input and need identical {name}")

    def _checkpoint_tensors(self, layer, where: str) -> dict[str, torch.Tensor]:
        t: dict[str, torch.Tensor] = {}
        for name in layer.omni_param_names:
            seen = layer.omni_loaded.get(name)
            if not seen:
                if name in layer.omni_optional:
                    continue
                raise SchemeValidationError(f"{where}: checkpoint tensor '{name}' was never loaded")
            if name in ("weight", L1, L2) and None not in seen and len(seen) != layer.omni_n_shards:
                raise SchemeValidationError(f"{where}: {name} loaded for shards {sorted(map(str, seen))}, "
                                            f"expected {layer.omni_n_shards}")
            data = getattr(layer, name).data
            if name in SHARED_INPUT_TENSORS:
                self._check_shards(layer, name, where)
                if isinstance(getattr(layer, name), PerTensorScaleParameter):
                    flat = data.reshape(-1)
                    if not bool((flat == flat[0]).all()):
                        raise SchemeValidationError(f"{where}: fused shards disagree on '{name}': {flat.tolist()}")
                    data = flat[:1].clone()
            t[name] = data
        return t

    def process_weights_after_loading(self, layer) -> None:
        where = self.prefix or type(layer).__name__
        s = self.scheme
        if self.online:
            tensors = self._online_tensors(layer)
            tensors.pop("bias", None)
        else:
            tensors = self._checkpoint_tensors(layer, where)
        bias = getattr(layer, "bias", None)
        if bias is not None and not s.bias_in_quant_bias:
            tensors["bias"] = bias.data.to(torch.float32)  # float bias of W8A8 static is folded in quant_bias
        self.backend, cap = resolve_backend(s, self.backend_request, _vllm_device())
        layer.omni_capability = cap
        layer.omni_prepared = self.backend.prepare(s, tensors, layer.omni_act_dtype, k=layer.omni_k, where=where)
        if self.online:  # keep the stored (quantized) tensors, drop the float weight
            for name, v in tensors.items():
                if name == "bias":
                    continue
                if hasattr(layer, name):
                    delattr(layer, name)
                layer.register_parameter(name, Parameter(v, requires_grad=False))

    def apply(self, layer, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        s = self.scheme
        if s.bias_in_quant_bias:
            # quant_bias carries the folded float bias: add it once (row-parallel: TP rank 0 only)
            add = not (layer.omni_is_row and getattr(layer, "tp_rank", 0) > 0)
        else:
            add = bias is not None
        return self.backend.apply(layer.omni_prepared, x, add_bias=add)


def _vllm_device():
    """Device hint for the dispatcher, from vLLM's current platform (None -> let the registry detect)."""
    from ...backends.registry import backend_override

    if backend_override():
        return None
    try:
        from vllm.platforms import current_platform
    except Exception:  # pragma: no cover
        return None
    if current_platform.is_out_of_tree() and getattr(current_platform, "device_type", "") == "npu":
        return "npu"
    if current_platform.is_cuda():
        return "cuda"
    return "cpu"
