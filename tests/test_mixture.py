"""The output mixture of docs/model.md §3.5 (``vsml_train.model.mixture``).

The per-cell oracle (tests/test_step.py, configs "ncm_mixture" and
"gnb_mixture") and the exported-graph parity (tests/test_export_parity.py)
cover the step math; here: what the mixture promises (the network learns as
without it, the output is a distribution, the weights stay bounded, the NCM
expert ignores the features' scale and is nearest-class-mean, the GNB expert's
pooled within-class sums of squares are what they say and it weighs features
by how well they separate the classes) and the runtime with its state tensors
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


def _expert(config: VSMLConfig, x: torch.Tensor, y: torch.Tensor, b: int, which: int = 0) -> torch.Tensor:
    """[T, P, E, B] one expert's logits along a stream (0: NCM, 1: GNB, 2: LDA), updated with each step's labels."""
    p, e, a = x.shape[1:]
    mean, sq = torch.zeros(p, e, a, dtype=DT), torch.ones(p, e, a, dtype=DT)
    ncm = mixture.initial_ncm(mean, torch.zeros(p, e, b, dtype=DT), config)
    out = []
    for t in range(x.shape[0]):
        tt = torch.full((p, e), float(t), dtype=DT)
        _, mean, sq = online_standardize(x[t], mean, sq, tt, config)
        experts, directions = mixture.expert_logits(x[t], mean, sq, tt, ncm, config)
        _, lp = mixture.mix(torch.zeros_like(experts[0]), experts, ncm[2])
        ncm = mixture.ncm_update(x[t], labels_to_onehot(y[t], b, DT), lp, ncm, tt, config, directions)
        out.append(experts[which])
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


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"ncm_temperature": None, "gnb_temperature": 2.0}, "gnb_temperature needs ncm_temperature"),
        ({"gnb_temperature": -1.0}, "gnb_temperature must be"),
        ({"gnb_class_prior": 0.0}, "gnb_class_prior must be"),
        ({"gnb_var_prior": float("nan")}, "gnb_var_prior must be"),
        ({"ncm_share_decay": float("inf")}, "ncm_share_decay must be"),
        ({"ncm_net_scale": 0.0}, "ncm_net_scale must be"),
    ],
)
def test_config_rejects_a_bad_third_expert(changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CONFIG.replace(**changes)


GNB = CONFIG.replace(gnb_temperature=2.0, ncm_share_decay=30.0)


def test_three_experts_and_a_tempered_network_leave_the_network_learning_as_without_them() -> None:
    """ncm_net_scale tempers the network expert inside the mixture only: h and c are bit-identical."""
    config = GNB.replace(ncm_net_scale=0.5)
    params = init_params(config, 0, dtype=DT)
    x, y = _stream(5, 10, 4, 3, p=2)
    with_mix = run_episode(params, config, x, y, 3, seed=0)
    untempered = run_episode(params, GNB, x, y, 3, seed=0)
    without = run_episode(params, config.replace(ncm_temperature=None, gnb_temperature=None), x, y, 3, seed=0)
    for k in range(config.n_layers):
        torch.testing.assert_close(with_mix.state.h[k], without.state.h[k], rtol=0, atol=0)
        torch.testing.assert_close(with_mix.state.c[k], without.state.c[k], rtol=0, atol=0)
    assert (with_mix.logits - untempered.logits).abs().max() > 1e-3
    torch.testing.assert_close(with_mix.logits.exp().sum(-1), torch.ones(10, 2, 1, dtype=DT))


def _pooled_within(xs: np.ndarray, ys: np.ndarray, b: int) -> np.ndarray:
    """[A] the sum over labelled rows of (x - its class's mean)^2 (label -1: unlabelled), by the definition."""
    out = np.zeros(xs.shape[1])
    for c in range(b):
        if (ys == c).any():
            out += ((xs[ys == c] - xs[ys == c].mean(0)) ** 2).sum(0)
    return out


def test_gnb_state_layout_and_initial_values() -> None:
    assert state_names(GNB)[-4:] == ["ncm_sum", "ncm_count", "mix_logw", "ncm_within"]
    assert GNB.n_experts == 3 and CONFIG.n_experts == 2 and CONFIG.replace(ncm_temperature=None).n_experts == 0
    s = init_state(GNB, 6, 4, 2, 3, generator=torch.Generator().manual_seed(0), params=init_params(GNB, 0))
    assert s.ncm is not None and len(s.ncm) == 4
    torch.testing.assert_close(s.ncm[2], torch.full((2, 3, 3), math.log(1 / 3)))
    assert s.ncm[3].shape == (2, 3, 6) and float(s.ncm[3].abs().max()) == 0.0


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    e=st.integers(1, 4),
    offset=st.sampled_from([0.0, 1e3]),
    unlabelled=st.floats(0.0, 0.5),
)
def test_within_class_sum_of_squares_is_its_definition(seed: int, e: int, offset: float, unlabelled: float) -> None:
    """ncm_within = sum over labelled examples of (x - its class's mean)^2, per feature, whatever the
    batch size, the unlabelled rows and a large common offset (merged per class, no large sums cancel)."""
    params = init_params(GNB, 0, dtype=DT)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(9, 1, e, 3, generator=gen, dtype=DT) + offset
    y = torch.randint(0, 3, (9, 1, e), generator=gen)
    y[torch.rand(y.shape, generator=gen) < unlabelled] = -1
    out = run_episode(params, GNB, x, y, 3, seed=0)
    assert out.state.ncm is not None
    want = _pooled_within(x.reshape(-1, 3).numpy(), y.reshape(-1).numpy(), 3)
    for k in range(e):
        np.testing.assert_allclose(out.state.ncm[3][0, k].numpy(), want, rtol=1e-9, atol=1e-7)


