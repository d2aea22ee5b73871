"""The NCM mixture of docs/model.md §3.5 (``vsml_train.model.mixture``).

The per-cell oracle (tests/test_step.py, config "ncm_mixture") and the
exported-graph parity (tests/test_export_parity.py) cover the step math; here:
what the mixture promises (the network learns as without it, the output is a
distribution, the weights stay bounded, the expert ignores the features' scale,
it is nearest-class-mean) and the runtime with its three state tensors
(its pools through tests/test_front_ends.py's check).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.test_front_ends import assert_pool_equals_single_learners
from tests.test_runtime_learner import export_tmp
from vsml_runtime import Learner
from vsml_train.model import mixture
from vsml_train.model.cell import online_standardize
from vsml_train.model.config import VSMLConfig
from vsml_train.model.episode import labels_to_onehot, run_episode
from vsml_train.model.params import init_params
from vsml_train.model.state import init_state, state_names

DT = torch.float64
CONFIG = VSMLConfig(
    online_norm=True,
    online_norm_prior=10.0,
    online_norm_center_prior=0.3,
    ncm_temperature=5.0,
    bias_input=3.0,
    reduction="sqrt",
    backward_pass=True,
    batch_average="full",
)


def _stream(seed: int, steps: int, a: int, b: int, p: int = 1, e: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(steps, p, e, a, generator=gen, dtype=DT) * 2 + 1
    y = torch.randint(0, b, (steps, p, e), generator=gen)
    return x, y


def test_the_network_learns_exactly_as_without_the_mixture() -> None:
    """Only the output changes: the network's error message comes from its own logits (h, c unchanged)."""
    plain = CONFIG.replace(ncm_temperature=None)
    params = init_params(CONFIG, 0, dtype=DT)
    x, y = _stream(0, 12, 5, 3, p=2)
    with_mix = run_episode(params, CONFIG, x, y, 3, seed=0)
    without = run_episode(params, plain, x, y, 3, seed=0)
    for k in range(CONFIG.n_layers):
        torch.testing.assert_close(with_mix.state.h[k], without.state.h[k], rtol=0, atol=0)
        torch.testing.assert_close(with_mix.state.c[k], without.state.c[k], rtol=0, atol=0)
    assert (with_mix.logits - without.logits).abs().max() > 1e-3
    torch.testing.assert_close(with_mix.logits.exp().sum(-1), torch.ones(12, 2, 1, dtype=DT))


def test_state_layout_and_initial_values() -> None:
    assert state_names(CONFIG)[-3:] == ["ncm_sum", "ncm_count", "mix_logw"]
    s = init_state(CONFIG, 6, 4, 2, 3, generator=torch.Generator().manual_seed(0), params=init_params(CONFIG, 0))
    assert s.ncm is not None
    sums, counts, logw = s.ncm
    assert sums.shape == (2, 3, 4, 6) and counts.shape == (2, 3, 4) and logw.shape == (2, 3, 2)
    assert float(sums.abs().max()) == 0.0 and float(counts.abs().max()) == 0.0
    torch.testing.assert_close(logw, torch.full((2, 3, 2), math.log(0.5)))


def _expert(config: VSMLConfig, x: torch.Tensor, y: torch.Tensor, b: int) -> torch.Tensor:
    """[T, P, E, B] the expert's logits along a stream, updated with each step's labels."""
    p, e, a = x.shape[1:]
    mean, sq = torch.zeros(p, e, a, dtype=DT), torch.ones(p, e, a, dtype=DT)
    ncm = mixture.initial_ncm(mean, torch.zeros(p, e, b, dtype=DT))
    out = []
    for t in range(x.shape[0]):
        tt = torch.full((p, e), float(t), dtype=DT)
        _, mean, sq = online_standardize(x[t], mean, sq, tt, config)
        logits = mixture.ncm_logits(x[t], mean, sq, tt, ncm, config)
        _, lp = mixture.mix(torch.zeros_like(logits), logits, ncm[2])
        ncm = mixture.ncm_update(x[t], labels_to_onehot(y[t], b, DT), lp, ncm, config)
        out.append(logits)
    return torch.stack(out)


