"""Fold smoothing multipliers into the preceding norm: smoothed layers become plain AscendV1 layers.

msModelSlim's smoothing processors (``iter_smooth``, ``flex_smooth``, ...) fuse the smoothing factors into the
layer before when the subgraph allows it (subgraph type ``norm-linear``: ``NormLinearSubgraphFusion`` in
``msmodelslim/processor/anti_outlier/common/subgraph_fusion.py`` multiplies the norm's weight and bias by 1/s and
the linears' weights by s) and fall back to the *non-fusion* wrapper (``p.linear.*`` + ``p.div.mul_scale``) only when
no such layer exists.  Our calibration always writes the wrapper; ``fold_smooth_into_norm`` does msModelSlim's
norm-linear fusion afterwards.  Our ``mul_scale`` multiplies the activation (``x * mul_scale``, the stored weights
are already ``W / mul_scale``), i.e. msModelSlim's 1/s, so the fold is::

    norm.weight <- norm.weight * mul_scale        norm.bias <- norm.bias * mul_scale        (in the model dtype)

and the linears' tensors are written unchanged as plain ``p.*`` (no ``p.div.mul_scale``).  vllm-ascend then loads
them with its own methods (it does not understand the wrapper).

A norm is folded only when it is safe, checked on the real model with one sample call:

* its output (every call of it) is consumed by nothing but ``F.linear`` calls of smoothed layers (a residual add, a
  view, a modulation or any other op reading it rules it out: every torch function call is watched);
* every such linear reads only this norm's output, and they all carry one ``mul_scale`` (bit-identical);
* its weight (and bias) are stored float tensors of the checkpoint, and the norm really scales its output by its
  weight: re-running the norm with the folded weight on the sample input reproduces ``output * mul_scale`` (within
  the rounding of the weight product).  This refuses, e.g., Gemma's ``x * (1 + weight)``.

Every smoothed layer that is not folded is reported with the reason (``FoldResult.kept``); the caller decides
whether to keep its wrapper (warning) or refuse.  The folded output equals the unfolded one up to the rounding of
``norm.weight * mul_scale`` to the model dtype (one rounding per channel: unit roundoff 2**-8 for bf16, 2**-24
for fp32).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from .layout import MUL_SCALE

__all__ = ["FoldResult", "NormUse", "trace_norm_consumers", "fold_smooth_into_norm", "is_norm_module"]


@dataclass
class NormUse:
    """What read a norm's output during the sample call."""

    linears: list[str] = field(default_factory=list)  # names of the Linear modules whose F.linear read it
    others: list[str] = field(default_factory=list)  # any other op that read it (function names)
    inputs: list[torch.Tensor] = field(default_factory=list)  # the norm's input of each call (for the check)


@dataclass
class FoldResult:
    layers: dict  # {prefix: (label, tensors)}: folded layers without mul_scale, others as given
    float_tensors: dict  # norm weights / biases replaced where folded
    folded: dict[str, list[str]]  # norm name -> the layers folded into it
    kept: dict[str, str]  # smoothed layer -> why it keeps its wrapper


def is_norm_module(mod: nn.Module) -> bool:
    """A module that may scale its output by a 1-D weight (LayerNorm, RMSNorm and the model-specific RMSNorm
    classes); whether it really does is checked numerically before folding."""
    w = getattr(mod, "weight", None)
    return (isinstance(w, torch.Tensor) and w.dim() == 1 and w.is_floating_point()
            and "norm" in type(mod).__name__.lower() and not isinstance(mod, (nn.Linear, nn.Embedding)))


# reads of a tensor's metadata only (shape, dtype, ...): not a consumer of its values
_METADATA_ATTRS = frozenset({"shape", "dtype", "device", "ndim", "requires_grad", "is_cuda", "layout", "names"})
_METADATA_FUNCS = frozenset({"size", "dim", "numel", "is_floating_point", "is_complex", "is_contiguous", "stride",
                             "element_size", "__len__", "get_device"})


def _metadata_only(func) -> bool:
    name = getattr(func, "__name__", "")
    if name == "__get__":
        return getattr(getattr(func, "__self__", None), "__name__", "") in _METADATA_ATTRS
    return name in _METADATA_FUNCS


