"""The two hand-designed front ends of docs/model.md §3.4: online standardisation and the annealed error.

The per-cell oracle (tests/test_step.py) and the exported-graph parity
(tests/test_export_parity.py) cover the step math; here: the closed forms
they must equal, the invariance online_norm exists for, and the runtime
(state layout, persistence, pools) with the new state tensors.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.test_runtime_learner import export_tmp
from vsml_runtime import Learner, LearnerPool
from vsml_train.model.cell import error_message, online_standardize
from vsml_train.model.config import VSMLConfig
from vsml_train.model.episode import run_episode
from vsml_train.model.params import init_params
from vsml_train.model.state import init_state, state_names

DT = torch.float64


@pytest.mark.parametrize("center_prior", [None, 0.0, 0.5, 7.0])
def test_online_standardize_equals_the_moments_of_the_prefix_with_the_prior(center_prior: float | None) -> None:
    """After t steps of E examples: mean and variance of (q prior examples of mean 0, var 1) + every x so far;
    the centre uses q_c pseudo-examples instead of q when ``online_norm_center_prior`` is set."""
    config = VSMLConfig(
        online_norm=True, online_norm_prior=2.0, online_norm_eps=0.05, online_norm_center_prior=center_prior
    )
    gen = torch.Generator().manual_seed(0)
    p, e, a, steps = 2, 3, 4, 6
    x = torch.randn(steps, p, e, a, generator=gen, dtype=DT) * 3 + 1.5
    mean, sq = torch.zeros(p, e, a, dtype=DT), torch.ones(p, e, a, dtype=DT)
    for t in range(steps):
        tt = torch.full((p, e), float(t), dtype=DT)
        xhat, mean, sq = online_standardize(x[t], mean, sq, tt, config)
        seen = x[: t + 1].transpose(0, 1).reshape(p, -1, a)  # [P, (t + 1) E, A]
        n, q = seen.shape[1], config.online_norm_prior
        want_mean = seen.sum(1) / (n + q)
        want_var = (q + (seen**2).sum(1)) / (n + q) - want_mean**2
        torch.testing.assert_close(mean, want_mean.unsqueeze(1).expand(p, e, a))
        centre = want_mean if center_prior is None else seen.sum(1) / (n + center_prior)
        want = (x[t] - centre.unsqueeze(1)) / torch.sqrt(want_var.unsqueeze(1) + config.online_norm_eps)
        torch.testing.assert_close(xhat, want)


def test_error_is_scaled_by_the_annealing_schedule() -> None:
    config = VSMLConfig(error_scale=2.0, error_decay_steps=10.0, error_decay_power=0.5)
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 1, 3, generator=gen, dtype=DT)
    y = torch.nn.functional.one_hot(torch.tensor([[0], [2]]), 3).to(DT)
    t = torch.tensor([[0.0], [30.0]], dtype=DT)
    plain = error_message(logits, y, VSMLConfig())[..., 0]
    got = error_message(logits, y, config, t)[..., 0]
    torch.testing.assert_close(got[0], plain[0] * 2.0)
    torch.testing.assert_close(got[1], plain[1] * 2.0 * (1 + 30 / 10) ** -0.5)


@pytest.mark.parametrize("bias", [None, 3.0])
def test_online_norm_makes_the_learner_indifferent_to_each_features_offset_and_scale(bias: float | None) -> None:
    """With a negligible prior and epsilon, x -> s_a x_a + o_a per feature leaves every logit unchanged."""
    config = VSMLConfig(
        online_norm=True, online_norm_prior=1e-12, online_norm_eps=1e-12, bias_input=bias, reduction="sqrt"
    )
    params = {k: v.to(DT) for k, v in init_params(config, 0).items()}
    gen = torch.Generator().manual_seed(2)
    steps, p, e, a, b = 25, 2, 1, 5, 3
    x = torch.randn(steps, p, e, a, generator=gen, dtype=DT)
    y = torch.randint(0, b, (steps, p, e), generator=gen)
    scale = torch.tensor([7.0, 0.01, 300.0, 1.0, 2.5], dtype=DT)
    offset = torch.tensor([-3.0, 50.0, 0.0, 1e3, -0.2], dtype=DT)
    ref = run_episode(params, config, x, y, b, seed=0).logits
    moved = run_episode(params, config, x * scale + offset, y, b, seed=0).logits
    assert ref.abs().max() > 1e-3, "degenerate test: logits are zero"
    torch.testing.assert_close(moved, ref, atol=1e-5, rtol=1e-5)
    # without online_norm the same change does matter: the test can fail
    plain = config.replace(online_norm=False)
    far = run_episode(params, plain, x * scale + offset, y, b, seed=0).logits
    assert (far - run_episode(params, plain, x, y, b, seed=0).logits).abs().max() > 0.1


def test_state_holds_the_step_count_and_the_moments_of_the_features_only() -> None:
    config = VSMLConfig(online_norm=True, bias_input=3.0)
    assert state_names(config)[-3:] == ["t", "x_mean", "x_sq"]
    st = init_state(config, 6, 4, 2, 3, generator=torch.Generator().manual_seed(0), params=init_params(config, 0))
    assert st.h[0].shape[2] == 7  # the grid counts the bias input
    assert st.norm is not None and st.norm[0].shape == (2, 3, 6) and st.norm[1].shape == (2, 3, 6)
    assert float(st.norm[0].abs().max()) == 0.0 and float(st.norm[1].min()) == 1.0
    assert st.t is not None and float(st.t.abs().max()) == 0.0


CONFIG = VSMLConfig(online_norm=True, error_decay_steps=5.0, bias_input=3.0, reduction="sqrt", backward_pass=True)


@pytest.fixture(scope="module")
def norm_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_tmp(tmp_path_factory.mktemp("norm"), CONFIG)


def test_runtime_learner_keeps_the_moments_and_resumes_exactly(norm_onnx: Path, tmp_path: Path) -> None:
    a, b = 6, 3
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((40, a)) * 5 + 2, rng.integers(0, b, 40)
    learner = Learner(norm_onnx, a, b, seed=1)
    state = learner.state_dict()
    assert state["state.x_mean"].shape == (1, 1, a) and state["state.t"].shape == (1, 1)
    learner.learn_stream(x[:25], y[:25])
    assert learner.state_dict()["state.t"][0, 0] == 25
    np.testing.assert_allclose(learner.state_dict()["state.x_mean"][0, 0], x[:25].sum(0) / 26, rtol=1e-4)
    learner.save(tmp_path / "s.npz")
    restored = Learner.load(tmp_path / "s.npz")
    assert np.array_equal(learner.learn_stream(x[25:], y[25:]), restored.learn_stream(x[25:], y[25:]))


def assert_pool_equals_single_learners(model: Path) -> None:
    """A pool of 3 learners (one row each, seeds 20-22) predicts as 3 single learners over 15 steps."""
    a, b, p = 6, 3, 3
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((15, p, a)) * 4, rng.integers(0, b, (15, p))
    singles = [Learner(model, a, b, seed=20 + i) for i in range(p)]
    pool = LearnerPool(model, p, a, b, seed=20, chunk=1)
    for t in range(15):
        got = pool.learn(x[t], y[t])
        assert np.array_equal(got, [singles[i].learn(x[t, i], int(y[t, i])) for i in range(p)])


def test_runtime_pool_equals_single_learners(norm_onnx: Path) -> None:
    assert_pool_equals_single_learners(norm_onnx)


def test_predicting_many_rows_equals_predicting_each_alone(norm_onnx: Path) -> None:
    """Rows of one predict call never share online_norm's moments (they are tiled over learners, not examples)."""
    a, b = 6, 3
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((30, a)) * 3, rng.integers(0, b, 30)
    learner = Learner(norm_onnx, a, b, seed=4)
    learner.learn_stream(x[:20], y[:20])
    _, many = learner.predict(x[20:], return_logits=True)
    alone = np.stack([learner.predict(row, return_logits=True)[1] for row in x[20:]])
    np.testing.assert_allclose(many, alone, rtol=1e-5, atol=1e-6)


