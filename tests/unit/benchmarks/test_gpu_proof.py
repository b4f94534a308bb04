"""benchmarks/gpu_proof.py (issue 10) stays runnable: its tiny CPU run measures every section, and it
never imports Ray, LanceDB or this project's packages (the GPU host has none of them)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
SCRIPT = ROOT / "benchmarks" / "gpu_proof.py"
BLOCKED = ("ray", "lancedb")
PROJECT = ("deployments", "storage", "pipelines", "benchmarks")

# Runs the script as __main__ with Ray and LanceDB unimportable (a None entry in sys.modules makes any
# import of them fail), records every import statement the script itself executes, and reports which
# modules ended up loaded.
RUNNER = r"""
import builtins, json, runpy, sys
for name in {blocked!r}:
    sys.modules[name] = None
asked = []
_import = builtins.__import__
def _recording_import(name, globals=None, locals=None, fromlist=(), level=0):
    if (globals or {{}}).get("__name__") == "__main__":
        asked.append(name)
    return _import(name, globals, locals, fromlist, level)
builtins.__import__ = _recording_import
sys.argv = [{script!r}] + {args!r}
code = 0
try:
    runpy.run_path({script!r}, run_name="__main__")
except SystemExit as exc:
    code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
finally:
    builtins.__import__ = _import
    loaded = sorted(m for m, mod in sys.modules.items() if mod is not None)
    with open({report!r}, "w") as f:
        json.dump({{"asked": sorted(set(asked)), "loaded": loaded}}, f)
sys.exit(code)
"""


def run_script(out: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    report = out.parent / f"{out.name}-imports.json"
    code = RUNNER.format(blocked=BLOCKED, script=str(SCRIPT), report=str(report),
                         args=["--device", "cpu", "--kit", "tiny", "--out", str(out), *args])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": ""}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert report.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc, json.loads(report.read_text())


# The figure each section exists for, per step: present and > 0 after the tiny run.
HEADLINES = {
    "embedder": {"image_b64_eager": "img_per_s", "image_b256_eager": "img_per_s",
                 "image_b64_compiled": "img_per_s", "image_b256_compiled": "img_per_s",
                 "text_b64_eager": "texts_per_s",
                 "siglip2_image_b256_eager": "img_per_s", "siglip2_image_b256_compiled": "img_per_s",
                 "siglip2_text_b64_eager": "texts_per_s",
                 "chinese_clip_image_b256_eager": "img_per_s", "chinese_clip_text_b64_eager": "texts_per_s"},
    "writer": {"b1_eager_dynamic": "tok_per_s", "b1_static_compiled": "tok_per_s",
               "b16_static_compiled": "tok_per_s"},
    "describer": {"prefill_1_token": "p50_s", "describe_8_tokens": "p50_s"},
    "painter": {"eager": "p50_s", "compile": "p50_s", "compile_fp8": "p50_s"},
    "guard": {"text_b1": "ms_per_prompt", "text_b16": "ms_per_prompt", "image_b1": "ms_per_image",
              "image_b16": "ms_per_image"},
}


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("proof") / "all"
    proc, imports = run_script(out)
    return out, proc, imports


def test_tiny_cpu_run_measures_every_section(full_run):
    out, proc, _ = full_run
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    for section, steps in HEADLINES.items():
        rec = json.loads((out / f"{section}.json").read_text())
        assert rec["status"] == "ok" and rec["error"] is None, rec
        assert rec["kit"] == "tiny" and rec["device"] == "cpu"
        assert rec["env"]["torch"] and rec["env"]["transformers"]
        assert rec["memory"]["weights_gib"] > 0
        for step, key in steps.items():
            got = rec["steps"][step]
            assert "error" not in got, (section, step, got)
            assert got[key] > 0, (section, step, got)
        for name, got in rec["steps"].items():
            assert "error" not in got, (section, name, got)
    writer = json.loads((out / "writer.json").read_text())["steps"]
    assert writer["b1_static_compiled"]["compiled"] is True  # generate() really took the compiled path
    assert writer["b16_static_compiled"]["new_tokens"] == 16
    painter = json.loads((out / "painter.json").read_text())
    fp8 = painter["steps"]["compile_fp8"]
    assert fp8["linears"] > 0 and 0 < fp8["layer_rel_err_vs_bf16"] < 0.1
    assert "skipped" in painter["steps"]["compile_fp8_cudnn_attention"]  # cuDNN attention is CUDA-only
    embedder = json.loads((out / "embedder.json").read_text())
    assert set(embedder["families"]) == {"clip", "siglip2", "chinese_clip"}
    assert all(f["parameters"] > 0 for f in embedder["families"].values())
    assert embedder["steps"]["siglip2_text_b64_eager"]["tokens"] == 64  # SigLIP's fixed padding
    summary = json.loads((out / "summary.json").read_text())
    assert {row["role"] for row in summary["memory"]} == {"embedder", "writer", "describer", "painter", "guard"}
    assert summary["wrong"] == []  # every step's answers checked (shapes, finite values, token counts)
    md = (out / "summary.md").read_text()
    assert "| painter |" in md and "| embedder (SigLIP 2 base/16-224) |" in md
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{s}.json" for s in HEADLINES] + ["summary.json", "summary.md"])  # <= 8 files for the device tool


def test_script_never_imports_ray_lancedb_or_the_project(full_run):
    _, _, imports = full_run
    assert {"torch", "transformers", "diffusers"} <= set(imports["asked"])  # the recorder saw the script's imports
    for name in imports["asked"]:
        assert name.split(".")[0] not in BLOCKED + PROJECT, imports["asked"]
    for name in imports["loaded"]:
        assert name.split(".")[0] not in BLOCKED + PROJECT, name
    assert "diffusers" in {m.split(".")[0] for m in imports["loaded"]}  # the painter section did run
    source = SCRIPT.read_text()
    pattern = r"^\s*(?:import|from)\s+(?:{})\b".format("|".join(BLOCKED + PROJECT))
    assert not re.search(pattern, source, re.M)
    assert not re.search(r"import_module\(", source)


def test_only_writes_just_that_section(tmp_path):
    out = tmp_path / "only"
    proc, _ = run_script(out, "--only", "describer")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert sorted(p.name for p in out.iterdir()) == ["describer.json"]
    rec = json.loads((out / "describer.json").read_text())
    assert rec["status"] == "ok" and rec["steps"]["describe_8_tokens"]["p50_s"] > 0


def test_a_wrong_step_leaves_no_summary_md(tmp_path):
    """A step that measured wrong answers (issue 27): summary records it, writes no tables, and exits 3."""
    results = tmp_path / "run"
    results.mkdir()
    wrong = "generate, batch 1: [3, 3] new tokens per run, asked 16"
    (results / "writer.json").write_text(json.dumps({
        "section": "writer", "status": "wrong", "kit": "tiny", "env": {}, "memory": {},
        "steps": {"b1_eager_dynamic": {"error": f"BenchmarkWrong: {wrong}", "wrong": wrong}}}))
    out = tmp_path / "out"
    out.mkdir()
    (out / "summary.md").write_text("an earlier run's tables")
    proc, _ = run_script(out, "--only", "summary", "--results", str(results))
    assert proc.returncode == 3, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "WRONG ANSWERS, nothing published" in proc.stderr
    assert json.loads((out / "summary.json").read_text())["wrong"] == [f"writer/b1_eager_dynamic: {wrong}"]
    assert sorted(p.name for p in out.iterdir()) == ["summary.json"]
