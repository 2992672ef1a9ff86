"""Issue 17: the reader's error contract, value validation of every tensor kind, writer locking / staging /
disk-full / permissions / shared tensors / determinism (no msModelSlim needed)."""
from __future__ import annotations

import errno
import json
import os
import signal
import struct
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file, save_file

from omni_npu_quant.checkpoint import CheckpointError, load_checkpoint, validate_checkpoint, write_ascendv1
from omni_npu_quant.checkpoint import writer as WR
from omni_npu_quant.numerics.int8 import deq_scale_to_int64
from omni_npu_quant.schemes.registry import get_scheme

D = "quant_model_description.json"
W = "quant_model_weights.safetensors"
P = "model.layers.0.self_attn."


def _errors(path):
    probs = validate_checkpoint(path)
    assert not [p for p in probs if "unexpected failure" in p.message], probs  # no internal crash turned into text
    return [p for p in probs if p.severity == "error"]


def _refused(path, file=None, tensor=None, needle=None):
    """The contract: validate lists the error, load raises CheckpointError only, inspect exits 1."""
    from omni_npu_quant.cli.main import main

    errs = _errors(path)
    assert errs, "expected an error"
    hit = [e for e in errs if (file is None or e.file == file) and (tensor is None or e.tensor == tensor)
           and (needle is None or needle in e.message)]
    assert hit, f"no error with file={file} tensor={tensor} {needle!r}:\n" + "\n".join(map(str, errs))
    with pytest.raises(CheckpointError) as ei:
        load_checkpoint(path)
    assert type(ei.value) is CheckpointError and ei.value.problems
    assert main(["inspect", str(path)]) == 1
    return hit


def _layers(gen, label="W8A8_DYNAMIC", k=64, n=32, names=("q_proj", "k_proj", "v_proj", "o_proj")):
    out = {}
    for nm in names:
        w = torch.randn(n, k, generator=gen)
        if label == "W8A8":
            ts = get_scheme(label).quantize_weight(w, torch.randn(n, generator=gen), act_min=-3.0, act_max=4.0)
        else:
            ts = get_scheme(label).quantize_weight(w, torch.randn(n, generator=gen) if nm == "o_proj" else None)
        out[P + nm] = (label, ts)
    return out


def _ck(tmp_path, gen, label="W8A8_DYNAMIC", name="ck", **kw):
    floats = {"model.embed_tokens.weight": torch.randn(10, 64, generator=gen).bfloat16()}
    return write_ascendv1(tmp_path / name, _layers(gen, label, **kw), floats, config={"model_type": "llama"})


def _raw_safetensors(path, header: dict, data: bytes):
    h = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(h)) + h + data)


def _desc(path, fn):
    d = json.loads((path / D).read_text())
    fn(d)
    (path / D).write_text(json.dumps(d, indent=4))


# ---- header / description parsing ------------------------------------------------------------------
def _two_tensor_ck(tmp_path, gen, header_fn):
    """A valid checkpoint whose weight file is replaced by a hand-made one (two FLOAT tensors) after header_fn."""
    path = write_ascendv1(tmp_path / "raw", {}, {"a.weight": torch.zeros(2, dtype=torch.float32),
                                                 "b.weight": torch.zeros(2, dtype=torch.float32)})
    hdr = {"a.weight": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
           "b.weight": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}
    data = header_fn(hdr)
    _raw_safetensors(path / W, hdr, data if data is not None else b"\0" * 16)
    return path