@settings(max_examples=40, deadline=None)
@given(
    offset=st.floats(-1e3, 1e3, allow_nan=False),
    prior=st.floats(0.1, 100.0),
    steps=st.integers(1, 6),
)
def test_a_zero_center_prior_maps_a_constant_feature_to_zero_from_the_first_example(
    offset: float, prior: float, steps: int
) -> None:
    """q_c = 0 centres by the data's own mean: a feature that never changes is 0 at every step, whatever
    its value and the scale prior; with the shared prior (q_c = None) the same feature is not."""
    config = VSMLConfig(online_norm=True, online_norm_prior=prior, online_norm_center_prior=0.0)
    mean, sq = torch.zeros(1, 1, 1, dtype=DT), torch.ones(1, 1, 1, dtype=DT)
    shared_mean, shared_sq = mean.clone(), sq.clone()
    x = torch.full((1, 1, 1), offset, dtype=DT)
    for t in range(steps):
        tt = torch.full((1, 1), float(t), dtype=DT)
        xhat, mean, sq = online_standardize(x, mean, sq, tt, config)
        assert abs(float(xhat)) < 1e-9
        shared, shared_mean, shared_sq = online_standardize(
            x, shared_mean, shared_sq, tt, config.replace(online_norm_center_prior=None)
        )
    if abs(offset) > 1.0:
        assert abs(float(shared)) > 1e-3
