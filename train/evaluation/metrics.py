"""Prequential (online) metrics of any online learner (docs/model.md §7).

The learner's prediction for x_t is made before y_t is revealed, so the
logits of a whole stream score it on examples it has not learned from yet:
the mean accuracy over the stream is its "online accuracy" (the area under
the learning curve), the first steps measure the speed of early learning and
the last steps how well it ends up.

Every summary is computed per stream first and then averaged over the S
independent streams, with a 95% confidence interval from Student's t
distribution with S - 1 degrees of freedom (undefined, nan, for S = 1).

Dimension letters: T steps, S streams, B classes, F shots (examples of the
same class seen before).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

FIRST_STEPS = 100
LAST_STEPS = 200
LEVEL = 0.95


# ---------------------------------------------------------------------------
# per-step scores


def check_predictions(logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate logits [T, S, B] and labels [T, S]; return float64 logits and int64 labels."""
    logits = np.asarray(logits)
    labels = np.asarray(labels)
    if logits.ndim != 3 or labels.shape != logits.shape[:2]:
        raise ValueError(f"expected logits [T, S, B] and labels [T, S], got {logits.shape} and {labels.shape}")
    if logits.shape[0] < 1 or logits.shape[1] < 1 or logits.shape[2] < 2:
        raise ValueError(f"need T >= 1, S >= 1 and B >= 2, got logits {logits.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers, got {labels.dtype}")
    n_classes = logits.shape[2]
    if labels.min() < 0 or labels.max() >= n_classes:
        raise ValueError(f"labels must lie in [0, {n_classes}), found {labels.min()}..{labels.max()}")
    return logits.astype(np.float64, copy=False), labels.astype(np.int64, copy=False)


