"""The LDA expert of the output mixture (``lda_temperature``, docs/model.md §3.5).

The per-cell oracle (tests/test_step.py, "lda_mixture") checks the step against an exact solve of
Sigma v = u, and tests/test_export_parity.py the exported graph; here: the pooled scatter is its
definition, the expert sees the correlations the GNB expert cannot, it ignores each feature's units,
a bad config is rejected, and the runtime keeps its state (one per learner, no E axis), resumes and
pools.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tests.test_front_ends import assert_pool_equals_single_learners
from tests.test_mixture import GNB, _expert, assert_resumes_exactly
from tests.test_runtime_learner import export_tmp
from vsml_runtime import Learner
from vsml_train.model.episode import run_episode
from vsml_train.model.params import init_params
from vsml_train.model.state import init_state, state_names

DT = torch.float64
LDA = GNB.replace(lda_temperature=1.0, lda_var_prior=3.0)


def _pooled_scatter(xs: np.ndarray, ys: np.ndarray, b: int) -> np.ndarray:
    """[A, A] the sum over labelled rows of (x - its class's mean)(x - its class's mean)' (label -1: unlabelled)."""
    out = np.zeros((xs.shape[1], xs.shape[1]))
    for c in range(b):
        if (ys == c).any():
            dev = xs[ys == c] - xs[ys == c].mean(0)
            out += dev.T @ dev
    return out


def test_lda_state_layout_and_initial_values() -> None:
    assert state_names(LDA)[-3:] == ["ncm_within", "lda_scatter", "lda_dir"] and LDA.n_experts == 4
    s = init_state(LDA, 6, 4, 2, 3, generator=torch.Generator().manual_seed(0), params=init_params(LDA, 0))
    assert s.ncm is not None and len(s.ncm) == 6
    torch.testing.assert_close(s.ncm[2], torch.full((2, 3, 4), math.log(1 / 4)))
    assert s.ncm[4].shape == (2, 6, 6) and s.ncm[5].shape == (2, 6, 4)
    assert float(s.ncm[4].abs().max()) == 0.0 and float(s.ncm[5].abs().max()) == 0.0


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    e=st.integers(1, 4),
    offset=st.sampled_from([0.0, 1e3]),
    unlabelled=st.floats(0.0, 0.5),
)
def test_pooled_scatter_is_its_definition(seed: int, e: int, offset: float, unlabelled: float) -> None:
    """lda_scatter = the pooled within-class scatter matrix, whatever the batch size, the unlabelled rows
    and a large common offset; its diagonal is the GNB expert's ncm_within."""
    params = init_params(LDA, 0, dtype=DT)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(9, 1, e, 3, generator=gen, dtype=DT) + offset
    y = torch.randint(0, 3, (9, 1, e), generator=gen)
    y[torch.rand(y.shape, generator=gen) < unlabelled] = -1
    out = run_episode(params, LDA, x, y, 3, seed=0)
    assert out.state.ncm is not None
    want = _pooled_scatter(x.reshape(-1, 3).numpy(), y.reshape(-1).numpy(), 3)
    np.testing.assert_allclose(out.state.ncm[4][0].numpy(), want, rtol=1e-9, atol=1e-7)
    np.testing.assert_allclose(out.state.ncm[3][0, 0].numpy(), np.diag(want), rtol=1e-9, atol=1e-7)


