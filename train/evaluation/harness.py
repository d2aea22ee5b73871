"""Evaluate online learners on the same streams; tune baseline learning rates (docs/model.md §7).

Layers, each usable alone:

* ``evaluate(learners, streams)`` runs every learner on the SAME streams
  (same seed) and returns summaries and curves per learner.
* ``tune_lr(factory, grid, streams)`` runs one learner per learning rate and
  picks the best by mean online accuracy.
* ``tune_and_evaluate(baselines, eval_streams, tune_streams)``: the one
  tune-then-evaluate path (``run_protocol`` and ``vsml-eval`` both use it):
  each baseline's rate is chosen on the tuning streams, then run once on the
  evaluation streams.
* ``run_protocol(EvalProtocol(...))`` draws the streams of a dataset, tunes
  the reference baselines and evaluates them with any other learner (VSML).

Tuning, honestly. The reference table chose each baseline's learning rate on
the very streams it reports (``tune_on="eval"``), which flatters the
baselines a little (the maximum of noisy means is biased upwards). The
default here, ``tune_on="separate"``, tunes on other streams drawn from the
training split (a different seed) and then evaluates the chosen rate once on
the evaluation streams. When the evaluation split is the training split too
(as in the reference table), the tuning streams are different draws, not
different examples.

``check_against_reference`` is the "within noise" test of the reference
figures: |measured - reference| <= max(3 standard errors over streams, 0.03).

Dimension letters: T steps, S streams, A features, B classes.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np

from ..data.datasets import Split
from ..data.sampler import MNIST_MEAN, MNIST_STD, Streams, dataset_streams
from ..seeds import PROTOCOL_TUNE_KEY
from .baselines import ReferenceFigures, reference_baselines
from .learners import OnlineLearner
from .metrics import (
    FIRST_STEPS,
    LAST_STEPS,
    OnlineCurves,
    OnlineSummary,
    ShotsCurve,
    accuracy_by_shots,
    online_curves,
    summarize,
)

TuneOn = Literal["separate", "eval"]
LearnerFactory = Callable[[float], OnlineLearner]
PathLike = str | os.PathLike[str] | None


class StreamsLike(Protocol):
    """What the harness needs of ``vsml_train.data.Streams``: x [T, S, A], y [T, S], n_classes."""

    @property
    def x(self) -> np.ndarray: ...

    @property
    def y(self) -> np.ndarray: ...

    @property
    def n_classes(self) -> int: ...


# ---------------------------------------------------------------------------
# one or more learners on the same streams


@dataclass(frozen=True, eq=False)
class EvalResult:
    """One learner on one set of streams.

    Attributes:
        name: the learner's name.
        summary: per-stream summaries with confidence intervals.
        curves: per-step accuracy and loss [T], mean over streams.
        shots: accuracy against examples of the same class seen before.
        seconds: wall-clock time of ``learner.run``.
    """

    name: str
    summary: OnlineSummary
    curves: OnlineCurves = field(repr=False)
    shots: ShotsCurve = field(repr=False)
    seconds: float

    def to_dict(self, *, curves: bool = True) -> dict[str, Any]:
        """JSON-ready; ``curves=False`` leaves out the per-step and per-shot curves."""
        out: dict[str, Any] = {"name": self.name, "seconds": self.seconds, "summary": self.summary.to_dict()}
        if curves:
            out["curves"] = self.curves.to_dict()
            out["shots"] = self.shots.to_dict()
        return out


def evaluate_one(
    learner: OnlineLearner,
    streams: StreamsLike,
    *,
    seed: int = 0,
    first_steps: int = FIRST_STEPS,
    last_steps: int = LAST_STEPS,
) -> EvalResult:
    """Run ``learner`` on ``streams`` (x [T, S, A], y [T, S]) and score its logits [T, S, B]."""
    x, y = np.asarray(streams.x), np.asarray(streams.y)
    start = time.perf_counter()
    logits = np.asarray(learner.run(x, y, streams.n_classes, seed))
    seconds = time.perf_counter() - start
    expected = (*y.shape, streams.n_classes)
    if logits.shape != expected:
        raise ValueError(f"learner {learner.name!r} returned logits {logits.shape}, expected [T, S, B] = {expected}")
    if not np.isfinite(logits).all():
        raise ValueError(f"learner {learner.name!r} returned non-finite logits")
    return EvalResult(
        name=learner.name,
        summary=summarize(logits, y, first_steps=first_steps, last_steps=last_steps),
        curves=online_curves(logits, y),
        shots=accuracy_by_shots(logits, y),
        seconds=seconds,
    )


def evaluate(
    learners: Iterable[OnlineLearner],
    streams: StreamsLike,
    *,
    seed: int = 0,
    first_steps: int = FIRST_STEPS,
    last_steps: int = LAST_STEPS,
) -> dict[str, EvalResult]:
    """Run every learner on the same streams with the same seed: {name: result}, in order.

    Raises:
        ValueError: two learners share a name, or a learner returned bad logits.
    """
    learners = list(learners)
    names = [lr.name for lr in learners]
    if len(set(names)) != len(names):
        raise ValueError(f"learner names must be unique, got {names}")
    return {
        lr.name: evaluate_one(lr, streams, seed=seed, first_steps=first_steps, last_steps=last_steps) for lr in learners
    }


# ---------------------------------------------------------------------------
# learning-rate search


@dataclass(frozen=True, eq=False)
class LRSearch:
    """A learning-rate grid search.

    Attributes:
        grid: the learning rates tried, in the given order.
        best_lr: the one with the highest mean online accuracy (first on ties).
        results: {lr: result on the tuning streams}.
    """

    grid: tuple[float, ...]
    best_lr: float
    results: dict[float, EvalResult] = field(repr=False)

    @property
    def best(self) -> EvalResult:
        """The best learning rate's result on the tuning streams."""
        return self.results[self.best_lr]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the grid, the choice and each rate's summary (no curves)."""
        return {
            "grid": list(self.grid),
            "best_lr": self.best_lr,
            "summaries": [{"lr": lr, **self.results[lr].summary.to_dict()} for lr in self.grid],
        }