@pytest.mark.parametrize("case,tensor,needle", [
    ("gap", "b.weight", "gap of 4 bytes"),
    ("overlap", "b.weight", "overlaps"),
    ("out_of_range", "b.weight", "truncated"),
    ("shape_str", "a.weight", "shape must be a list"),
    ("shape_float", "a.weight", "shape entry"),
    ("shape_bool", "a.weight", "shape entry"),
    ("shape_negative", "a.weight", "shape entry"),
    ("offsets_short", "a.weight", "data_offsets must be"),
    ("offsets_reversed", "a.weight", "end before"),
    ("dtype_unknown", "a.weight", "unknown safetensors dtype"),
    ("dtype_not_str", "a.weight", "unknown safetensors dtype"),
    ("metadata_not_map", "__metadata__", "__metadata__ must map"),
    ("deep", "", "deeper than"),
    ("nan_literal", "", "NaN"),
    ("duplicate_key", "", "duplicate key"),
])
def test_corrupt_headers_are_refused_naming_file_and_tensor(tmp_path, gen, case, tensor, needle):
    def mutate(h):
        a, b = h["a.weight"], h["b.weight"]
        if case == "gap":
            b["data_offsets"] = [12, 20]
            return b"\0" * 20
        if case == "overlap":
            b["data_offsets"] = [4, 12]
            return b"\0" * 12
        if case == "out_of_range":
            b["data_offsets"] = [8, 16]
            return b"\0" * 12
        if case == "shape_str":
            a["shape"] = "2"
        if case == "shape_float":
            a["shape"] = [2.0]
        if case == "shape_bool":
            a["shape"] = [True, 2]
        if case == "shape_negative":
            a["shape"] = [-2]
        if case == "offsets_short":
            a["data_offsets"] = [0]
        if case == "offsets_reversed":
            a["data_offsets"] = [8, 0]
        if case == "dtype_unknown":
            a["dtype"] = "F128"
        if case == "dtype_not_str":
            a["dtype"] = 4
        if case == "metadata_not_map":
            h["__metadata__"] = {"k": 1}
        if case == "deep":
            h["__metadata__"] = {"k": "v"}
            a["x"] = json.loads("[" * 50 + "]" * 50)
        return None

    path = _two_tensor_ck(tmp_path, gen, mutate)
    if case == "nan_literal":
        raw = (path / W).read_bytes()
        n = struct.unpack("<Q", raw[:8])[0]
        h = raw[8:8 + n].replace(b'"shape": [2]', b'"shape": [2], "q": NaN', 1)
        (path / W).write_bytes(struct.pack("<Q", len(h)) + h + raw[8 + n:])
    if case == "duplicate_key":
        raw = (path / W).read_bytes()
        n = struct.unpack("<Q", raw[:8])[0]
        h = raw[8:8 + n].replace(b'"dtype": "F32"', b'"dtype": "F32", "dtype": "F32"', 1)
        (path / W).write_bytes(struct.pack("<Q", len(h)) + h + raw[8 + n:])
    _refused(path, file=W, tensor=tensor, needle=needle)


@pytest.mark.parametrize("case,tensor,needle", [
    ("deep_metadata", "", "deeper than"),
    ("nan_value", "", "NaN"),
    ("version_list", "version", "must be a string"),
    ("group_size_str", "group_size", "must be an integer"),
    ("metadata_list", "metadata", "must be an object"),
    ("optional_list", "optional", "must be an object"),
    ("rotation_map_list", "optional.quarot.rotation_map", "must be an object"),
    ("rotation_file_int", "optional.quarot.rotation_map.global_rotation", "must be a string"),
])
def test_ill_typed_description_is_refused(tmp_path, gen, case, tensor, needle):
    path = _ck(tmp_path, gen)
    if case in ("deep_metadata", "nan_value"):
        text = (path / D).read_text()
        rep = '"metadata": ' + "[" * 5000 + "]" * 5000 if case == "deep_metadata" else '"metadata": NaN'
        (path / D).write_text(text.replace('"metadata": {}', rep))
    else:
        _desc(path, lambda d: d.update({
            "version_list": {"version": [1]}, "group_size_str": {"group_size": "32"},
            "metadata_list": {"metadata": [1]}, "optional_list": {"optional": ["quarot"]},
            "rotation_map_list": {"optional": {"quarot": {"rotation_map": ["optional/quarot.safetensors"]}}},
            "rotation_file_int": {"optional": {"quarot": {"rotation_map": {"global_rotation": 7}}}}}[case]))
    _refused(path, file=D, tensor=tensor, needle=needle)


@pytest.mark.parametrize("case", ["metadata_list", "total_size_str", "weight_map_value_int", "not_object"])
def test_ill_typed_index_is_refused(tmp_path, gen, case):
    floats = {"model.embed_tokens.weight": torch.randn(10, 64, generator=gen).bfloat16()}
    path = write_ascendv1(tmp_path / "s", _layers(gen), floats, part_file_size=0.00001)
    idx_name = "quant_model_weights.safetensors.index.json"
    idx = json.loads((path / idx_name).read_text())
    if case == "metadata_list":
        idx["metadata"] = [1]
    elif case == "total_size_str":
        idx["metadata"]["total_size"] = "12"
    elif case == "weight_map_value_int":
        idx["weight_map"][next(iter(idx["weight_map"]))] = 3
    else:
        idx = [idx]
    (path / idx_name).write_text(json.dumps(idx))
    _refused(path, file=idx_name)


