"""Every CPU command in README.md and docs/*.md runs as written.

Convention: each fenced ``bash`` block is preceded by ``<!-- runnable -->`` (run here, as one bash script,
from a temporary copy of the repository with this environment's ``bin`` first on PATH) or by
``<!-- not-runnable: REASON -->`` (needs an NPU / a GPU / your own model, or installs packages).
An unmarked bash block fails ``test_every_bash_block_is_classified``.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUNNABLE = "<!-- runnable -->"
NOT_RUNNABLE = re.compile(r"^<!-- not-runnable: (?P<why>\S.*\S) -->$")
FENCE_OPEN = re.compile(r"^```(bash|sh|shell)\s*$")
PER_COMMAND_S = 240  # generous: CI shares two cores; each command takes well under a minute alone
NOISE = ("Failed to load", "_pytree.py", "Failed to import from vllm", "dependency resolver", "Traceback")


@dataclass
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    marker: str | None
    text: str

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"

    def commands(self) -> list[str]:
        joined = re.sub(r"\\\n", " ", self.text)
        return [ln for ln in (x.strip() for x in joined.splitlines()) if ln and not ln.startswith("#")]


def bash_blocks(path: Path) -> list[Block]:
    lines = path.read_text(encoding="utf-8").splitlines()
    out, i = [], 0
    while i < len(lines):
        if FENCE_OPEN.match(lines[i]):
            j = i - 1
            while j >= 0 and not lines[j].strip():
                j -= 1
            marker = lines[j].strip() if j >= 0 and lines[j].strip().startswith("<!--") else None
            k = i + 1
            while k < len(lines) and not lines[k].startswith("```"):
                k += 1
            if k == len(lines):
                raise AssertionError(f"{path}:{i + 1}: fenced block never closed")
            out.append(Block(path, i + 1, marker, "\n".join(lines[i + 1:k]) + "\n"))
            i = k + 1
        else:
            i += 1
    return out


ALL_BLOCKS = [b for p in DOCS for b in bash_blocks(p)]
RUN_BLOCKS = [b for b in ALL_BLOCKS if b.marker == RUNNABLE]


def test_every_bash_block_is_classified():
    bad = [f"{b.id} (marker: {b.marker!r})" for b in ALL_BLOCKS
           if b.marker != RUNNABLE and not (b.marker and NOT_RUNNABLE.match(b.marker))]
    assert not bad, ("bash blocks need '<!-- runnable -->' or '<!-- not-runnable: REASON -->' on the line before "
                     "the fence: " + ", ".join(bad))
    assert any(b.path.name == "README.md" for b in RUN_BLOCKS), "README.md has no runnable block"


def test_block_parser_sees_markers_and_continuations(tmp_path):
    md = tmp_path / "x.md"
    md.write_text("text\n\n<!-- runnable -->\n```bash\na --x \\\n  --y  # c\n# only a comment\nb\n```\n\n"
                  "<!-- not-runnable: needs an NPU -->\n```bash\nnpu-smi info\n```\n```bash\nunmarked\n```\n")
    blocks = bash_blocks(md)
    assert [b.marker for b in blocks] == [RUNNABLE, "<!-- not-runnable: needs an NPU -->", None]
    assert blocks[0].commands() == ["a --x    --y  # c", "b"]
    assert blocks[0].line == 4


@pytest.fixture(scope="module")
def repo_copy(tmp_path_factory):
    dst = tmp_path_factory.mktemp("doc-commands") / "repo"
    shutil.copytree(ROOT, dst, ignore=shutil.ignore_patterns(".git", ".venv", ".pytest-tmp", "__pycache__",
                                                             "*.egg-info", ".ci"))
    return dst


@pytest.mark.parametrize("block", RUN_BLOCKS, ids=[b.id for b in RUN_BLOCKS])
def test_runnable_block_runs_as_written(block, repo_copy):
    env = dict(os.environ)
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    env["VIRTUAL_ENV"] = str(Path(bindir).parent)
    env.setdefault("VLLM_TARGET_DEVICE", "cpu")
    env["HF_HUB_OFFLINE"] = "1"
    env.pop("OMNI_NPU_QUANT_BACKEND", None)
    script = "set -euo pipefail\ntrap 'echo \"doc command failed: $BASH_COMMAND\" >&2' ERR\n" + block.text
    n = max(1, len(block.commands()))
    r = subprocess.run(["bash", "-c", script], cwd=repo_copy, env=env, capture_output=True, text=True,
                       timeout=PER_COMMAND_S * n, stdin=subprocess.DEVNULL)
    tail = f"\n--- stdout ---\n{r.stdout[-3000:]}\n--- stderr ---\n{r.stderr[-3000:]}"
    assert r.returncode == 0, f"{block.id} failed (exit {r.returncode}){tail}"
    noisy = [ln for ln in (r.stdout + r.stderr).splitlines() if any(s in ln for s in NOISE)]
    assert not noisy, f"{block.id}: third-party noise or a traceback in the output: {noisy[:5]}{tail}"
