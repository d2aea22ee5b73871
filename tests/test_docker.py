"""The Dockerfile without a Docker engine: COPY sources, .dockerignore, the model step and the entry command."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests import docker_layout as dl
from tests.test_runtime_learner import export_tmp
from vsml_train.model.config import VSMLConfig

SHIPPED = "955b7aa2752c"  # the pretrained learner's V_M sha256 (vsml_runtime/assets/MODEL_CARD.md)


def test_every_copy_source_is_in_the_build_context() -> None:
    assert dl.copy_problems() == []
    assert [s.name for s in dl.parse()] == ["export", "runtime"]


def test_dockerignore_keeps_model_files_and_drops_the_rest() -> None:
    assert not dl.ignored("runs/bptt/model.pt")  # the README's --build-arg MODEL_PT=runs/bptt/model.pt
    assert not dl.ignored("runs/bptt-long/model.pt")
    for rel in ("runs/bptt/checkpoint.pt", "runs/bptt/metrics.jsonl", ".venv/bin/python", ".git/HEAD"):
        assert dl.ignored(rel), rel
    for rel in ("train/demo.py", "vsml_runtime/assets/pretrained.onnx", "examples/runtime_example.py"):
        assert not dl.ignored(rel), rel
    assert dl.ignored("vsml_runtime/__pycache__/base.cpython-311.pyc")


def test_the_default_image_runs_the_shipped_pretrained_learner(tmp_path: Path) -> None:
    out = dl.run_image(tmp_path, sys.executable)  # `docker run --rm vsml-runtime`: ENTRYPOINT + CMD as they are
    assert f"V_M sha256 {SHIPPED}" in out and "running on cpu" in out
    accuracy = float(out.split("step   2000: online accuracy")[1].split()[0])
    assert accuracy > 0.8  # seen: 0.978; chance 0.1: a learner that learns, not a random V_M
    assert "predictions identical: True" in out


def test_model_pt_build_arg_exports_that_model(tmp_path: Path) -> None:
    if not Path(sys.executable).with_name("vsml-export").exists():
        pytest.skip("vsml-export is not installed next to this python")
    runs_existed = (dl.REPO / "runs").exists()
    context = dl.REPO / "runs" / "test-docker-layout"
    context.mkdir(parents=True, exist_ok=True)
    try:
        export_tmp(context, VSMLConfig(), seed=3, name="model")  # writes model.pt (+ an export we ignore)
        assert not dl.ignored("runs/test-docker-layout/model.pt")
        out = dl.run_image(tmp_path / "img", sys.executable, "runs/test-docker-layout/model.pt", ["--steps", "20"])
        assert "V_M sha256" in out and SHIPPED not in out
    finally:
        for f in context.iterdir():
            f.unlink()
        context.rmdir()
        if not runs_existed:
            (dl.REPO / "runs").rmdir()
