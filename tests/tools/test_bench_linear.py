"""CPU checks of the GPU benchmark's plumbing (tools/bench_linear.py) and the session script
(tools/gpu_session.sh): part split, stack sizing, budget guard, merge / table / preference, and the
script's merge + packing of $OUT.  The timed runs themselves need a GPU (tools/gpu_session.sh bench1 / bench2)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "tools"))
import bench_linear as B  # noqa: E402


def _shapes():
    return [tuple(int(v) for v in s.split("x")) for s in B.SHAPES.split(",")]


def test_stacks_exceed_three_times_l2_at_4_25_bits():
    for n, k in _shapes():
        assert B._layers(n, k) * n * k * 4.25 / 8 > 3 * B.L2_BYTES, (n, k)


@pytest.mark.parametrize("n_parts", [1, 2, 3])
def test_parts_cover_every_unit_once(n_parts):
    units = B._units(_shapes(), [1, 16, 256, 4096, 16384])
    groups, load = B.split_parts(units, n_parts, 19)
    names = [u["unit"] for g in groups for u in g]
    assert sorted(names) == sorted(u["unit"] for u in units) and len(names) == len(set(names))
    assert all(groups) and len(groups) == n_parts
    if n_parts == 2:  # balanced within the largest unit's cost
        biggest = max(B._unit_cost(u, 19) for u in units)
        assert abs(load[0] - load[1]) <= biggest
    assert B.split_parts(units, n_parts, 19)[0] == groups  # deterministic


def test_plan_runs_without_a_gpu(capsys):
    assert B.main(["--plan", "--part", "2/2"]) == 0
    out = capsys.readouterr().out
    assert out.count("part ") == 2 and "estimate" in out


def test_bad_part_and_case_arguments():
    with pytest.raises(SystemExit, match="--part"):
        B.main(["--plan", "--part", "3/2"])
    with pytest.raises(SystemExit, match="unknown"):
        B.main(["--plan", "--cases", "w8a8_dynamic,nope"])


def test_budget_guard_records_what_it_skips(tmp_path):
    r = B.Run(str(tmp_path / "r.json"), budget_s=0.05, rep_ms=5, check_tol=1e-2, graph_max_m=16)
    assert not r.over("first")
    time.sleep(0.08)
    assert r.over("second") and r.meta["skipped_budget"] == ["second"]
    assert not B.Run("", 0.0, 5, 1e-2, 16).over("no budget: never")


def _row(unit, m, what, e, g, **kw):
    return dict(unit=unit, n=8192, k=8192, m=m, layers=6, what=what, eager_us=e, graph_us=g, host_us=e - g,
                vs_bf16_eager=1.0, vs_bf16_graph=1.0, **kw)


def _parts(tmp_path):
    meta = dict(device="NVIDIA H200", torch="2.11", triton="3.6", date="2026-12-02", copy_GBps_read_plus_write=4200.0)
    p1 = [_row("8192x8192", 1, "bf16 F.linear", 40, 38),
          _row("8192x8192", 1, "w8a8_dynamic", 120, 27, rel_err_ref=0.0, check="ok"),
          _row("8192x8192", 1, "w8a8_dynamic[cuda.cutlass_w8a8]", 110, 30, rel_err_ref=1e-3, check="ok"),
          _row("8192x8192", 4096, "w8a8_dynamic", 900, 850, rel_err_ref=0.0, check="ok"),
          _row("8192x8192", 4096, "w8a8_dynamic[cuda.cutlass_w8a8]", 700, 690, rel_err_ref=1e-3, check="ok"),
          _row("8192x8192", 4096, "mxfp4", 600, 590, rel_err_ref=0.5, check="FAIL")]
    p2 = [_row("dit", 4608, "DiT block bf16", 3000, 2900)]
    a, b = tmp_path / "bench_part1.json", tmp_path / "bench_part2.json"
    B._dump(str(a), {"meta": dict(meta, part="1/2", units=["8192x8192"], finished=True, elapsed_s=300,
                                  kernels={"mxfp4": "cuda.mx_fp8tc"}), "rows": p1})
    B._dump(str(b), {"meta": dict(meta, part="2/2", units=["dit"], finished=False, elapsed_s=480, dit="FLUX block",
                                  skipped_budget=["dit w4a16"]), "rows": p2})
    return a, b


def test_merge_table_and_preference(tmp_path):
    a, b = _parts(tmp_path)
    res = B.merge([str(a), str(b), str(tmp_path / "missing.json")])
    assert len(res["rows"]) == 7 and res["meta"]["units"] == ["8192x8192", "dit"]
    assert res["meta"]["skipped_budget"] == ["dit w4a16"] and "missing.json" in res["meta"]["missing_parts"][0]
    t = B.table(res)
    assert "1 FAIL" in t and "mxfp4 rel 5.00e-01" in t and "(NOT finished)" in t and "FLUX block" in t
    # M=1: Triton faster in graph mode (27 < 30); M=4096: CUTLASS faster eager (700 < 900)
    assert B.preference(res) == {("sm90", "w8a8_dynamic"): ((1, "triton"), (None, "cutlass"))}
    with pytest.raises(ValueError, match="no readable part"):
        B.merge([str(tmp_path / "missing.json")])


def test_session_script_merges_and_packs_out(tmp_path):
    a, b = _parts(tmp_path)
    out = tmp_path / "out"
    env = dict(os.environ, OUT=str(out), PY=sys.executable, BENCH_MERGE=f"{a} {b}", TRITON_CACHE_DIR=str(tmp_path / "tc"),
               TRITON_CACHE_TAR_OUT="1")
    r = subprocess.run(["bash", os.path.join(REPO, "tools", "gpu_session.sh"), "nosuchstep"], capture_output=True,
                       text=True, env=env, timeout=300, cwd=REPO)
    assert r.returncode == 0, r.stderr
    files = sorted(os.listdir(out))
    assert files == ["bench.json", "logs.tgz", "session.txt", "triton-cache.tar"], files
    summary = (out / "session.txt").read_text()
    assert "unknown step 'nosuchstep'" in summary and "1 FAIL" in summary
    assert len(json.loads((out / "bench.json").read_text())["rows"]) == 7
    with tarfile.open(out / "logs.tgz") as t:
        assert any(n.startswith("logs") for n in t.getnames())


@pytest.mark.slow
def test_dry_run_of_the_whole_pipeline(tmp_path):
    """The benchmark end to end on the CPU (tiny shapes, Triton interpreter): cases, reference check, DiT block
    through quantize_, JSON; the CUTLASS case is recorded as not run with its refusal (no compiled vLLM here)."""
    out = tmp_path / "dry.json"
    env = dict(os.environ, PYTHONPATH=REPO, CUDA_VISIBLE_DEVICES="")
    env.pop("OMNI_NPU_QUANT_CUDA_CUTLASS", None)
    r = subprocess.run([sys.executable, os.path.join(REPO, "tools", "bench_linear.py"), "--dry-cpu", "--cases",
                        "w8a8_dynamic,w8a8_dynamic[cuda.cutlass_w8a8]", "--dit-schemes", "w8a8_dynamic", "--out",
                        str(out)], capture_output=True, text=True, env=env, timeout=900, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["meta"]["finished"] is True
    rows = {(row["unit"], row["m"], row["what"]): row for row in res["rows"]}
    for m in (1, 17):
        assert ("64x512", m, "bf16 F.linear") in rows
        w = rows[("64x512", m, "w8a8_dynamic")]
        assert w["check"] == "ok" and w["kernel"] == "cuda.int8_dynamic" and w["rel_vs_bf16"] < 0.05
    d = rows[("dit", 80, "DiT block w8a8_dynamic")]
    assert d["check"] == "ok" and d["quantized_layers"] == 12 and "cuda.int8_dynamic" in d["kernel"]
    assert ("dit", 80, "DiT block bf16") in rows
    why = res["meta"]["unavailable"]["64x512 w8a8_dynamic[cuda.cutlass_w8a8]"]
    assert "interpreter" in why and "vLLM" in why