class _Watch(TorchFunctionMode):
    """Records every torch function call that reads a watched tensor (a norm output)."""

    def __init__(self, watched: dict[int, tuple[str, torch.Tensor]], linear_of_weight: dict[int, str],
                 uses: dict[str, NormUse], reads: dict[str, set]):
        super().__init__()
        self.watched, self.linear_of_weight, self.uses, self.reads = watched, linear_of_weight, uses, reads

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.watched and not _metadata_only(func):
            flat = list(args) + list(kwargs.values())
            hits = [self.watched[id(a)][0] for a in flat if isinstance(a, torch.Tensor) and id(a) in self.watched
                    and self.watched[id(a)][1] is a]
            if hits:
                lin = None
                if func in (torch.nn.functional.linear, torch._C._nn.linear) and len(args) >= 2:
                    lin = self.linear_of_weight.get(id(args[1]))
                for norm in hits:
                    a0 = args[0] if args else None
                    if lin is not None and id(a0) in self.watched and a0 is self.watched[id(a0)][1]:
                        self.uses[norm].linears.append(lin)
                        self.reads.setdefault(lin, set()).add(norm)
                    else:
                        name = getattr(func, "__qualname__", None) or getattr(func, "__name__", str(func))
                        self.uses[norm].others.append(name)
            elif func in (torch.nn.functional.linear, torch._C._nn.linear) and len(args) >= 2:
                lin = self.linear_of_weight.get(id(args[1]))
                if lin is not None:
                    self.reads.setdefault(lin, set()).add(None)  # read something that is not a norm output
        return func(*args, **kwargs)


def trace_norm_consumers(model: nn.Module, call, linear_names) -> tuple[dict[str, NormUse], dict[str, set]]:
    """Run ``model(*args, **kwargs)`` once (``call = (args, kwargs)``) and record, for every norm module, which
    linears (of ``linear_names``) and which other ops read its output, and for every such linear which norms (or
    None: something else) its input came from."""
    mods = dict(model.named_modules())
    norms = {n: m for n, m in mods.items() if is_norm_module(m)}
    linear_of_weight = {id(mods[n].weight): n for n in linear_names if n in mods and hasattr(mods[n], "weight")}
    uses = {n: NormUse() for n in norms}
    reads: dict[str, set] = {}
    watched: dict[int, tuple[str, torch.Tensor]] = {}
    hooks = []
    for n, m in norms.items():
        def pre(mod, a, _n=n):
            if a and isinstance(a[0], torch.Tensor) and not uses[_n].inputs:  # the first call's input is enough
                uses[_n].inputs.append(a[0].detach())

        def post(mod, a, out, _n=n):
            if isinstance(out, torch.Tensor):
                watched[id(out)] = (_n, out)  # the reference keeps the id from being reused
            else:
                uses[_n].others.append(f"non-tensor output {type(out).__name__}")
        hooks += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
    args, kwargs = call
    try:
        with torch.no_grad(), _Watch(watched, linear_of_weight, uses, reads):
            model(*args, **kwargs)
    finally:
        for h in hooks:
            h.remove()
    return uses, reads


def _check_scales_output(norm: nn.Module, x: torch.Tensor, m: torch.Tensor, w_new, b_new) -> str | None:
    """None when ``norm`` with weight (and bias) times ``m`` maps x to norm(x) * m.  Run in fp32 on a copy, so the
    model dtype's rounding does not hide a norm that is not linear in its weight (Gemma's ``1 + weight``)."""
    probe = copy.deepcopy(norm).float()
    x32, m32 = x.float(), m.float()
    ref = probe(x32)
    with torch.no_grad():
        probe.weight.mul_(m32)
        if b_new is not None:
            probe.bias.mul_(m32)
    got = probe(x32)
    want = ref * m32
    dev = (got - want).abs()
    if bool((dev > 1e-5 * (want.abs() + float(want.abs().max()))).any()):
        return (f"re-running it with weight * mul_scale does not give output * mul_scale (max deviation "
                f"{float(dev.max() / want.abs().max()):.3g} of the output's max): it does not scale its output by its "
                "weight alone (e.g. x * (1 + weight))")
    return None


