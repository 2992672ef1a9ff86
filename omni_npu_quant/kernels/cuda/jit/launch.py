"""Direct launches of already-compiled Triton kernels (host overhead per call; issue 14).

``JITFunction.run`` (Triton 3.6, ``triton/runtime/jit.py``) does, per launch: device and stream lookup,
the pre-run hooks, the binder (``native_specialize_impl`` per argument), ``compute_cache_key`` (which
formats the options dict as a string), the used-globals check, ``CompiledKernel.launch_metadata`` (a
``LazyDict`` whenever the launch hooks are the default ``HookChain`` objects) and finally
``kernel.run(gx, gy, gz, stream, kernel.function, kernel.packed_metadata, launch_metadata, enter_hook,
exit_hook, *all_arguments)``, where ``kernel.run`` is the backend launcher (``CudaLauncher``:
scratch allocation, then its compiled ``launch``).

``FastKernel(fn)`` does the first launch of each specialization through ``fn[grid](...)`` (Triton
compiles and caches as usual), keeps the ``CompiledKernel`` it returns, and later launches it with
one call of the backend launcher (``CudaLauncher.launch`` directly when the kernel needs no scratch
memory), no launch metadata and no hooks.

Cache key (over-keying is harmless, a missed difference is not): the launch options (``num_warps``,
``num_stages``, ``enable_fp_fusion``, ...), the current CUDA device, every constexpr argument by value
and, for the other arguments, what Triton specializes on: tensors by dtype and 16-byte alignment of
``data_ptr()``; ints by ``== 1``, divisibility by 16 and the i32 / i64 / u64 range; other values by
type (Triton does not specialize floats or bools by value).  Not in the key, so not seen by the fast
path: changes of Triton's debug / instrumentation knobs or of globals a kernel reads after its first
launch in this process (the fast path is off when ``TRITON_DEBUG`` is set at import).

Off (every launch through ``fn[grid](...)``): ``OMNI_NPU_QUANT_CUDA_FASTLAUNCH=0``; under
``TRITON_INTERPRET=1`` (the interpreter has no compiled kernels); when Triton is not 3.6 or its
internals differ from the above (checked at import; per kernel when the first launch returns
something else); while a launch hook or pre-run hook is installed (profilers).  Each reason is
logged once at debug level (logger ``omni_npu_quant.kernels.cuda.launch``).
"""
from __future__ import annotations

import logging
import os

import torch

log = logging.getLogger("omni_npu_quant.kernels.cuda.launch")
ENV = "OMNI_NPU_QUANT_CUDA_FASTLAUNCH"
SUPPORTED_TRITON = "3.6."
_I32_MIN, _I32_MAX, _I64_MAX = -(2 ** 31), 2 ** 31 - 1, 2 ** 63 - 1
_T = torch.Tensor
_LOGGED: set = set()


def _debug_once(key, msg, *args):
    if key not in _LOGGED:
        _LOGGED.add(key)
        log.debug(msg, *args)


def compatibility(triton_mod=None) -> str:
    """'' when this Triton's launch internals are the ones this module was written against, else why not."""
    try:
        if triton_mod is None:
            import triton as triton_mod
        version = str(getattr(triton_mod, "__version__", "?"))
        if not version.startswith(SUPPORTED_TRITON):
            return f"triton {version} is not {SUPPORTED_TRITON}x (launch internals read from Triton 3.6)"
        from triton import knobs
        from triton.compiler.compiler import CompiledKernel
        from triton.runtime.jit import JITFunction

        if not callable(getattr(JITFunction, "run", None)) or not hasattr(JITFunction, "__getitem__"):
            return "triton JITFunction has no run / __getitem__"
        for attr in ("launch_metadata", "run", "_init_handles"):
            if not hasattr(CompiledKernel, attr):
                return f"triton CompiledKernel has no {attr}"
        rt = knobs.runtime
        for hook in ("launch_enter_hook", "launch_exit_hook"):
            if not hasattr(getattr(rt, hook, None), "calls"):
                return f"triton knobs.runtime.{hook} is not a HookChain"
        if rt.debug:
            return "TRITON_DEBUG is set (debug launches stay on Triton's path)"
    except Exception as e:  # noqa: BLE001 - any surprise means "use Triton's own launch"
        return f"triton internals not as expected: {type(e).__name__}: {e}"
    return ""


def _initial_state() -> tuple[bool, str]:
    if os.environ.get(ENV, "1") == "0":
        return False, f"{ENV}=0"
    if os.environ.get("TRITON_INTERPRET") == "1":
        return False, "TRITON_INTERPRET=1 (interpreter: nothing compiled to launch)"
    why = compatibility()
    if not why and not all(hasattr(torch._C, f) for f in ("_cuda_getDevice", "_cuda_getCurrentRawStream")):
        why = "this torch has no torch._C._cuda_getDevice / _cuda_getCurrentRawStream (device and stream lookup)"
    return (not why), why