def test_gnb_weighs_features_by_how_well_they_separate_the_classes() -> None:
    """Feature 0 separates two classes with little spread inside each; feature 1 has class means that
    point the other way but spreads ten times wider: nearest-class-mean follows feature 1, GNB feature 0."""
    gen = torch.Generator().manual_seed(0)
    n = 60
    y = torch.arange(n) % 2
    x = torch.stack([y * 2.0 - 1 + 0.2 * torch.randn(n, generator=gen, dtype=DT),
                     (1 - 2.0 * y) * 1.5 + 4.0 * torch.randn(n, generator=gen, dtype=DT)], -1)  # fmt: skip
    probe = torch.tensor([[1.0, 3.0], [-1.0, -3.0]], dtype=DT)  # feature 0 says class 1 / 0, feature 1 the reverse
    xs = torch.cat([x, probe]).reshape(-1, 1, 1, 2)
    ys = torch.cat([y, torch.tensor([-1, -1])]).reshape(-1, 1, 1)
    ncm, gnb = _expert(GNB, xs, ys, 2, 0), _expert(GNB, xs, ys, 2, 1)
    assert ncm[n:, 0, 0].argmax(-1).tolist() == [0, 1]
    assert gnb[n:, 0, 0].argmax(-1).tolist() == [1, 0]


def test_gnb_class_prior_follows_the_class_frequencies() -> None:
    """With uninformative features the GNB expert predicts the frequent class, NCM does not care."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(40, 1, 1, 3, generator=gen, dtype=DT)
    y = (torch.rand(40, 1, 1, generator=gen) < 0.1).long()  # about 90% class 0
    gnb = _expert(GNB, x, y, 2, 1)
    assert float((gnb[10:, 0, 0].argmax(-1) == 0).float().mean()) > 0.9


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**16), big=st.floats(1.0, 1e4), share=st.floats(1e-3, 0.5))
def test_three_experts_stay_inside_the_decaying_share_bounds(seed: int, big: float, share: float) -> None:
    """Every weight stays >= s_t / Z after a labelled step, s_t = s / (1 + t / tau_s) with t the step's index."""
    config = GNB.replace(ncm_share=share, ncm_share_decay=3.0)
    params = init_params(config, 0)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(12, 2, 2, 4, generator=gen) * big
    x[:, :, :, 0] = 7.0  # a constant feature
    y = torch.randint(0, 3, (12, 2, 2), generator=gen)
    out = run_episode(params, config, x, y, 3, seed=0)
    assert torch.isfinite(out.logits).all() and out.state.ncm is not None
    w = out.state.ncm[2].exp()
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 2))
    lo = share / (1 + 11 / 3.0) / 3 * (1 - 1e-3)
    assert float(w.min()) >= lo


def assert_resumes_exactly(learner: Learner, x: np.ndarray, y: np.ndarray, path: Path) -> None:
    """Saved to ``path`` and loaded, the learner goes on exactly as the original on the rest of the stream."""
    learner.save(path)
    restored = Learner.load(path)
    assert np.array_equal(learner.learn_stream(x, y), restored.learn_stream(x, y))


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
    assert_resumes_exactly(learner, x[25:], y[25:], tmp_path / "s.npz")


def test_runtime_pool_equals_single_learners(ncm_onnx: Path) -> None:
    assert_pool_equals_single_learners(ncm_onnx)


@pytest.fixture(scope="module")
def gnb_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_tmp(tmp_path_factory.mktemp("gnb"), GNB)


def test_exported_expert_axis_is_fixed_by_the_config(gnb_onnx: Path) -> None:
    """Z is the config's expert count, not a dynamic axis (torch.export could not trace it as one)."""
    import onnx

    graph = onnx.load(str(gnb_onnx)).graph
    logw = next(i for i in graph.input if i.name == "mix_logw")
    assert [d.dim_value or d.dim_param for d in logw.type.tensor_type.shape.dim][2] == 3


def test_runtime_gnb_learner_resumes_exactly_and_pools(gnb_onnx: Path, tmp_path: Path) -> None:
    a, b = 5, 4
    rng = np.random.default_rng(2)
    x, y = (rng.standard_normal((30, a)) * 3 - 1).astype(np.float32), rng.integers(0, b, 30)
    learner = Learner(gnb_onnx, a, b, seed=1)
    assert learner.state_dict()["state.ncm_within"].shape == (1, 1, a)
    assert learner.state_dict()["state.mix_logw"].shape == (1, 1, 3)
    learner.learn_stream(x[:18], y[:18])
    want = _pooled_within(x[:18].astype(np.float64), y[:18], b)
    np.testing.assert_allclose(learner.state_dict()["state.ncm_within"][0, 0], want, rtol=1e-4)
    assert_resumes_exactly(learner, x[18:], y[18:], tmp_path / "s.npz")
    assert_pool_equals_single_learners(gnb_onnx)