def tune_lr(factory: LearnerFactory, grid: Sequence[float], streams: StreamsLike, *, seed: int = 0) -> LRSearch:
    """Pick a learning rate on ``grid`` by mean online accuracy on ``streams``.

    Args:
        factory: lr -> learner (e.g. ``lambda lr: online_sgd(lr)``).
        grid: learning rates to try.
        streams: the tuning streams. Passing the evaluation streams is what
            the reference table did; streams drawn separately are the honest
            choice (``tuning_streams``, ``run_protocol``'s default).
        seed: the learners' seed.
    """
    grid = tuple(float(lr) for lr in grid)
    if not grid or len(set(grid)) != len(grid):
        raise ValueError(f"the grid must be non-empty without repeats, got {grid}")
    results = {lr: evaluate_one(factory(lr), streams, seed=seed) for lr in grid}
    best = max(grid, key=lambda lr: (results[lr].summary.accuracy.mean, -grid.index(lr)))
    return LRSearch(grid=grid, best_lr=best, results=results)


def tune_and_evaluate(
    baselines: Mapping[str, tuple[LearnerFactory, Sequence[float]]],
    eval_streams: StreamsLike,
    tune_streams: StreamsLike,
    *,
    seed: int = 0,
) -> Iterator[tuple[str, LRSearch, EvalResult]]:
    """For each baseline, in order: tune its rate on ``tune_streams``, then score it on ``eval_streams``.

    Yields (name, search, result at the chosen rate on the evaluation
    streams) as each baseline finishes. When ``tune_streams`` is
    ``eval_streams`` the search's best result is that result (no second run).
    """
    for name, (factory, grid) in baselines.items():
        search = tune_lr(factory, grid, tune_streams, seed=seed)
        if tune_streams is eval_streams:
            best = search.best
        else:
            best = evaluate_one(factory(search.best_lr), eval_streams, seed=seed)
        yield name, search, best


# ---------------------------------------------------------------------------
# the protocol on a named dataset