def test_quantized_label_on_a_lone_bias(tmp_path, gen):
    path = _ck(tmp_path, gen)
    t = load_file(str(path / W))
    t["model.layers.0.mlp.extra.bias"] = torch.zeros(4, dtype=torch.int32)
    save_file(t, str(path / W))
    _desc(path, lambda d: d.update({"model.layers.0.mlp.extra.bias": "W8A8_DYNAMIC"}))
    _refused(path, file=W, tensor="model.layers.0.mlp.extra.bias", needle="no stored")


def test_labelled_but_missing_div_mul_scale(tmp_path, gen):
    ts = get_scheme("mxfp4").quantize_weight(torch.randn(16, 64, generator=gen))
    ts["mul_scale"] = torch.rand(64, generator=gen) + 0.5
    path = write_ascendv1(tmp_path / "c", {"blocks.0.attn.to_out": ("W4A4_MXFP4", ts)}, {})
    t = load_file(str(path / W))
    del t["blocks.0.attn.to_out.div.mul_scale"]
    save_file(t, str(path / W))
    hit = _refused(path, tensor="blocks.0.attn.to_out.div.mul_scale")
    assert any("missing" in e.message or "stored in no weight file" in e.message for e in hit)


def test_fifo_description_does_not_hang_inspect(tmp_path, gen):
    from omni_npu_quant.cli.main import main

    path = _ck(tmp_path, gen)
    (path / D).unlink()
    os.mkfifo(path / D)

    def boom(*_):
        raise TimeoutError("inspect blocked on the FIFO")

    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(20)
    try:
        errs = _errors(path)
        assert any(e.file == D and "not a regular file" in e.message for e in errs), errs
        with pytest.raises(CheckpointError):
            load_checkpoint(path)
        assert main(["inspect", str(path)]) == 1
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def test_fifo_weight_file_is_refused(tmp_path, gen):
    path = _ck(tmp_path, gen)
    (path / W).unlink()
    os.mkfifo(path / W)
    signal.alarm(20)
    try:
        _refused(path, file=W)
    finally:
        signal.alarm(0)


# ---- value validation ---------------------------------------------------------------------------------
def _poke(path, key, fn):
    t = load_file(str(path / W))
    t[key] = fn(t[key].clone())
    save_file(t, str(path / W))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -1.0, 0.0])
def test_w8a8_dynamic_weight_scale_values(tmp_path, gen, bad):
    path = _ck(tmp_path, gen)

    def f(s):
        s[3, 0] = bad
        return s
    _poke(path, P + "k_proj.weight_scale", f)
    _refused(path, file=W, tensor=P + "k_proj.weight_scale", needle="weight_scale")


def test_zero_scale_is_fine_for_an_all_zero_row(tmp_path, gen):
    layers = _layers(gen)
    ts = get_scheme("w8a8_dynamic").quantize_weight(torch.cat([torch.zeros(1, 64), torch.randn(31, 64, generator=gen)]))
    assert ts["weight_scale"][0, 0] == 2.0 ** -23 and not ts["weight"][0].any()  # msModelSlim's eps floor
    ts["weight_scale"][0, 0] = 0  # another writer's 0 for the all-zero row is accepted too
    layers[P + "q_proj"] = ("W8A8_DYNAMIC", ts)
    assert _errors(write_ascendv1(tmp_path / "z", layers, {})) == []


@pytest.mark.parametrize("which", ["weight_scale", "weight_offset"])
def test_w8a16_nan_scale_or_offset(tmp_path, gen, which):
    path = _ck(tmp_path, gen, label="W8A16")

    def f(s):
        s[5, 0] = float("nan")
        return s
    _poke(path, P + "v_proj." + which, f)
    _refused(path, file=W, tensor=P + "v_proj." + which, needle="non-finite")


