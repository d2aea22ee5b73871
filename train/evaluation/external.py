"""The online learners people deploy today, as ``OnlineLearner`` baselines (docs/model.md §7).

- ``RiverLogistic``: River's ``OneVsRestClassifier(LogisticRegression(SGD(lr)))``.
- ``VowpalWabbitOAA``: Vowpal Wabbit ``--oaa B --loss_function logistic -l lr``.

Both are optional dependencies (``pip install river vowpalwabbit``);
``external_baselines()`` lists the ones installed and ``missing_external()``
the ones that are not, so callers can say what they skipped. Each learner
sees every stream test-then-train, one example at a time, from a fresh model
per stream, like every other learner of the harness.

Both libraries return class probabilities, not logits; ``run`` returns
log-probabilities (clipped at 1e-7) in the logits' place: argmax and
cross-entropy are then what the library predicted.

Dimension letters: T steps, S streams, A features, B classes.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .learners import check_streams

# small grids around the reference table's best rates (River 0.003, VW 0.5): River runs
# in pure Python at about 8 ms per example at 784 features
RIVER_GRID = (0.001, 0.003, 0.01)
VW_GRID = (0.1, 0.3, 1.0, 3.0)
_PROB_FLOOR = 1e-7


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _log_probs(probs: np.ndarray) -> np.ndarray:
    """Normalised log-probabilities of a probability vector [B]."""
    p = np.clip(np.nan_to_num(probs, nan=0.0), _PROB_FLOOR, None)
    return np.log(p / p.sum()).astype(np.float32)


def _each_stream(
    x: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    fresh: Callable[[], Any],
    test_then_train: Callable[[Any, np.ndarray, int], np.ndarray],
    close: Callable[[Any], None] = lambda model: None,
) -> np.ndarray:
    """A fresh model per stream, shown each example once: x [T, S, A], y [T, S] -> log-probs [T, S, B].

    ``test_then_train(model, x_t [A], y_t)`` returns the class probabilities [B]
    the model gave x_t before it learned (x_t, y_t).
    """
    x, y = check_streams(x, y, n_classes)
    t_steps, s, _ = x.shape
    out = np.empty((t_steps, s, n_classes), dtype=np.float32)
    for j in range(s):
        model = fresh()
        try:
            for t in range(t_steps):
                out[t, j] = _log_probs(test_then_train(model, x[t, j], int(y[t, j])))
        finally:
            close(model)
    return out


@dataclass(frozen=True)
class RiverLogistic:
    """River 0.2x logistic regression, one-vs-rest, plain SGD with learning rate ``lr``."""

    lr: float = 0.003

    @property
    def name(self) -> str:
        return f"river-logistic-ovr(lr={self.lr:g})"

    def run(self, x: np.ndarray, y: np.ndarray, n_classes: int, seed: int) -> np.ndarray:
        """x [T, S, A], y [T, S] -> log-probabilities [T, S, B] (deterministic; ``seed`` unused)."""
        from river import linear_model, multiclass, optim

        def fresh() -> Any:
            return multiclass.OneVsRestClassifier(linear_model.LogisticRegression(optimizer=optim.SGD(self.lr)))

        def test_then_train(model: Any, row: np.ndarray, label: int) -> np.ndarray:
            feats = dict(enumerate(row.tolist()))
            proba = model.predict_proba_one(feats)  # {} before the first example: uniform
            probs = np.array([proba.get(k, 0.0) for k in range(n_classes)], dtype=np.float64)
            model.learn_one(feats, label)
            return probs if probs.sum() > 0 else np.ones(n_classes)

        return _each_stream(x, y, n_classes, fresh, test_then_train)


@dataclass(frozen=True)
class VowpalWabbitOAA:
    """Vowpal Wabbit one-against-all logistic regression (``--oaa B``) with learning rate ``lr``."""

    lr: float = 0.5

    @property
    def name(self) -> str:
        return f"vowpalwabbit-oaa(lr={self.lr:g})"

    def run(self, x: np.ndarray, y: np.ndarray, n_classes: int, seed: int) -> np.ndarray:
        """x [T, S, A], y [T, S] -> log-probabilities [T, S, B] (VW's ``--probabilities``)."""
        from vowpalwabbit import Workspace

        args = f"--oaa {n_classes} --loss_function logistic --probabilities -l {self.lr!r} --quiet --random_seed {seed}"

        def test_then_train(vw: Any, row: np.ndarray, label: int) -> np.ndarray:
            feats = " ".join(f"{i}:{v:.6g}" for i, v in enumerate(row.tolist()))
            probs = np.asarray(vw.predict(f"| {feats}"), dtype=np.float64)  # [B]
            vw.learn(f"{label + 1} | {feats}")  # VW's classes are 1..B
            return probs

        return _each_stream(x, y, n_classes, lambda: Workspace(args), test_then_train, lambda vw: vw.finish())


def external_baselines() -> dict[str, tuple[Callable[[float], object], tuple[float, ...]]]:
    """{name: (factory lr -> learner, learning-rate grid)} of the installed external learners."""
    specs: dict[str, tuple[Callable[[float], object], tuple[float, ...]]] = {}
    if _installed("river"):
        specs["river-logistic-ovr"] = (RiverLogistic, RIVER_GRID)
    if _installed("vowpalwabbit"):
        specs["vowpalwabbit-oaa"] = (VowpalWabbitOAA, VW_GRID)
    return specs


def missing_external() -> list[str]:
    """Names of the optional learners that are not installed (pip names)."""
    return [m for m in ("river", "vowpalwabbit") if not _installed(m)]