ENABLED, WHY_OFF = _initial_state()
if not ENABLED:
    _debug_once(("module",), "fast launch off: %s", WHY_OFF)

try:  # the hook chains Triton's launches would call (identity-checked per launch)
    from triton import knobs as _knobs

    _RT = _knobs.runtime
    _ENTER, _EXIT = _RT.launch_enter_hook, _RT.launch_exit_hook
except Exception:  # noqa: BLE001
    _RT = _ENTER = _EXIT = None

try:
    from triton.backends.nvidia.driver import CudaLauncher as _CudaLauncher
except Exception:  # noqa: BLE001
    _CudaLauncher = None


def _cuda_device() -> int:
    return torch._C._cuda_getDevice()


def _cuda_stream(dev: int) -> int:
    return torch._C._cuda_getCurrentRawStream(dev)


def _hooks_idle() -> bool:
    rt = _RT
    return rt.launch_enter_hook is _ENTER and rt.launch_exit_hook is _EXIT and not _ENTER.calls and not _EXIT.calls


def _token(a):
    """What Triton specializes a non-constexpr argument on (see the module doc)."""
    if type(a) is int:
        if a == 1:
            return 1
        return (a & 15 == 0, 0 if _I32_MIN <= a <= _I32_MAX else (1 if a <= _I64_MAX else 2))
    if isinstance(a, _T):
        return (a.dtype, a.data_ptr() & 15 == 0)
    if a is None:
        return None
    return type(a)


def _make_key_fn(params):
    """A function of all arguments (signature order) -> key tuple, unrolled per parameter (no loops)."""
    names = [f"a{i}" for i in range(len(params))]
    parts = []
    for i, p in enumerate(params):
        a = names[i]
        if p.is_constexpr:
            parts.append(a)
        else:
            parts.append(f"((({a}.dtype, {a}.data_ptr() & 15 == 0) if type({a}) is _T else "
                         f"({a} if {a} == 1 else ({a} & 15 == 0, 0 if -2147483648 <= {a} <= 2147483647 else "
                         f"(1 if {a} <= 9223372036854775807 else 2))) "
                         f"if type({a}) is int else _token({a})))")
    src = f"def key({', '.join(names)}):\n    return ({', '.join(parts)},)\n"
    ns = {"_T": _T, "_token": _token}
    exec(src, ns)  # noqa: S102 - generated from the kernel's own parameter list
    return ns["key"]


def _kind(a) -> str:
    if type(a) is int:
        return "i"
    if isinstance(a, _T):
        return "t"
    return "o"


def _make_typed_key_fn(params, kinds: str):
    """Key function for the argument types seen at the first launch (``kinds``: c constexpr, t tensor, i int,
    o other), ``key(opts, dev, *args)`` -> a flat tuple; same tokens as ``_token``, cheaper.  An argument of
    another type than seen raises (AttributeError / TypeError) and the caller uses the generic key."""
    names = [f"a{i}" for i in range(len(params))]
    parts = ["opts", "dev", repr("k:" + kinds)]
    for a, kd in zip(names, kinds):
        if kd == "c":
            parts.append(a)
        elif kd == "t":
            parts.append(f"{a}.dtype, {a}.data_ptr() & 15 == 0")
        elif kd == "i":
            parts.append(f"((None if {a} == 1 else {a} & 15 == 0) if type({a}) is int and "
                         f"-2147483648 <= {a} <= 2147483647 else _token({a}))")
        else:
            parts.append(f"_token({a})")
    src = f"def key(opts, dev, {', '.join(names)}):\n    return ({', '.join(parts)},)\n"
    ns = {"_token": _token}
    exec(src, ns)  # noqa: S102 - generated from the kernel's own parameter list
    return ns["key"]


