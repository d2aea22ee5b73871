"""Probabilities, pickling / deep copies through the state, LearnerPool.pretrained, standardize="model"."""

from __future__ import annotations

import copy
import pickle
from pathlib import Path

import numpy as np
import pytest

from tests.test_runtime_learner import export_tmp
from vsml_runtime import Learner, LearnerPool
from vsml_runtime.base import softmax
from vsml_train.model.config import VSMLConfig

A, B = 5, 3


def _stream(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, A)), rng.integers(0, B, n)


def _state(learner: Learner | LearnerPool) -> dict[str, np.ndarray]:
    return {k: v for k, v in learner.state_dict().items() if k != "meta"}


def test_softmax_rows_sum_to_one_and_survive_huge_logits() -> None:
    p = softmax(np.array([[1e30, 0.0, -1e30], [0.0, 0.0, 0.0]], np.float32))
    assert p.dtype == np.float64 and np.allclose(p.sum(-1), 1.0)
    assert np.allclose(p[0], [1, 0, 0]) and np.allclose(p[1], 1 / 3)


def test_learner_probabilities_match_logits_and_predictions() -> None:
    learner = Learner.pretrained(A, B, seed=0)
    x, y = _stream(12)
    for i in range(10):
        pred, logits, proba = learner.learn(x[i], int(y[i]), return_logits=True, return_proba=True)
        assert np.allclose(proba, softmax(logits)) and pred == int(np.argmax(proba))
    pred, proba = learner.learn(x[10], int(y[10]), return_proba=True)
    assert proba.shape == (B,) and np.isclose(proba.sum(), 1.0)
    before = _state(learner)
    many = learner.predict_proba(x)
    assert many.shape == (12, B) and np.allclose(many.sum(1), 1.0)
    assert np.array_equal(many.argmax(1), learner.predict(x))
    assert np.allclose(learner.predict_proba(x[3]), many[3])
    after = _state(learner)
    assert all(np.array_equal(before[k], after[k]) for k in before)  # predict_proba learns nothing


def test_pool_probabilities_and_pretrained() -> None:
    pool = LearnerPool.pretrained(4, A, B, seed=3)
    assert pool.n_learners == 4 and pool.info.params_sha256 == Learner.pretrained(A, B).info.params_sha256
    x, y = _stream(4)
    preds, proba = pool.learn(x, y, return_proba=True)
    assert proba.shape == (4, B) and np.allclose(proba.sum(-1), 1.0)
    assert np.array_equal(preds, proba.argmax(-1))
    sub = pool.predict_proba(x[[1, 3]], learners=[1, 3])
    assert np.allclose(sub, pool.predict_proba(x)[[1, 3]])
    single = Learner.pretrained(A, B, seed=4)  # learner i of a pool == Learner(seed=seed + i)
    single.learn(x[1], int(y[1]))
    assert np.allclose(single.predict_proba(x[1]), pool.predict_proba(x)[1], atol=1e-6)


@pytest.mark.parametrize("how", ["pickle", "deepcopy"])
def test_learner_pickles_and_deep_copies_through_its_state(how: str) -> None:
    learner = Learner.pretrained(A, B, seed=2, standardize="online")
    x, y = _stream(30)
    learner.learn_stream(x[:20], y[:20])
    clone = pickle.loads(pickle.dumps(learner)) if how == "pickle" else copy.deepcopy(learner)
    assert clone.steps == 20 and clone._ctor == learner._ctor
    assert np.array_equal(clone.predict_proba(x), learner.predict_proba(x))
    # the copy is independent, and continues exactly as the original would
    assert np.array_equal(clone.learn_stream(x[20:], y[20:]), learner.learn_stream(x[20:], y[20:]))
    clone.learn(x[0], 0)
    assert clone.steps == 31 and learner.steps == 30


def test_pickle_of_the_pretrained_learner_names_no_path(tmp_path: Path) -> None:
    state = Learner.pretrained(A, B).__getstate__()
    assert state["model_path"] is None  # resolved again where the package is installed
    path = export_tmp(tmp_path, VSMLConfig())
    own = Learner(path, A, B, device="cpu")
    assert own.__getstate__()["model_path"] == str(path.resolve())
    assert pickle.loads(pickle.dumps(own)).info.params_sha256 == own.info.params_sha256


def test_pool_pickles_through_its_state() -> None:
    pool = LearnerPool.pretrained(3, A, B, seed=1, standardize=(0.5, 2.0))
    x, y = _stream(3)
    pool.learn(x, y)
    clone = pickle.loads(pickle.dumps(pool))
    assert clone.n_learners == 3 and np.array_equal(clone.steps, [1, 1, 1])
    assert np.array_equal(clone.predict_proba(x), pool.predict_proba(x))


def test_standardize_model_uses_the_shipped_statistics(tmp_path: Path) -> None:
    learner = Learner.pretrained(A, B, standardize="model")
    c = learner.info.input_contract
    assert (c.mean, c.std) == (0.1307, 0.3081)
    x, _ = _stream(4)
    fixed = Learner.pretrained(A, B, standardize=(0.1307, 0.3081))
    assert np.array_equal(learner.predict(x, return_logits=True)[1], fixed.predict(x, return_logits=True)[1])
    # a model without statistics: the error says what to pass instead
    path = export_tmp(tmp_path, VSMLConfig())
    with pytest.raises(ValueError, match=r"standardize=\(mean, std\).*online-scalar"):
        Learner(path, A, B, device="cpu", standardize="model")
