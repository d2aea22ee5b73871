"""The harness (same streams, learning-rate tuning, protocol, reference check) and VSMLLearner."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import shared_dataset_dir
from vsml_train.data.idx import write_idx
from vsml_train.evaluation.baselines import REFERENCE_TABLE, ReferenceFigures, online_sgd
from vsml_train.evaluation.harness import (
    EvalProtocol,
    check_against_reference,
    evaluate,
    protocol_streams,
    run_protocol,
    tune_lr,
    tuning_streams,
)
from vsml_train.evaluation.learners import OnlineLearner, VSMLLearner
from vsml_train.evaluation.metrics import summarize
from vsml_train.model.config import VSMLConfig
from vsml_train.model.episode import run_episode
from vsml_train.model.model_file import ModelFile, save_model
from vsml_train.model.params import init_params


@dataclass(frozen=True)
class FakeStreams:
    x: np.ndarray
    y: np.ndarray
    n_classes: int


def _streams(t_steps: int = 60, s: int = 3, a: int = 8, b: int = 3, seed: int = 0) -> FakeStreams:
    """Noisy class prototypes (learnable): x float32 [T, S, A], y int64 [T, S]."""
    rng = np.random.default_rng(seed)
    protos = rng.normal(0, 2, (b, a))
    y = rng.integers(0, b, (t_steps, s))
    x = (protos[y] + rng.normal(0, 0.5, (t_steps, s, a))).astype(np.float32)
    return FakeStreams(x, y.astype(np.int64), b)


@dataclass
class Recorder:
    """A fake learner: records what it was given; predicts class ``guess`` (or cheats with y_t)."""

    name: str
    guess: int | None = 0
    calls: list[tuple[np.ndarray, np.ndarray, int, int]] = field(default_factory=list)
    shape: tuple[int, ...] | None = None

    def run(self, x: np.ndarray, y: np.ndarray, n_classes: int, seed: int) -> np.ndarray:
        self.calls.append((x, y, n_classes, seed))
        if self.shape is not None:
            return np.zeros(self.shape, np.float32)
        pred = y if self.guess is None else np.full_like(y, self.guess)
        return np.eye(n_classes, dtype=np.float32)[pred]


def test_evaluate_runs_every_learner_on_the_same_streams() -> None:
    streams = _streams()
    a, b = Recorder("a"), Recorder("oracle", guess=None)
    results = evaluate([a, b], streams, seed=7)
    assert list(results) == ["a", "oracle"]
    (xa, ya, na, sa), (xb, yb, nb, sb) = a.calls[0], b.calls[0]
    assert xa is xb and ya is yb and na == nb == 3 and sa == sb == 7
    assert results["oracle"].summary.accuracy.mean == 1.0
    assert results["a"].summary.accuracy.mean == pytest.approx((streams.y == 0).mean())
    r = results["oracle"]
    assert r.curves.accuracy.shape == (60,) and r.shots.accuracy[0] == 1.0 and r.seconds >= 0
    json.dumps(r.to_dict(), allow_nan=False)
    assert "curves" not in r.to_dict(curves=False)


def test_evaluate_rejects_bad_learners() -> None:
    streams = _streams()
    with pytest.raises(ValueError, match="unique"):
        evaluate([Recorder("a"), Recorder("a")], streams)
    with pytest.raises(ValueError, match=r"expected \[T, S, B\]"):
        evaluate([Recorder("a", shape=(60, 3, 4))], streams)


def test_tune_lr_picks_the_best_mean_accuracy() -> None:
    streams = _streams(120)
    search = tune_lr(lambda lr: online_sgd(lr, init="zero"), [0.0, 0.003, 0.03], streams)
    accs = {lr: r.summary.accuracy.mean for lr, r in search.results.items()}
    assert search.best_lr == max(accs, key=accs.__getitem__) == 0.03
    assert search.best.summary.accuracy.mean == accs[0.03]
    d = json.loads(json.dumps(search.to_dict(), allow_nan=False))
    assert d["best_lr"] == 0.03 and [s["lr"] for s in d["summaries"]] == [0.0, 0.003, 0.03]


def test_tune_lr_ties_go_to_the_first_rate() -> None:
    search = tune_lr(lambda lr: Recorder(f"r{lr}"), [0.1, 0.01, 1.0], _streams())
    assert search.best_lr == 0.1
    with pytest.raises(ValueError):
        tune_lr(lambda lr: Recorder("r"), [], _streams())
    with pytest.raises(ValueError):
        tune_lr(lambda lr: Recorder("r"), [0.1, 0.1], _streams())


# ---------------------------------------------------------------------------
# the protocol on a tiny dataset written to disk


@pytest.fixture
def tiny_data(tmp_path: Path) -> Path:
    """An 'mnist' folder of 300 / 100 learnable 28x28 images (class = which image row is bright)."""
    rng = np.random.default_rng(0)
    root = tmp_path / "data"
    (root / "mnist").mkdir(parents=True)
    for prefix, n in (("train", 300), ("t10k", 100)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
        images[np.arange(n), labels * 2 + 3] = 255
        write_idx(root / "mnist" / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(root / "mnist" / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return root


TINY = EvalProtocol("mnist", "train", n_steps=40, n_streams=3, seed=5)


def _tiny_baselines() -> dict:
    return {"sgd-linear": (lambda lr: online_sgd(lr, init="zero"), (0.0, 0.01))}


def test_protocol_streams_and_tuning_streams(tiny_data: Path) -> None:
    ev = protocol_streams(TINY, data_dir=tiny_data)
    assert ev.x.shape == (40, 3, 784) and ev.y.shape == (40, 3) and ev.n_classes == 10
    assert abs(float(ev.x.min()) - (0 - 0.1307) / 0.3081) < 1e-5  # MNIST standardisation
    again = protocol_streams(TINY, data_dir=tiny_data)
    np.testing.assert_array_equal(again.x, ev.x)
    tune = tuning_streams(TINY, data_dir=tiny_data)
    assert tune.x.shape == ev.x.shape and not np.array_equal(tune.y, ev.y)
    np.testing.assert_array_equal(tuning_streams(TINY, data_dir=tiny_data).y, tune.y)
    same = tuning_streams(EvalProtocol(**{**TINY.to_dict(), "tune_on": "eval"}), data_dir=tiny_data)
    np.testing.assert_array_equal(same.y, ev.y)
    test_split = protocol_streams(EvalProtocol(**{**TINY.to_dict(), "split": "test"}), data_dir=tiny_data)
    assert not np.array_equal(test_split.y, ev.y)
    with pytest.raises(ValueError):
        EvalProtocol(tune_on="test")  # type: ignore[arg-type]


@dataclass
class RecordingSGD:
    """``online_sgd`` that records the label streams it is run on (to see what the tuner was given)."""

    lr: float
    seen: list[np.ndarray]
    name: str = "sgd"

    def run(self, x: np.ndarray, y: np.ndarray, n_classes: int, seed: int) -> np.ndarray:
        self.seen.append(y)
        return online_sgd(self.lr, init="zero").run(x, y, n_classes, seed)


@pytest.mark.parametrize("tune_on", ["separate", "eval"])
def test_run_protocol(tiny_data: Path, tune_on: str) -> None:
    protocol = EvalProtocol(**{**TINY.to_dict(), "tune_on": tune_on})
    extra = Recorder("always-0")
    seen: list[np.ndarray] = []
    baselines = {"sgd-linear": (lambda lr: RecordingSGD(lr, seen), (0.0, 0.01))}
    result = run_protocol(protocol, baselines=baselines, learners=[extra], data_dir=tiny_data)
    assert list(result.results) == ["sgd-linear", "always-0"]
    search = result.searches["sgd-linear"]
    assert search.best_lr == 0.01  # learning beats not learning
    ev = protocol_streams(protocol, data_dir=tiny_data)
    np.testing.assert_array_equal(extra.calls[0][1], ev.y)  # the extra learner saw the evaluation streams
    expected = summarize(online_sgd(0.01, init="zero").run(ev.x, ev.y, 10, protocol.seed), ev.y)
    assert result.results["sgd-linear"].summary.accuracy.values == expected.accuracy.values
    # what the tuner was given: one run per grid entry on the tuning streams, then (when those
    # are separate) one run of the best rate on the evaluation streams
    tune = tuning_streams(protocol, data_dir=tiny_data)
    assert len(seen) == (2 if tune_on == "eval" else 3)
    for y in seen[:2]:
        np.testing.assert_array_equal(y, tune.y)
    if tune_on == "separate":
        assert not np.array_equal(tune.y, ev.y)  # the tuner never saw the evaluation streams
        np.testing.assert_array_equal(seen[2], ev.y)
    else:
        np.testing.assert_array_equal(tune.y, ev.y)
    json.dumps(result.to_dict(curves=True), allow_nan=False)
    assert "sgd-linear lr 0.01" in result.table() and "always-0" in result.table()
    with pytest.raises(ValueError, match="baseline name"):
        run_protocol(protocol, baselines=_tiny_baselines(), learners=[Recorder("sgd-linear")], data_dir=tiny_data)


def test_check_against_reference() -> None:
    row = ReferenceFigures("mnist", "sgd", (), "zero", 0.003, mean=0.80, last=0.90, first=0.50)
    y = np.zeros((10, 4), np.int64)
    # per-stream accuracies 1, 1, 0.9, 0.9 everywhere
    logits = np.zeros((10, 4, 2), np.float32)
    logits[..., 0] = 1
    logits[-1, 2:, 1] = 2
    s = summarize(logits, y, first_steps=10, last_steps=10)
    checks = {c.metric: c for c in check_against_reference(s, row)}
    assert checks["accuracy"].measured == pytest.approx(0.95)
    assert checks["accuracy"].tolerance == pytest.approx(max(3 * s.accuracy.sem, 0.03))
    assert not checks["accuracy"].ok and checks["last_accuracy"].ok and not checks["first_accuracy"].ok
    loose = {c.metric: c for c in check_against_reference(s, row, n_sem=3, floor=0.2)}
    assert loose["accuracy"].ok
    one = summarize(logits[:, :1], y[:, :1])
    assert all(c.tolerance == 0.03 for c in check_against_reference(one, row))  # no sem with one stream
    assert "OFF" in str(checks["accuracy"])


# ---------------------------------------------------------------------------
# VSMLLearner


CONFIGS = [VSMLConfig(), VSMLConfig(hidden=(4,), backward_pass=True)]


def _vsml(config: VSMLConfig, e: int = 1) -> VSMLLearner:
    return VSMLLearner(init_params(config, seed=0), config, e)


@pytest.mark.parametrize("config", CONFIGS, ids=["default", "hidden4-backward"])
def test_vsml_learner_shapes_determinism_and_timing(config: VSMLConfig) -> None:
    s = _streams(8, 2, a=6)
    learner = _vsml(config)
    assert isinstance(learner, OnlineLearner) and learner.name == "vsml"
    logits = learner.run(s.x, s.y, 3, seed=0)
    assert logits.shape == (8, 2, 3) and logits.dtype == np.float32
    np.testing.assert_array_equal(learner.run(s.x, s.y, 3, seed=0), logits)
    assert not np.allclose(learner.run(s.x, s.y, 3, seed=1), logits)
    y2 = s.y.copy()
    y2[4] = (y2[4] + 1) % 3
    changed = learner.run(s.x, y2, 3, seed=0)
    np.testing.assert_array_equal(changed[:5], logits[:5])
    assert not np.allclose(changed[5:], logits[5:])


def test_vsml_learner_is_run_episode() -> None:
    config = CONFIGS[0]
    s = _streams(6, 2, a=5)
    params = init_params(config, seed=0)
    with torch.no_grad():
        x, y = torch.from_numpy(s.x)[:, :, None], torch.from_numpy(s.y)[:, :, None]  # E = 1
        want = run_episode(params, config, x, y, 3, seed=4)
    got = VSMLLearner(params, config).run(s.x, s.y, 3, seed=4)
    np.testing.assert_array_equal(got, want.logits[:, :, 0].numpy())


def test_vsml_learner_groups_consecutive_examples() -> None:
    config = VSMLConfig(batch_average="full")
    s = _streams(8, 2, a=5)
    e = 2
    xe = np.zeros((4, 2, e, 5), np.float32)
    ye = np.zeros((4, 2, e), np.int64)
    for t in range(8):
        xe[t // e, :, t % e] = s.x[t]
        ye[t // e, :, t % e] = s.y[t]
    params = init_params(config, seed=0)
    with torch.no_grad():
        want = run_episode(params, config, torch.from_numpy(xe), torch.from_numpy(ye), 3, seed=0).logits.numpy()
    got = VSMLLearner(params, config, examples_per_step=e).run(s.x, s.y, 3, seed=0)
    for t in range(8):
        np.testing.assert_array_equal(got[t], want[t // e, :, t % e])
    with pytest.raises(ValueError, match="multiple"):
        _vsml(config, 3).run(s.x, s.y, 3, seed=0)


def test_vsml_learner_from_a_model_file(tmp_path: Path) -> None:
    config = CONFIGS[1]
    params = init_params(config, seed=3)
    save_model(tmp_path / "clone.pt", ModelFile(config, params))
    learner = VSMLLearner.from_file(tmp_path / "clone.pt", 2)
    assert learner.name == "clone" and learner.examples_per_step == 2
    s = _streams(4, 2, a=5)
    np.testing.assert_array_equal(learner.run(s.x, s.y, 3, 0), VSMLLearner(params, config, 2).run(s.x, s.y, 3, 0))


def test_vsml_learner_validation() -> None:
    config = CONFIGS[0]
    params = init_params(config, seed=0)
    with pytest.raises(ValueError, match="population"):
        VSMLLearner({k: v[None].expand(2, *v.shape) for k, v in params.items()}, config)
    with pytest.raises(ValueError):
        VSMLLearner(params, config, examples_per_step=0)
    with pytest.raises(ValueError, match=r"x \[T, S, A\]"):
        VSMLLearner(params, config).run(np.zeros((4, 5), np.float32), np.zeros(4, np.int64), 3, seed=0)


def test_vsml_learner_in_the_harness() -> None:
    s = _streams(10, 2, a=6)
    results = evaluate([_vsml(CONFIGS[0]), online_sgd(0.01)], s)
    assert set(results) == {"vsml", "sgd-linear(lr=0.01)"}
    assert results["vsml"].summary.n_streams == 2


@pytest.mark.slow
@pytest.mark.parametrize("dataset", ["mnist", "fashion-mnist"])
def test_tuned_baselines_match_the_reference_table(dataset: str) -> None:
    """The reference procedure end to end: tune on the evaluation streams, compare the mean accuracy."""
    protocol = EvalProtocol(dataset, "train", n_steps=2000, n_streams=8, seed=1, tune_on="eval")
    result = run_protocol(protocol, data_dir=shared_dataset_dir(dataset))
    failures = []
    for name, res in result.results.items():
        opt, arch = name.split("-")
        hidden = () if arch == "linear" else (int(arch.removeprefix("tanh")),)
        row = next(r for r in REFERENCE_TABLE if (r.dataset, r.optimizer, r.hidden) == (dataset, opt, hidden))
        (check,) = [c for c in check_against_reference(res.summary, row) if c.metric == "accuracy"]
        if not check.ok:
            failures.append(f"{name} lr {result.searches[name].best_lr:g}: {check}")
    assert not failures, "; ".join(failures)