class FastKernel:
    """One Triton kernel launched as ``fk(grid, args, opts)``: ``args`` every parameter of the kernel,
    constexprs included, positionally in signature order; ``opts`` the launch options as a tuple of
    (name, value) pairs (``num_warps``, ``num_stages``, ...)."""

    __slots__ = ("fn", "name", "enabled", "cache", "_key", "_tkey", "_nparams", "_pre_hooks")

    def __init__(self, fn, *, enabled: bool | None = None):
        self.fn = fn
        self.name = getattr(fn, "__name__", None) or getattr(getattr(fn, "fn", None), "__name__", repr(fn))
        self.cache: dict = {}
        on = ENABLED if enabled is None else enabled
        params = getattr(fn, "params", None)
        if on and (params is None or not hasattr(fn, "__getitem__")):
            on = False
            _debug_once(("fn", self.name), "fast launch off for %s: not a Triton JITFunction", self.name)
        if on and _RT is None:
            on = False
        self.enabled = on
        self._nparams = len(params) if params is not None else -1
        self._key = _make_key_fn(params) if on else None  # generic (any argument types)
        self._tkey = None  # typed, built at the first launch
        self._pre_hooks = getattr(fn, "pre_run_hooks", None)

    def slow(self, grid, args, opts=()):
        """Triton's own launch (compiles on a cache miss); returns what ``fn[grid]`` returns."""
        return self.fn[grid](*args, **dict(opts))

    def key(self, args, opts=(), dev=0):
        """The cache key of a launch (typed key when the argument types are the first launch's, else generic)."""
        tk = self._tkey
        if tk is None:
            if len(args) != self._nparams:
                raise TypeError(f"{self.name}: fast launch takes all {self._nparams} parameters positionally, "
                                f"got {len(args)}")
            kinds = "".join("c" if p.is_constexpr else _kind(a) for p, a in zip(self.fn.params, args))
            tk = self._tkey = _make_typed_key_fn(self.fn.params, kinds)
        try:
            return tk(opts, dev, *args)
        except (AttributeError, TypeError):
            if len(args) != self._nparams:
                raise TypeError(f"{self.name}: fast launch takes all {self._nparams} parameters positionally, "
                                f"got {len(args)}") from None
            return (opts, dev, self._key(*args))

    def __call__(self, grid, args, opts=()):
        if not self.enabled:
            return self.fn[grid](*args, **dict(opts))
        dev = _cuda_device()
        tk = self._tkey
        if tk is not None:
            try:
                key = tk(opts, dev, *args)
            except (AttributeError, TypeError):
                key = self.key(args, opts, dev)
        else:
            key = self.key(args, opts, dev)
        ent = self.cache.get(key)
        rt = _RT
        if (ent is None or self._pre_hooks or rt.launch_enter_hook is not _ENTER or rt.launch_exit_hook is not _EXIT
                or _ENTER.calls or _EXIT.calls):
            return self._first(key, grid, args, opts)
        launch, head = ent
        n = len(grid)
        if n == 1:
            launch(grid[0], 1, 1, _cuda_stream(dev), *head, *args)
        elif n == 2:
            launch(grid[0], grid[1], 1, _cuda_stream(dev), *head, *args)
        else:
            launch(grid[0], grid[1], grid[2], _cuda_stream(dev), *head, *args)
        return None

    def _first(self, key, grid, args, opts):
        kernel = self.fn[grid](*args, **dict(opts))
        if key in self.cache or not _hooks_idle() or self._pre_hooks:
            return kernel
        ent = self._entry(kernel)
        if ent is not None:
            self.cache[key] = ent
        return kernel

    def _entry(self, kernel):
        """(launch callable, the arguments between the stream and the kernel's own) or None (logged)."""
        try:
            if hasattr(kernel, "result"):
                kernel = kernel.result()
            run = kernel.run  # the backend launcher (loads the binary on first access)
            function, packed = kernel.function, kernel.packed_metadata
            if function is None or not callable(run):
                raise AttributeError("no loaded function / launcher")
        except Exception as e:  # noqa: BLE001
            _debug_once(("entry", self.name), "fast launch off for %s: compiled kernel not as expected (%s: %s)",
                        self.name, type(e).__name__, e)
            return None
        if (_CudaLauncher is not None and type(run) is _CudaLauncher and not run.global_scratch_size
                and not run.profile_scratch_size):
            # CudaLauncher.__call__ without its scratch allocation: launch(gx, gy, gz, stream, function,
            # cooperative, pdl, global_scratch, profile_scratch, packed_metadata, launch_metadata, enter, exit, *args)
            return run.launch, (function, run.launch_cooperative_grid, run.launch_pdl, None, None, packed, None, None,
                                None)
        return run, (function, packed, None, None, None)


_REGISTRY: dict = {}


def fast(fn) -> FastKernel:
    """The process-wide ``FastKernel`` of a Triton kernel (one cache per kernel)."""
    fk = _REGISTRY.get(fn)
    if fk is None:
        fk = _REGISTRY[fn] = FastKernel(fn)
    return fk


def set_enabled(on: bool) -> bool:
    """Turn the fast path on / off for every kernel (tests, tools/host_probe.py); on only where the import-time
    checks passed.  Returns whether it is on now."""
    on = bool(on) and not WHY_OFF
    for fk in _REGISTRY.values():
        ok = on and getattr(fk.fn, "params", None) is not None and _RT is not None
        if ok and fk._key is None:
            fk._key = _make_key_fn(fk.fn.params)
        fk.enabled = ok
        fk.cache.clear()
        fk._tkey = None
    return on


def clear() -> None:
    """Forget every cached compiled kernel (the next launch of each goes through Triton again)."""
    for fk in _REGISTRY.values():
        fk.cache.clear()


__all__ = ["FastKernel", "fast", "clear", "set_enabled", "compatibility", "ENABLED", "WHY_OFF", "ENV"]