def step_correct(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Whether each prediction was right: [T, S, B], [T, S] -> float64 [T, S] of 0 / 1.

    Ties go to the lowest class index (``argmax``).
    """
    logits, labels = check_predictions(logits, labels)
    return (logits.argmax(-1) == labels).astype(np.float64)


def step_loss(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Cross-entropy of each prediction: [T, S, B], [T, S] -> float64 [T, S] (nats)."""
    logits, labels = check_predictions(logits, labels)
    top = logits.max(-1, keepdims=True)
    log_z = np.log(np.exp(logits - top).sum(-1)) + top[..., 0]  # [T, S]
    picked = np.take_along_axis(logits, labels[..., None], axis=-1)[..., 0]
    return log_z - picked


# ---------------------------------------------------------------------------
# confidence intervals


def _t_two_sided_mass(t: float, df: int) -> float:
    """P(|T| <= t) for Student's t with integer df >= 1 (closed form series).

    With theta = atan(t / sqrt(df)), c = cos(theta), s = sin(theta):
    odd df:  (2 / pi) (theta + s c sum_{j < (df-1)/2} c^(2j) prod_{i<=j} 2i / (2i + 1)),
    even df: s sum_{j < df/2} c^(2j) prod_{i<=j} (2i - 1) / (2i).
    """
    theta = math.atan(t / math.sqrt(df))
    c2 = math.cos(theta) ** 2
    s = math.sin(theta)
    if df % 2:
        total, term = 0.0, 1.0
        for j in range((df - 1) // 2):
            if j:
                term *= c2 * (2 * j) / (2 * j + 1)
            total += term
        return 2 / math.pi * (theta + s * math.cos(theta) * total)
    total, term = 0.0, 1.0
    for j in range(df // 2):
        if j:
            term *= c2 * (2 * j - 1) / (2 * j)
        total += term
    return s * total


def t_critical(level: float, df: int) -> float:
    """The t with P(|T| <= t) = level for Student's t with df degrees of freedom.

    ``t_critical(0.95, 7)`` = 2.3646 (the half-width factor of a 95% interval
    over 8 streams). nan for df < 1.
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if df < 1:
        return math.nan
    lo, hi = 0.0, 1.0
    while _t_two_sided_mass(hi, df) < level:
        lo, hi = hi, 2 * hi
    for _ in range(200):  # bisection to float precision
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        if _t_two_sided_mass(mid, df) < level:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def _json_float(v: float) -> float | None:
    return None if math.isnan(v) else float(v)


@dataclass(frozen=True)
class Estimate:
    """The mean of per-stream values with its standard error and confidence interval.

    Attributes:
        values: one value per stream, [S].
        level: coverage of the interval (0.95).
    Derived (nan when S = 1): ``sem`` the standard error of the mean (sample
    standard deviation / sqrt(S)), ``half_width`` = t_{level, S-1} * sem,
    ``low`` / ``high`` the interval.
    """

    values: tuple[float, ...]
    level: float = LEVEL
    mean: float = field(init=False)
    sem: float = field(init=False)
    half_width: float = field(init=False)

    def __post_init__(self) -> None:
        vals = np.asarray(self.values, dtype=np.float64)
        if vals.ndim != 1 or len(vals) == 0:
            raise ValueError(f"an Estimate needs a non-empty [S] vector of values, got shape {vals.shape}")
        object.__setattr__(self, "values", tuple(float(v) for v in vals))
        n = len(vals)
        sem = float(vals.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
        object.__setattr__(self, "mean", float(vals.mean()))
        object.__setattr__(self, "sem", sem)
        object.__setattr__(self, "half_width", t_critical(self.level, n - 1) * sem if n > 1 else math.nan)

    @classmethod
    def of(cls, values: np.ndarray, level: float = LEVEL) -> Estimate:
        """From an array of per-stream values [S]."""
        return cls(tuple(np.asarray(values, dtype=np.float64).reshape(-1)), level)

    @property
    def n(self) -> int:
        """S, the number of streams."""
        return len(self.values)

    @property
    def low(self) -> float:
        return self.mean - self.half_width

    @property
    def high(self) -> float:
        return self.mean + self.half_width

    def text(self, sep: str = "±") -> str:
        """``"0.689±0.007"``: the mean and the interval half-width (none with one stream)."""
        return f"{self.mean:.3f}" + ("" if math.isnan(self.half_width) else f"{sep}{self.half_width:.3f}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: mean, sem, ci_low, ci_high, level, per_stream (nan becomes None)."""
        return {
            "mean": self.mean,
            "sem": _json_float(self.sem),
            "ci_low": _json_float(self.low),
            "ci_high": _json_float(self.high),
            "level": self.level,
            "per_stream": list(self.values),
        }


# ---------------------------------------------------------------------------
# summaries and curves


@dataclass(frozen=True)
class OnlineSummary:
    """Per-stream summaries of an online run, each as an ``Estimate`` over the S streams.

    Attributes:
        n_steps: T.
        n_streams: S.
        first_steps: the window of ``first_accuracy`` (min(100, T)).
        last_steps: the window of ``last_accuracy`` and ``final_loss`` (min(200, T)).
        accuracy: online accuracy, the mean over all T steps.
        first_accuracy: mean accuracy over the first ``first_steps`` steps.
        last_accuracy: mean accuracy over the last ``last_steps`` steps.
        loss: mean cross-entropy over all T steps (nats).
        final_loss: mean cross-entropy over the last ``last_steps`` steps.
    """

    n_steps: int
    n_streams: int
    first_steps: int
    last_steps: int
    accuracy: Estimate
    first_accuracy: Estimate
    last_accuracy: Estimate
    loss: Estimate
    final_loss: Estimate

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready nested dict (``json.dumps`` works on it; nan becomes None)."""
        out: dict[str, Any] = {
            "n_steps": self.n_steps,
            "n_streams": self.n_streams,
            "first_steps": self.first_steps,
            "last_steps": self.last_steps,
        }
        for name in ("accuracy", "first_accuracy", "last_accuracy", "loss", "final_loss"):
            out[name] = getattr(self, name).to_dict()
        return out

    def brief(self) -> str:
        """One line: mean / last / first accuracy with interval half-widths, and the final loss."""
        return (
            f"mean {self.accuracy.text()}  last{self.last_steps} {self.last_accuracy.text()}  "
            f"first{self.first_steps} {self.first_accuracy.text()}  final loss {self.final_loss.text()}"
        )

    def markdown_row(self, name: str) -> str:
        """``| name | mean ± half-width | first | last | final loss |`` (95% intervals over streams)."""
        cells = (self.accuracy, self.first_accuracy, self.last_accuracy, self.final_loss)
        return "| " + " | ".join([name, *(e.text(" ± ") for e in cells)]) + " |"

    @staticmethod
    def markdown_header(first_steps: int = 100, last_steps: int = 200) -> str:
        """The two header lines matching ``markdown_row``."""
        return (
            f"| learner | online accuracy | first {first_steps} | last {last_steps} "
            f"| final loss (last {last_steps}) |\n"
            "|---|---|---|---|---|"
        )


def summarize(
    logits: np.ndarray,
    labels: np.ndarray,
    *,
    first_steps: int = FIRST_STEPS,
    last_steps: int = LAST_STEPS,
    level: float = LEVEL,
) -> OnlineSummary:
    """Summarise an online run from its logits [T, S, B] and labels [T, S].

    The logits at step t must have been computed before the learner saw
    labels[t]. Windows longer than T are cut to T.
    """
    if first_steps < 1 or last_steps < 1:
        raise ValueError(f"first_steps and last_steps must be >= 1, got {first_steps} and {last_steps}")
    correct = step_correct(logits, labels)  # [T, S]
    loss = step_loss(logits, labels)  # [T, S]
    t_steps, s = correct.shape
    first, last = min(first_steps, t_steps), min(last_steps, t_steps)

    def est(v: np.ndarray) -> Estimate:
        return Estimate.of(v, level)

    return OnlineSummary(
        n_steps=t_steps,
        n_streams=s,
        first_steps=first,
        last_steps=last,
        accuracy=est(correct.mean(0)),
        first_accuracy=est(correct[:first].mean(0)),
        last_accuracy=est(correct[-last:].mean(0)),
        loss=est(loss.mean(0)),
        final_loss=est(loss[-last:].mean(0)),
    )


@dataclass(frozen=True, eq=False)
class OnlineCurves:
    """Per-step learning curves, averaged over the streams.

    Attributes:
        accuracy: float64 [T], fraction of streams right at step t.
        loss: float64 [T], mean cross-entropy at step t.
    """

    accuracy: np.ndarray = field(repr=False)
    loss: np.ndarray = field(repr=False)

    def to_dict(self) -> dict[str, list[float]]:
        """JSON-ready lists."""
        return {"accuracy": self.accuracy.tolist(), "loss": self.loss.tolist()}


def online_curves(logits: np.ndarray, labels: np.ndarray) -> OnlineCurves:
    """Accuracy and loss per step, mean over streams: [T, S, B], [T, S] -> two [T] curves."""
    return OnlineCurves(accuracy=step_correct(logits, labels).mean(1), loss=step_loss(logits, labels).mean(1))


# ---------------------------------------------------------------------------
# accuracy against examples seen of the same class


def shots_seen(labels: np.ndarray, n_classes: int | None = None) -> np.ndarray:
    """How many earlier examples of the same class each stream has seen: int [T, S] -> int64 [T, S].

    k[t, s] = #{t' < t : labels[t', s] == labels[t, s]}; the first example of
    a class has k = 0.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer) or labels.size == 0:
        raise ValueError(f"expected integer labels [T, S], got {labels.dtype} {labels.shape}")
    if labels.min() < 0:
        raise ValueError(f"labels must be >= 0, found {labels.min()}")
    b = int(labels.max()) + 1 if n_classes is None else n_classes
    onehot = labels[..., None] == np.arange(b)  # [T, S, B]
    before = np.cumsum(onehot, axis=0, dtype=np.int64) - onehot  # [T, S, B], counts before step t
    return np.take_along_axis(before, labels[..., None].astype(np.int64), axis=-1)[..., 0]


@dataclass(frozen=True, eq=False)
class ShotsCurve:
    """Accuracy as a function of k, the examples of the true class seen before.

    Attributes:
        accuracy: float64 [F], accuracy over every (t, s) whose class had been
            seen exactly k times before (pooled over streams and classes).
        count: int64 [F], how many predictions each point averages (large k
            come from few, frequent classes: read the tail with care).
    """

    accuracy: np.ndarray = field(repr=False)
    count: np.ndarray = field(repr=False)

    @property
    def shots(self) -> np.ndarray:
        """k = 0, 1, ..., F - 1."""
        return np.arange(len(self.accuracy))

    def to_dict(self) -> dict[str, list[Any]]:
        """JSON-ready lists."""
        return {"shots": self.shots.tolist(), "accuracy": self.accuracy.tolist(), "count": self.count.tolist()}


def accuracy_by_shots(logits: np.ndarray, labels: np.ndarray, *, max_shots: int | None = None) -> ShotsCurve:
    """Accuracy against shots seen: [T, S, B], [T, S] -> ``ShotsCurve`` of F points.

    F = (largest k that occurs) + 1, or ``max_shots + 1`` when given
    (predictions with more shots are left out). Every k below the largest
    occurs, so no point is empty unless ``max_shots`` exceeds it (then its
    accuracy is nan and its count 0).
    """
    correct = step_correct(logits, labels)  # [T, S]
    k = shots_seen(labels, n_classes=np.asarray(logits).shape[-1]).reshape(-1)
    size = int(k.max()) + 1 if max_shots is None else max_shots + 1
    keep = k < size
    count = np.bincount(k[keep], minlength=size).astype(np.int64)
    hits = np.bincount(k[keep], weights=correct.reshape(-1)[keep], minlength=size)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.where(count > 0, hits / np.maximum(count, 1), np.nan)
    return ShotsCurve(accuracy=acc, count=count)


def paired_difference(a: Estimate, b: Estimate) -> Estimate:
    """Per-stream a - b as an ``Estimate``: learners run on the SAME streams are compared pairwise.

    The interval of a paired difference is usually much narrower than the two
    separate intervals, because the streams' difficulty cancels.
    """
    if a.n != b.n:
        raise ValueError(f"paired estimates need the same streams, got {a.n} and {b.n} values")
    return Estimate.of(np.asarray(a.values) - np.asarray(b.values), a.level)