def fold_smooth_into_norm(model: nn.Module, layers: dict, float_tensors: dict, call) -> FoldResult:
    """Fold each smoothed layer's ``mul_scale`` into the norm before it where safe (module doc).

    ``model``: the float model the checkpoint was made from (its norms are read, not changed); ``layers``:
    ``{prefix: (label, tensors)}`` as for ``write_ascendv1``; ``float_tensors``: its float tensors (norm weights
    among them); ``call``: ``(args, kwargs)`` of one sample forward call."""
    smoothed = {p for p, (_, ts) in layers.items() if MUL_SCALE in ts}
    layers, float_tensors = dict(layers), dict(float_tensors)
    if not smoothed:
        return FoldResult(layers, float_tensors, {}, {})
    mods = dict(model.named_modules())
    linears = [n for n, m in mods.items() if isinstance(getattr(m, "weight", None), torch.Tensor)
               and m.weight.dim() == 2] + sorted(set(layers) | smoothed)
    uses, reads = trace_norm_consumers(model, call, sorted(set(linears)))
    kept: dict[str, str] = {}
    folded: dict[str, list[str]] = {}
    for p in sorted(smoothed):
        src = reads.get(p)
        if not src:
            kept[p] = "the sample call never reached it"
        elif None in src or len(src) > 1:
            kept[p] = ("its input is not (only) the output of one norm"
                       + (f" (it reads {sorted(s for s in src if s)})" if any(src) else "")
                       + ": there is no layer to fold mul_scale into (msModelSlim keeps such layers non-fusion too)")
    by_norm: dict[str, list[str]] = {}
    for p in sorted(smoothed - set(kept)):
        by_norm.setdefault(next(iter(reads[p])), []).append(p)
    for norm_name, members in sorted(by_norm.items()):
        use, norm = uses[norm_name], mods[norm_name]
        why = None
        consumers = sorted(set(use.linears))
        if use.others:
            why = f"the output of {norm_name} is also read by {sorted(set(use.others))[:4]}"
        elif set(consumers) - set(members):
            extra = sorted(set(consumers) - set(members))
            why = (f"the output of {norm_name} also feeds {extra}, which "
                   + ("are not smoothed" if all(e not in smoothed for e in extra) else "cannot be folded")
                   + "; folding would change their input")
        if why is None:
            ms = [layers[p][1][MUL_SCALE] for p in members]
            ref = ms[0].detach().float()
            for p, m in zip(members[1:], ms[1:]):
                if m.shape != ref.shape or not torch.equal(m.detach().float(), ref):
                    why = (f"{members[0]} and {p} read the output of {norm_name} with different mul_scale; one norm "
                           "weight can carry only one")
                    break
        wkey, bkey = f"{norm_name}.weight", f"{norm_name}.bias"
        has_bias = isinstance(getattr(norm, "bias", None), torch.Tensor)
        if why is None and (wkey not in float_tensors or (has_bias and bkey not in float_tensors)):
            why = f"{wkey}{' / ' + bkey if has_bias else ''} is not a float tensor of this checkpoint"
        if why is None and ref.numel() != norm.weight.numel():
            why = f"{norm_name}.weight has {norm.weight.numel()} elements, mul_scale {ref.numel()}"
        if why is None:
            g = float_tensors[wkey]
            w_new = (g.float() * ref.to(g.device)).to(g.dtype)
            b_new = None
            if has_bias:
                b = float_tensors[bkey]
                b_new = (b.float() * ref.to(b.device)).to(b.dtype)
            x = use.inputs[0] if use.inputs else None
            if x is None:
                why = f"{norm_name} was never called"
            else:
                with torch.no_grad():
                    why = _check_scales_output(norm, x, ref.to(x.device), w_new.to(norm.weight.device),
                                               None if b_new is None else b_new.to(norm.bias.device))
            if why is not None:
                why = f"{norm_name}: {why}"
        if why is not None:
            for p in members:
                kept[p] = why
            continue
        float_tensors[wkey] = w_new
        if b_new is not None:
            float_tensors[bkey] = b_new
        for p in members:
            label, ts = layers[p]
            layers[p] = (label, {s: t for s, t in ts.items() if s != MUL_SCALE})
        folded[norm_name] = members
    return FoldResult(layers, float_tensors, folded, kept)
