"""The CPU-side logic of the prepared GPU check (``bench/gpu_check.sh``, ``bench/gpu_es.py``); no GPU needed.

The device run itself cannot happen here: these tests run the meta-training
check on the CPU in small, the runtime benchmark's case selection, and the
shell script's syntax and part gating with every part switched off.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]


def _bench(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "bench" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up while the file executes
    spec.loader.exec_module(mod)
    return mod


def test_gpu_es_runs_and_checks_parity_on_cpu(tmp_path: Path) -> None:
    out = tmp_path / "meta.json"
    rc = _bench("gpu_es").main(["--device", "cpu", "--pop", "5", "--steps", "3", "--grids", "6", "--check", "3",
                                "--json", str(out)])  # fmt: skip
    rows = json.loads(out.read_text())["rows"]
    assert rc == 0
    assert [r["case"] for r in rows] == ["es-6x10-pop5", "bptt-6x10-T3"]
    assert all(r["ok"] and r["parity_rel"] < 1e-6 for r in rows)


def test_runtime_bench_names_the_1024_pools_only_on_request() -> None:
    rt = _bench("runtime")
    names = {c.name for c in rt.LARGE_CASES}
    assert {"784-10-n16-pool1024", "64-10-n16-pool1024"} <= names
    assert all(c.p == 1024 for c in rt.LARGE_CASES)
    assert not names & {c.name for c in rt.CASES}  # a default CPU run does not build a 1,024-learner pool


def test_gpu_check_script_covers_the_issue_and_gates_its_parts(tmp_path: Path) -> None:
    script = REPO / "bench" / "gpu_check.sh"
    text = script.read_text()
    for piece in ("--cuda-graph", "pool1024", "gpu_es.py --device cuda --pop 1024", "test_runtime_gpu.py",
                  "test_export_parity.py", "bench/results/gpu-"):  # fmt: skip
        assert piece in text, piece
    if shutil.which("bash") is None:
        pytest.skip("no bash")
    subprocess.run(["bash", "-n", str(script)], check=True)
    env = {**os.environ, "OUT": str(tmp_path / "out"), "PARTS": "none", "PATH": f"{Path(sys.executable).parent}:"
           + os.environ.get("PATH", "")}  # fmt: skip
    res = subprocess.run(["bash", str(script), "run"], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "parts none, rc=0" in (tmp_path / "out" / "env.txt").read_text()
