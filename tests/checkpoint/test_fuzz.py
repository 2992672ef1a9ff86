"""Fuzz the reader (issue 17 item 2): random mutations of the description, the index and the safetensors headers
of a small valid checkpoint.  Nothing but CheckpointError may escape load_checkpoint; validate_checkpoint never
raises and never reports an internal crash; ``inspect`` returns an exit code.

Bounded for CI: OMNI_NPU_QUANT_FUZZ_EXAMPLES (default 120, about 20 s on a 2-core machine)."""
from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import struct

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")  # a test extra (setup.py extras / ci/setup.sh)
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from omni_npu_quant.checkpoint import CheckpointError, load_checkpoint, validate_checkpoint, write_ascendv1  # noqa: E402
from omni_npu_quant.cli.main import main  # noqa: E402
from omni_npu_quant.schemes.registry import get_scheme  # noqa: E402

D = "quant_model_description.json"
IDX = "quant_model_weights.safetensors.index.json"
EXAMPLES = int(os.environ.get("OMNI_NPU_QUANT_FUZZ_EXAMPLES", "120"))


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    g = torch.Generator().manual_seed(7)
    p = "model.layers.0."
    layers = {}
    for nm in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
        layers[p + nm] = ("W8A8", get_scheme("W8A8").quantize_weight(torch.randn(16, 64, generator=g), act_min=-2.0,
                                                                       act_max=3.0))
    for nm in ("self_attn.k_proj", "self_attn.v_proj"):  # fused siblings share the input tensors
        for s in ("input_scale", "input_offset"):
            layers[p + nm][1][s] = layers[p + "self_attn.q_proj"][1][s].clone()
    o = get_scheme("W8A8_MXFP8").quantize_weight(torch.randn(16, 64, generator=g), torch.randn(16, generator=g))
    o["mul_scale"] = torch.rand(64, generator=g) + 0.5
    layers[p + "self_attn.o_proj"] = ("W8A8_MXFP8", o)
    layers[p + "mlp.down_proj"] = ("W8A8_DYNAMIC", get_scheme("W8A8_DYNAMIC").quantize_weight(torch.randn(64, 32, generator=g)))
    floats = {"model.embed_tokens.weight": torch.randn(8, 64, generator=g).bfloat16(),
              p + "input_layernorm.weight": torch.ones(64, dtype=torch.bfloat16)}
    out = write_ascendv1(tmp_path_factory.mktemp("fuzz") / "ck", layers, floats, part_file_size=2e-6,
                         config={"model_type": "llama", "torch_dtype": "bfloat16"},
                         shared_input_groups=[[p + "self_attn.q_proj", p + "self_attn.k_proj", p + "self_attn.v_proj"]])
    assert load_checkpoint(out).layers and (out / IDX).exists()
    return out


# ---- mutations --------------------------------------------------------------------------------------------
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-2 ** 70, max_value=2 ** 70) | st.floats(allow_nan=False)
    | st.text(max_size=12) | st.sampled_from(["FLOAT", "W8A8", "W4A4_MXFP4", "F32", "I64", "U8", "F8_E4M3", "../x",
                                              "/abs", "quant_model_weights-00001-of-00002.safetensors"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)


def _paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, prefix + (i,))


def _mutate_json(obj, data):
    paths = list(_paths(obj))
    path = paths[data.draw(st.integers(0, len(paths) - 1), label="path")]
    op = data.draw(st.sampled_from(["replace", "delete", "add", "nest"]), label="op")
    if not path:
        return data.draw(json_values, label="root") if op == "replace" else obj
    parent = obj
    for k in path[:-1]:
        parent = parent[k]
    last = path[-1]
    if op == "replace":
        parent[last] = data.draw(json_values, label="value")
    elif op == "delete":
        del parent[last]
    elif op == "add" and isinstance(parent, dict):
        parent[data.draw(st.text(max_size=10), label="key")] = data.draw(json_values, label="value")
    elif op == "nest":  # spliced into the serialized text (Python's json cannot build it this deep)
        parent[last] = NEST
    return obj


NEST = "\u0000nest\u0000"


def _dumps(obj, data) -> str:
    text = json.dumps(obj)
    if json.dumps(NEST) in text:
        depth = data.draw(st.sampled_from([2, 40, 200, 100_000]), label="depth")
        text = text.replace(json.dumps(NEST), "[" * depth + "]" * depth)
    return text


def _split(raw: bytes):
    n = struct.unpack("<Q", raw[:8])[0]
    return raw[8:8 + n], raw[8 + n:]


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(data=st.data())
def test_mutated_checkpoints_raise_only_checkpoint_error(pristine, tmp_path_factory, data):
    work = tmp_path_factory.getbasetemp() / "fuzz-case"
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(pristine, work)
    shards = sorted(p.name for p in work.glob("quant_model_weights-*.safetensors"))
    target = data.draw(st.sampled_from([D, D, IDX] + shards), label="file")
    raw = (work / target).read_bytes()
    if target.endswith(".json"):
        if data.draw(st.booleans(), label="structural"):
            (work / target).write_text(_dumps(_mutate_json(json.loads(raw), data), data))
        else:
            i = data.draw(st.integers(0, len(raw) - 1), label="byte")
            (work / target).write_bytes(raw[:i] + bytes([data.draw(st.integers(0, 255))]) + raw[i + 1:])
    else:
        header, body = _split(raw)
        kind = data.draw(st.sampled_from(["json", "json", "byte", "length", "truncate"]), label="kind")
        if kind == "json":
            header = _dumps(_mutate_json(json.loads(header), data), data).encode()
            raw = struct.pack("<Q", len(header)) + header + body
        elif kind == "byte":
            i = data.draw(st.integers(0, len(raw) - 1), label="byte")
            raw = raw[:i] + bytes([data.draw(st.integers(0, 255))]) + raw[i + 1:]
        elif kind == "length":
            raw = struct.pack("<Q", data.draw(st.integers(0, 2 ** 64 - 1))) + raw[8:]
        else:
            raw = raw[: data.draw(st.integers(0, len(raw) - 1))]
        (work / target).write_bytes(raw)

    try:
        load_checkpoint(work)
    except CheckpointError as e:
        assert e.problems and all(p.file for p in e.problems), e
    probs = validate_checkpoint(work)
    crashed = [p for p in probs if "unexpected failure" in p.message]
    assert not crashed, crashed
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        rc = main(["inspect", str(work)])
    assert rc in (0, 1)