@settings(max_examples=25, deadline=None)
@given(scale=st.floats(1e-2, 1e3), seed=st.integers(0, 2**16))
def test_the_expert_ignores_the_scale_of_the_features(scale: float, seed: int) -> None:
    """One scale for all features from their own spread: x -> s x leaves the expert's logits unchanged
    (exactly so as online_norm_eps -> 0)."""
    config = CONFIG.replace(online_norm_eps=1e-12)
    x, y = _stream(seed, 8, 4, 3)
    torch.testing.assert_close(_expert(config, x * scale, y, 3), _expert(config, x, y, 3), rtol=1e-6, atol=1e-6)


def test_with_no_shrinkage_and_a_flat_prior_the_expert_is_nearest_class_mean() -> None:
    """The argmax of the expert is the class whose running mean is nearest (Euclidean), among seen classes."""
    config = CONFIG.replace(ncm_shrink=1e-9)
    x, y = _stream(3, 30, 5, 4)
    y[:4, 0, 0] = torch.arange(4)  # every class seen early
    logits = _expert(config, x, y, 4)
    for t in range(4, 30):
        xs, ys = x[:t, 0, 0], y[:t, 0, 0]
        means = torch.stack([xs[ys == c].mean(0) for c in range(4)])
        assert int(logits[t, 0, 0].argmax()) == int(((means - x[t, 0, 0]) ** 2).sum(-1).argmin())


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    big=st.floats(1.0, 1e4),
    share=st.floats(1e-3, 0.5),
    unlabelled=st.floats(0.0, 0.6),
)
def test_weights_stay_inside_the_share_bounds_and_everything_stays_finite(
    seed: int, big: float, share: float, unlabelled: float
) -> None:
    """Fixed share keeps w in [s / 2, 1 - s / 2] after every labelled step, whatever the stream."""
    config = CONFIG.replace(ncm_share=share)
    params = init_params(config, 0)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(15, 2, 2, 4, generator=gen) * big
    x[:, :, :, 0] = 7.0  # a constant feature
    y = torch.randint(0, 3, (15, 2, 2), generator=gen)
    y[torch.rand(y.shape, generator=gen) < unlabelled] = -1
    out = run_episode(params, config, x, y, 3, seed=0)
    assert torch.isfinite(out.logits).all()
    assert out.state.ncm is not None
    w = out.state.ncm[2].exp()
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 2))
    if (y[-1] >= 0).all():
        lo = share / 2 * (1 - 1e-4)
        assert float(w.min()) >= lo and float(w.max()) <= 1 - lo


def test_unlabelled_steps_leave_the_expert_and_the_weights_alone() -> None:
    x, y = _stream(4, 6, 3, 2)
    y[2:] = -1
    params = init_params(CONFIG, 0, dtype=DT)
    out = run_episode(params, CONFIG, x, y, 2, seed=0)
    assert out.state.ncm is not None
    sums, counts, _ = out.state.ncm
    assert float(counts.sum()) == 2.0
    torch.testing.assert_close(sums.sum(2)[0, 0], x[:2, 0, 0].sum(0))


def test_config_needs_online_norm() -> None:
    with pytest.raises(ValueError, match="ncm_temperature needs online_norm"):
        VSMLConfig(ncm_temperature=1.0)


@pytest.fixture(scope="module")
def ncm_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_tmp(tmp_path_factory.mktemp("ncm"), CONFIG)


def test_runtime_learner_keeps_the_class_counts_and_resumes_exactly(ncm_onnx: Path, tmp_path: Path) -> None:
    a, b = 6, 3
    rng = np.random.default_rng(0)
    x, y = (rng.standard_normal((40, a)) * 5 + 2).astype(np.float32), rng.integers(0, b, 40)
    learner = Learner(ncm_onnx, a, b, seed=1)
    assert learner.state_dict()["state.ncm_sum"].shape == (1, 1, b, a)
    for t in range(25):
        _, proba = learner.learn(x[t], int(y[t]), return_proba=True)
        np.testing.assert_allclose(proba.sum(), 1.0, rtol=1e-6)
    np.testing.assert_allclose(learner.state_dict()["state.ncm_count"][0, 0], np.bincount(y[:25], minlength=b))
    learner.save(tmp_path / "s.npz")
    restored = Learner.load(tmp_path / "s.npz")
    assert np.array_equal(learner.learn_stream(x[25:], y[25:]), restored.learn_stream(x[25:], y[25:]))


def test_runtime_pool_equals_single_learners(ncm_onnx: Path) -> None:
    assert_pool_equals_single_learners(ncm_onnx)