@pytest.mark.parametrize("code", [0x7F, 0xFF])
def test_mxfp8_weight_nan_codes(tmp_path, gen, code):
    path = _ck(tmp_path, gen, label="W8A8_MXFP8")

    def f(w):
        b = w.view(torch.uint8).clone()
        b[2, 7] = code
        return b.view(torch.float8_e4m3fn)
    _poke(path, P + "q_proj.weight", f)
    _refused(path, file=W, tensor=P + "q_proj.weight", needle="NaN codes")


@pytest.mark.parametrize("form,bad", [("fp32", -1e-3), ("fp32", 0.0), ("int64", -1e-3), ("int64", 0.0)])
def test_w8a8_deq_scale_not_positive(tmp_path, gen, form, bad):
    path = _ck(tmp_path, gen, label="W8A8")

    def f(ds):
        ds = ds.clone()
        ds[1] = bad
        return deq_scale_to_int64(ds) if form == "int64" else ds
    _poke(path, P + "o_proj.deq_scale", f)
    _refused(path, file=W, tensor=P + "o_proj.deq_scale", needle="deq_scale")


@pytest.mark.parametrize("bad", [float("nan"), 128.0, -129.0])
def test_input_offset_nan_or_outside_int8(tmp_path, gen, bad):
    path = _ck(tmp_path, gen, label="W8A8", names=("o_proj",))
    _poke(path, P + "o_proj.input_offset", lambda o: torch.full_like(o, bad))
    _refused(path, file=W, tensor=P + "o_proj.input_offset", needle="input_offset")


def test_mx_k_not_multiple_of_32_is_refused(tmp_path, gen):
    ts = get_scheme("mxfp8").quantize_weight(torch.randn(16, 64, generator=gen))
    ts = {"weight": ts["weight"][:, :48].contiguous(), "weight_scale": ts["weight_scale"][:, :2].contiguous()}
    path = write_ascendv1(tmp_path / "k", {"x.proj": ("W8A8_MXFP8", ts)}, {}, validate=False)
    _refused(path, file=W, needle="multiple of 32")


# ---- writers --------------------------------------------------------------------------------------------
_HOLDER = textwrap.dedent("""
    import sys, time
    from omni_npu_quant.checkpoint.writer import output_lock
    with output_lock(sys.argv[1]):
        print("locked", flush=True)
        time.sleep(60)
""")


@pytest.fixture
def held_lock():
    procs = []

    def hold(out):
        p = subprocess.Popen([sys.executable, "-c", _HOLDER, str(out)], stdout=subprocess.PIPE, text=True)
        procs.append(p)
        assert p.stdout.readline().strip() == "locked"
        return p

    yield hold
    for p in procs:
        p.kill()
        p.wait()


def test_concurrent_writer_gets_a_clear_error_naming_the_pid(tmp_path, gen, held_lock):
    out = tmp_path / "out"
    other = held_lock(out)
    live_staging = tmp_path / f".out.tmp-{other.pid}-live"  # the holder's work in progress
    live_staging.mkdir()
    with pytest.raises(WR.OutputLockedError, match=f"process {other.pid}") as ei:
        write_ascendv1(out, _layers(gen), {})
    assert ei.value.pid == other.pid and isinstance(ei.value, CheckpointError)
    assert live_staging.exists() and not out.exists()  # the live run's work is untouched
    other.kill()
    other.wait()
    write_ascendv1(out, _layers(gen), {})  # the lock dies with its process
    assert not live_staging.exists()  # stale staging of the killed run removed (by lock, not age)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_calibrate_out_goes_through_the_lock(tmp_path, held_lock):
    from omni_npu_quant.calibration import CalibOptions, calibrate, work_dir_for

    out = tmp_path / "cal"
    work = work_dir_for(out)
    (work / "groups").mkdir(parents=True)
    (work / "marker").write_text("live run")
    other = held_lock(out)
    with pytest.raises(WR.OutputLockedError, match=str(other.pid)):
        calibrate(CalibOptions(out=str(out), model="tiny-dit", model_layers=1, progress=False))
    assert (work / "marker").read_text() == "live run"  # a live run's work dir is never deleted


