"""The runtime without torch, without ONNX Runtime, and on extreme inputs for many steps."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from vsml_export.exporter import ExportOptions, export_model
from vsml_runtime import Learner, LearnerPool
from vsml_train.model.config import VSMLConfig
from vsml_train.model.model_file import ModelFile, save_model
from vsml_train.model.params import init_params


@pytest.fixture(scope="module")
def onnx_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("robust")
    config = VSMLConfig(hidden=(3,), layer_norm=True)
    save_model(folder / "model.pt", ModelFile(config, init_params(config, 0), {}))
    return export_model(folder / "model.pt", folder / "model.onnx", ExportOptions(verify=False)).step_path


def _python(code: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env)


def test_runtime_never_imports_torch(onnx_path: Path) -> None:
    result = _python(
        f"""
        import sys
        import numpy as np
        import vsml_runtime
        from vsml_runtime import Learner, LearnerPool
        learner = Learner({str(onnx_path)!r}, 5, 3, standardize="online")
        learner.learn(np.ones(5), 1)
        learner.predict(np.ones(5))
        LearnerPool({str(onnx_path)!r}, 2, 5, 3).learn(np.ones((2, 5)), [0, 1])
        bad = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "vsml_train", "vsml_export", "onnx"))
        print("IMPORTED", bad)
        """
    )
    assert result.returncode == 0, result.stderr
    assert "IMPORTED []" in result.stdout


def test_missing_onnxruntime_names_the_fix() -> None:
    result = _python(
        """
        import sys
        sys.modules["onnxruntime"] = None  # as if it were not installed
        from vsml_runtime import format  # the format module needs no ONNX Runtime
        try:
            from vsml_runtime import Learner
        except ImportError as exc:
            print("MESSAGE", exc)
        """
    )
    assert result.returncode == 0, result.stderr
    assert 'pip install "vsml[cpu]"' in result.stdout and 'pip install "vsml[gpu]"' in result.stdout


def _hammer(learner: Learner, steps: int, seed: int) -> None:
    """Extreme inputs: huge, tiny, constant, alternating sign; labels all over the place."""
    rng = np.random.default_rng(seed)
    a = learner.n_features
    for t in range(steps):
        kind = t % 5
        if kind == 0:
            x = rng.standard_normal(a) * 1e30
        elif kind == 1:
            x = np.full(a, 3e38 * (-1) ** t)
        elif kind == 2:
            x = rng.standard_normal(a) * 1e-30
        elif kind == 3:
            x = np.zeros(a)
        else:
            x = rng.standard_normal(a) * 50
        learner.learn(x, int(rng.integers(-1, learner.n_classes)))


def _finite(learner: Learner | LearnerPool) -> bool:
    return all(np.isfinite(v).all() for k, v in learner.state_dict().items() if k != "meta")


def test_extreme_inputs_keep_state_finite(onnx_path: Path) -> None:
    for standardize in (False, "online"):
        learner = Learner(onnx_path, 4, 3, standardize=standardize)
        _hammer(learner, 5_000, seed=1)
        assert _finite(learner)
        bound = learner.info.clip
        assert bound is not None
        for k, v in learner.state_dict().items():
            if k.startswith(("state.h_", "state.c_")):
                assert np.abs(v).max() <= bound
        assert np.isfinite(learner.predict(np.ones(4), return_logits=True)[1]).all()


@pytest.mark.slow
def test_a_million_extreme_steps_keep_state_finite(onnx_path: Path) -> None:
    learner = Learner(onnx_path, 4, 3)
    _hammer(learner, 1_000_000, seed=2)
    assert _finite(learner) and learner.steps == 1_000_000