@dataclass(frozen=True)
class EvalProtocol:
    """Which streams an evaluation uses, and how baselines are tuned.

    Defaults are the reference table's setting: MNIST, 2,000 steps, 8 streams
    from the training split, MNIST scalar standardisation. The paper's public
    defaults are 32 streams of the test split.

    Attributes:
        dataset: a ``vsml_train.data`` dataset name.
        split: where the evaluation streams come from.
        n_steps: T.
        n_streams: S.
        seed: seeds the evaluation streams and every learner.
        mean, std: scalar standardisation of the pixels (MNIST's for every dataset).
        tune_on: "separate" (other streams from the training split) or "eval"
            (the evaluation streams themselves, as the reference table).
    """

    dataset: str = "mnist"
    split: Split = "train"
    n_steps: int = 2000
    n_streams: int = 8
    seed: int = 0
    mean: float = MNIST_MEAN
    std: float = MNIST_STD
    tune_on: TuneOn = "separate"

    def __post_init__(self) -> None:
        if self.split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {self.split!r}")
        if self.tune_on not in ("separate", "eval"):
            raise ValueError(f"tune_on must be 'separate' or 'eval', got {self.tune_on!r}")
        if self.n_steps < 1 or self.n_streams < 1 or self.seed < 0:
            raise ValueError(f"need n_steps, n_streams >= 1 and seed >= 0, got {self}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _draw(protocol: EvalProtocol, split: Split, seed: int | np.random.SeedSequence, data_dir: PathLike) -> Streams:
    return dataset_streams(protocol.dataset, split, n_steps=protocol.n_steps, n_streams=protocol.n_streams,
                           seed=seed, mean=protocol.mean, std=protocol.std, data_dir=data_dir)  # fmt: skip


def protocol_streams(protocol: EvalProtocol, *, data_dir: PathLike = None) -> Streams:
    """The evaluation streams: x float32 [T, S, A], y int64 [T, S]."""
    return _draw(protocol, protocol.split, protocol.seed, data_dir)


def tuning_streams(protocol: EvalProtocol, *, data_dir: PathLike = None) -> Streams:
    """The streams learning rates are tuned on.

    ``tune_on="eval"``: the evaluation streams. ``"separate"``: as many
    streams of the same length from the training split, from a seed derived
    from (but never equal to) the evaluation seed.
    """
    if protocol.tune_on == "eval":
        return protocol_streams(protocol, data_dir=data_dir)
    return _draw(protocol, "train", np.random.SeedSequence(protocol.seed, spawn_key=(PROTOCOL_TUNE_KEY,)), data_dir)


@dataclass(frozen=True, eq=False)
class ProtocolResult:
    """Everything ``run_protocol`` measured.

    Attributes:
        protocol: the setting.
        results: {name: result on the evaluation streams}; tuned baselines
            under their base name (e.g. "sgd-linear") at their chosen rate.
        searches: {baseline name: its learning-rate search}.
    """

    protocol: EvalProtocol
    results: dict[str, EvalResult]
    searches: dict[str, LRSearch] = field(default_factory=dict)

    def to_dict(self, *, curves: bool = False) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "protocol": self.protocol.to_dict(),
            "results": {k: r.to_dict(curves=curves) for k, r in self.results.items()},
            "searches": {k: s.to_dict() for k, s in self.searches.items()},
        }

    def table(self) -> str:
        """A plain-text table: one line per learner, mean / last / first accuracy with 95% half-widths."""
        p = self.protocol
        lines = [f"{p.dataset} {p.split}: T={p.n_steps} S={p.n_streams}, tuned on {p.tune_on} streams"]
        for name, r in self.results.items():
            lr = f" lr {self.searches[name].best_lr:g}" if name in self.searches else ""
            lines.append(f"  {name + lr:28s} {r.summary.brief()}")
        return "\n".join(lines)


def run_protocol(
    protocol: EvalProtocol,
    *,
    baselines: Mapping[str, tuple[LearnerFactory, Sequence[float]]] | None = None,
    learners: Iterable[OnlineLearner] = (),
    data_dir: PathLike = None,
) -> ProtocolResult:
    """Tune each baseline's learning rate, then evaluate it and ``learners`` on the same streams.

    Args:
        protocol: the dataset, streams and tuning choice.
        baselines: {name: (lr -> learner, grid)}; default the reference
            table's four (``reference_baselines()``).
        learners: learners with nothing to tune (e.g. ``VSMLLearner``).
        data_dir: passed to ``load_dataset``.
    """
    specs = reference_baselines() if baselines is None else baselines
    eval_streams = protocol_streams(protocol, data_dir=data_dir)
    tune = eval_streams if protocol.tune_on == "eval" else tuning_streams(protocol, data_dir=data_dir)
    results: dict[str, EvalResult] = {}
    searches: dict[str, LRSearch] = {}
    for name, search, best in tune_and_evaluate(specs, eval_streams, tune, seed=protocol.seed):
        searches[name] = search
        results[name] = dataclasses.replace(best, name=name)
    for name, result in evaluate(learners, eval_streams, seed=protocol.seed).items():
        if name in results:
            raise ValueError(f"learner name {name!r} is also a baseline name")
        results[name] = result
    return ProtocolResult(protocol=protocol, results=results, searches=searches)


# ---------------------------------------------------------------------------
# the reference figures


@dataclass(frozen=True)
class ReferenceCheck:
    """One measured figure against the reference table."""

    metric: str
    measured: float
    reference: float
    tolerance: float

    @property
    def ok(self) -> bool:
        """|measured - reference| <= tolerance."""
        return abs(self.measured - self.reference) <= self.tolerance

    def __str__(self) -> str:
        mark = "ok" if self.ok else "OFF"
        return f"{self.metric}: {self.measured:.3f} vs {self.reference:.3f} (tol {self.tolerance:.3f}) {mark}"


def check_against_reference(
    summary: OnlineSummary, row: ReferenceFigures, *, n_sem: float = 3.0, floor: float = 0.03
) -> list[ReferenceCheck]:
    """Compare mean, last-200 and first-100 accuracy with a reference row.

    Tolerance per figure: max(n_sem * its standard error over streams, floor)
    (just ``floor`` with one stream).
    """
    checks = []
    for metric, ref in row.figures().items():
        est = getattr(summary, metric)
        tol = floor if math.isnan(est.sem) else max(n_sem * est.sem, floor)
        checks.append(ReferenceCheck(metric, est.mean, ref, tol))
    return checks