def test_calibrate_pipeline_out_goes_through_the_lock(tmp_path, held_lock):
    from omni_npu_quant.calibration import CalibOptions
    from omni_npu_quant.calibration.capture import calibrate_pipeline

    out = tmp_path / "pipe-out"
    capture = tmp_path / "pipe-out.capture"
    capture.mkdir()
    (capture / "marker").write_text("live run")
    other = held_lock(out)
    with pytest.raises(WR.OutputLockedError, match=str(other.pid)):
        calibrate_pipeline(CalibOptions(out=str(out), progress=False), pipeline=str(tmp_path / "no-pipeline"),
                           prompts=["a cat"], steps=1, height=16, width=16)
    assert (capture / "marker").read_text() == "live run"  # the live run's capture directory is kept


_KILLED_WRITER = textwrap.dedent("""
    import sys, time, torch
    from omni_npu_quant.checkpoint import writer as WR

    def slow_save(path, tensors):
        path.write_bytes(b"\\0" * 65536)  # a big part of the output is on disk ...
        print("writing", flush=True)
        time.sleep(60)  # ... when the run is killed

    WR._save = slow_save
    WR.write_ascendv1(sys.argv[1], {}, {"w": torch.zeros(4)})
""")


def test_sigkill_during_write_leaves_staging_that_the_next_run_removes(tmp_path, gen):
    out = tmp_path / "ck"
    p = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "writing"
        staging = [d for d in tmp_path.iterdir() if d.name.startswith(".ck.tmp-")]
        assert staging and (tmp_path / ".ck.lock").exists()
        with pytest.raises(WR.OutputLockedError, match=str(p.pid)):  # still alive: its staging is kept
            write_ascendv1(out, _layers(gen), {})
        assert staging[0].exists()
    finally:
        p.kill()
        p.wait()
    assert staging[0].exists() and not out.exists()  # SIGKILL: nothing cleaned up, nothing committed
    write_ascendv1(out, _layers(gen), {})
    assert sorted(d.name for d in tmp_path.iterdir()) == ["ck"] and load_checkpoint(out).layers


def test_stale_staging_dirs_are_removed_when_the_lock_is_free(tmp_path, gen):
    for n in (".ck.tmp-4242-dead", ".ck.staging-4242", ".ck.old-4242"):
        (tmp_path / n).mkdir()
        (tmp_path / n / "quant_model_weights.safetensors").write_bytes(b"\0" * 1024)
    (tmp_path / ".other.tmp-1-x").mkdir()  # another output's staging is not ours to remove
    _ck(tmp_path, gen)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.tmp-1-x", "ck"]


@pytest.mark.parametrize("where", ["save", "safetensors", "mkdir"])
def test_disk_full_and_permission_errors_are_clear_and_leave_nothing(tmp_path, gen, monkeypatch, where):
    if where == "save":
        def fail(path, tensors):
            path.write_bytes(b"\0" * 100)  # half-written
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        monkeypatch.setattr(WR, "_save", fail)
        want = "no space left"
    elif where == "safetensors":
        import safetensors.torch as st

        def fail(tensors, filename, metadata=None):
            raise RuntimeError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "
                               "\"No space left on device\" })")
        monkeypatch.setattr(st, "save_file", fail)
        want = "no space left"
    else:
        real = os.mkdir

        def fail(path, mode=0o777, **kw):
            if ".tmp-" in str(path):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
            return real(path, mode, **kw)
        monkeypatch.setattr(os, "mkdir", fail)
        want = "permission denied"
    with pytest.raises(CheckpointError, match=want) as ei:
        write_ascendv1(tmp_path / "o", _layers(gen), {})
    assert "Traceback" not in str(ei.value) and "nothing was written" in str(ei.value)
    assert list(tmp_path.iterdir()) == []