def test_lda_sees_correlations_that_gnb_cannot() -> None:
    """Two features share a wide common factor; the class is in their difference. Each feature alone
    barely separates the classes (GNB near chance), their difference separates them cleanly (LDA)."""
    gen = torch.Generator().manual_seed(0)
    n, probes = 60, 40
    y = torch.arange(n + probes) % 2
    f = 3.0 * torch.randn(n + probes, generator=gen, dtype=DT)
    delta = (2.0 * y - 1) * 0.5
    x = torch.stack([f + delta, f - delta], -1) + 0.1 * torch.randn(n + probes, 2, generator=gen, dtype=DT)
    ys = torch.cat([y[:n], torch.full((probes,), -1)]).reshape(-1, 1, 1)
    xs = x.reshape(-1, 1, 1, 2)
    gnb, lda = _expert(LDA, xs, ys, 2, 1), _expert(LDA, xs, ys, 2, 2)
    acc = {k: float((v[n:, 0, 0].argmax(-1) == y[n:]).double().mean()) for k, v in (("gnb", gnb), ("lda", lda))}
    assert acc["lda"] >= 0.95 and acc["gnb"] <= 0.75, acc


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**16), scales=st.lists(st.floats(1e-2, 1e3), min_size=3, max_size=3))
@example(seed=433, scales=[0.01, 1.0, 1.0])
def test_lda_ignores_each_features_units(seed: int, scales: list[float]) -> None:
    """x_a -> s_a x_a leaves the LDA expert's logits unchanged: its shrinkage target is each feature's own
    variance and its conjugate gradients are preconditioned by Sigma's diagonal (exactly so as eps -> 0)."""
    # eps far below any feature's own variance: with a feature scaled by 0.01, eps = 1e-12 moved the logits of
    # step 2 by 6e-6 (CI's draw: seed 433, scales [0.01, 1, 1]); 1e-20 left 400 such draws within the bound
    config = LDA.replace(online_norm_eps=1e-20, lda_iterations=1)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(10, 1, 1, 3, generator=gen, dtype=DT) + torch.tensor([0.0, 1.0, -2.0], dtype=DT)
    y = torch.randint(0, 3, (10, 1, 1), generator=gen)
    base = _expert(config, x, y, 3, 2)
    scaled = _expert(config, x * torch.tensor(scales, dtype=DT), y, 3, 2)
    torch.testing.assert_close(scaled, base, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"gnb_temperature": None}, "lda_temperature needs gnb_temperature"),
        ({"lda_temperature": float("inf")}, "lda_temperature must be"),
        ({"lda_var_prior": 0.0}, "lda_var_prior must be"),
        ({"lda_iterations": 0}, "lda_iterations must be"),
        ({"lda_iterations": 2.5}, "lda_iterations must be"),
    ],
)
def test_config_rejects_a_bad_fourth_expert(changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LDA.replace(**changes)


@pytest.fixture(scope="module")
def lda_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_tmp(tmp_path_factory.mktemp("lda"), LDA)


def test_runtime_lda_learner_keeps_its_scatter_resumes_exactly_and_pools(lda_onnx: Path, tmp_path: Path) -> None:
    a, b = 5, 3
    rng = np.random.default_rng(3)
    x, y = (rng.standard_normal((30, a)) * 3 + 2).astype(np.float32), rng.integers(0, b, 30)
    learner = Learner(lda_onnx, a, b, seed=1)
    state = learner.state_dict()
    assert state["state.lda_scatter"].shape == (1, a, a) and state["state.lda_dir"].shape == (1, a, b)
    assert state["state.mix_logw"].shape == (1, 1, 4)
    learner.learn_stream(x[:18], y[:18])
    want = _pooled_scatter(x[:18].astype(np.float64), y[:18], b)
    np.testing.assert_allclose(learner.state_dict()["state.lda_scatter"][0], want, rtol=1e-4, atol=1e-4)
    assert_resumes_exactly(learner, x[18:], y[18:], tmp_path / "s.npz")
    assert_pool_equals_single_learners(lda_onnx)
    batched = Learner(lda_onnx, a, b, seed=1, examples_per_step=4)
    batched.learn_stream(x[:16].reshape(4, 4, a), y[:16].reshape(4, 4))
    np.testing.assert_allclose(
        batched.state_dict()["state.lda_scatter"][0],
        _pooled_scatter(x[:16].astype(np.float64), y[:16], b),
        rtol=1e-4,
        atol=1e-4,
    )
