"""River and Vowpal Wabbit as online baselines (optional dependencies)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from vsml_train.evaluation import external
from vsml_train.evaluation.external import RiverLogistic, VowpalWabbitOAA, external_baselines, missing_external

T, S, A, B = 300, 2, 8, 3


def _teacher_streams() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((A, B))
    x = rng.standard_normal((T, S, A)).astype(np.float32)
    return x, (x @ w).argmax(-1)


LEARNERS = [
    pytest.param(lambda: RiverLogistic(0.1), "river", id="river"),
    pytest.param(lambda: VowpalWabbitOAA(0.5), "vowpalwabbit", id="vowpalwabbit"),
]


@pytest.mark.parametrize(("make", "module"), LEARNERS)
def test_learns_a_linear_task_online_and_predicts_before_each_label(make, module: str) -> None:
    pytest.importorskip(module)
    learner = make()
    x, y = _teacher_streams()
    out = learner.run(x, y, B, 0)
    assert out.shape == (T, S, B) and np.isfinite(out).all()
    np.testing.assert_allclose(np.exp(out).sum(-1), 1.0, atol=1e-4)  # log-probabilities
    np.testing.assert_allclose(out[0], np.log(1 / B), atol=1e-5)  # nothing learned yet
    late = (out[-100:].argmax(-1) == y[-100:]).mean()
    assert late > 0.75, f"{learner.name}: accuracy {late:.2f} on the last 100 steps"
    y2 = y.copy()
    y2[50, 0] = (y[50, 0] + 1) % B
    out2 = learner.run(x, y2, B, 0)
    np.testing.assert_array_equal(out2[:51], out[:51])  # step 50's prediction came before its label
    assert np.abs(out2[51:, 0] - out[51:, 0]).max() > 0


def test_missing_packages_are_named_and_left_out(monkeypatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(external.importlib.util, "find_spec", lambda m: None if m == "river" else real(m))
    assert "river" in missing_external()
    assert "river-logistic-ovr" not in external_baselines()