def test_tied_and_shared_tensors_are_written_under_every_name(tmp_path, gen):
    emb = torch.randn(10, 64, generator=gen).bfloat16()
    layers = _layers(gen)
    shared_bias = torch.randn(32, generator=gen)
    layers[P + "q_proj"][1]["bias"] = shared_bias
    layers[P + "k_proj"][1]["bias"] = shared_bias
    fused = torch.randn(64, 64, generator=gen).bfloat16()
    floats = {"model.embed_tokens.weight": emb, "lm_head.weight": emb,  # tied embeddings
              "a.weight": fused[:32], "b.weight": fused[32:]}  # views of one storage
    path = write_ascendv1(tmp_path / "t", layers, floats)
    ck = load_checkpoint(path)
    assert torch.equal(ck.float_tensors["lm_head.weight"], emb) and torch.equal(ck.float_tensors["model.embed_tokens.weight"], emb)
    assert torch.equal(ck.float_tensors["a.weight"], fused[:32]) and torch.equal(ck.float_tensors["b.weight"], fused[32:])
    assert torch.equal(ck.layers[P + "q_proj"].tensors["bias"], shared_bias)
    assert torch.equal(ck.layers[P + "k_proj"].tensors["bias"], shared_bias)


def test_same_input_gives_identical_bytes(tmp_path, gen):
    layers = _layers(gen, label="W8A8")
    floats = {"model.embed_tokens.weight": torch.randn(10, 64, generator=gen).bfloat16()}
    a = write_ascendv1(tmp_path / "a", layers, floats, config={"model_type": "llama", "torch_dtype": "float16"},
                       part_file_size=0.00001, extra_files={"notes.md": "x"})
    b = write_ascendv1(tmp_path / "b", layers, floats, config={"model_type": "llama", "torch_dtype": "float16"},
                       part_file_size=0.00001, extra_files={"notes.md": "x"})
    fa = {p.name: p.read_bytes() for p in a.iterdir()}
    assert len(fa) > 4 and fa == {p.name: p.read_bytes() for p in b.iterdir()}


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_permissions_follow_the_umask(tmp_path, gen, umask):
    old = os.umask(umask)
    try:
        path = _ck(tmp_path, gen)
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o777 & ~umask
    for f in path.iterdir():
        assert f.stat().st_mode & 0o777 == 0o666 & ~umask, f.name


def test_w8a8_deq_scale_dtype_follows_the_model_dtype(tmp_path, gen):
    """msModelSlim: fp32 deq_scale for a bf16 model, the int64 bit-pattern form otherwise (values unchanged)."""
    layers = _layers(gen, label="W8A8", names=("o_proj",))
    ds = layers[P + "o_proj"][1]["deq_scale"]
    for dt, want in (("bfloat16", torch.float32), ("float16", torch.int64), ("float32", torch.int64)):
        path = write_ascendv1(tmp_path / dt, layers, {}, config={"torch_dtype": dt})
        got = load_checkpoint(path).layers[P + "o_proj"].tensors["deq_scale"]
        assert got.dtype == want
        assert torch.equal(got if want == torch.float32 else got.to(torch.int32).view(torch.float32), ds)
    # no config: the float tensors' one dtype decides (an fp16 model quantized in memory got fp32 deq_scale,
    # which vllm-ascend copies into its int64 parameter as zeros)
    for dt, want in ((torch.bfloat16, torch.float32), (torch.float16, torch.int64)):
        path = write_ascendv1(tmp_path / f"nocfg-{dt}", layers, {"model.norm.weight": torch.ones(8, dtype=dt)})
        assert load_checkpoint(path).layers[P + "o_proj"].tensors["deq_scale"].dtype == want
    mixed = {"model.norm.weight": torch.ones(8, dtype=torch.float16), "lm_head.weight": torch.ones(8, 8)}
    path = write_ascendv1(tmp_path / "nocfg-mixed", layers, mixed)  # ambiguous: stored as given
    assert load_checkpoint(path).layers[P + "o_proj"].tensors["deq_scale"].dtype == ds.dtype


def test_vllm_config_reads_the_description_with_the_reader_contract(tmp_path):
    from omni_npu_quant.integrations.vllm.config import OmniNpuQuantConfig

    def load(d):
        OmniNpuQuantConfig.from_config({"quant_method": "omni_npu_quant"}).maybe_update_config(str(d))

    deep = tmp_path / "deep"
    deep.mkdir()
    (deep / D).write_text('{"metadata": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(ValueError, match="deeper than"):
        load(deep)
    fifo = tmp_path / "fifo"
    fifo.mkdir()
    os.mkfifo(fifo / D)
    signal.alarm(20)
    try:
        with pytest.raises(ValueError, match="not a regular file"):
            load(fifo)
    finally:
        signal.alarm(0)
    with pytest.raises(FileNotFoundError):
        load(tmp_path)
