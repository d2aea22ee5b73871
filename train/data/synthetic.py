"""Synthetic task families for meta-training at any size (docs/model.md §6.5).

Because V_M does not depend on A or B, meta-training may use tasks of any
input size and class count. A *family* is a frozen spec (sizes and
hyper-parameters); ``family.draw(rng)`` draws one *task* (a teacher: a fixed
labelling function), and ``teacher.sample(n, rng)`` draws its examples:
inputs x ~ N(0, x_std^2) and the teacher's labels.

Families:
- ``LinearTask``: random W [A, B], y = argmax(x W).
- ``NonlinearTask``: a random one-hidden-layer tanh network,
  y = argmax(tanh(x W1) W2), W1 [A, H] scaled so the pre-activations have std
  ``gain``, W2 [H, B].
- ``SumSignTask``: the reference's binary task, y = [sum(x) > 0].
- ``TabularTask``: tables like real ones (issue 10): each feature Gaussian,
  heavy-tailed (Student t), skewed (log-normal) or a rare 0/1 indicator,
  z-scored by its population moments; a sparse linear teacher plus random,
  often very unequal class priors and some label noise.

Dimension letters (docs/model.md §8): I examples, A features, H hidden units of a teacher, B classes.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

LabelFn = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True, eq=False)
class Teacher:
    """One drawn task: inputs x ~ N(0, x_std^2) [I, A] labelled by ``label_fn`` into [0, B)."""

    n_features: int
    n_classes: int
    x_std: float
    label_fn: LabelFn = field(repr=False)

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``n`` examples: features float32 [I, A], labels int64 [I]."""
        x = rng.standard_normal((n, self.n_features), dtype=np.float32)
        if self.x_std != 1.0:
            x *= np.float32(self.x_std)
        return x, self.label_fn(x).astype(np.int64)


class TaskFamily(Protocol):
    """What the sampler needs from a family spec."""

    @property
    def n_features(self) -> int: ...

    @property
    def n_classes(self) -> int: ...

    def draw(self, rng: np.random.Generator) -> Teacher: ...

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]: ...


def _argmax_linear(x: np.ndarray, *, w: np.ndarray) -> np.ndarray:
    return np.argmax(x @ w, axis=1)  # [I, A] @ [A, B] -> [I]


def _argmax_tanh_net(x: np.ndarray, *, w1: np.ndarray, w2: np.ndarray) -> np.ndarray:
    return np.argmax(np.tanh(x @ w1) @ w2, axis=1)  # [I, A] -> [I, H] -> [I, B] -> [I]


def _sum_sign(x: np.ndarray) -> np.ndarray:
    return (x.sum(axis=1) > 0).astype(np.int64)  # [I, A] -> [I]


class _Family:
    """Shared checks and ``sample`` (draw a teacher, then its examples) for the family specs."""

    n_features: int
    n_classes: int
    x_std: float

    def _check(self) -> None:
        if self.n_features < 1:
            raise ValueError(f"{type(self).__name__}: n_features must be >= 1, got {self.n_features}")
        if self.n_classes < 2:
            raise ValueError(f"{type(self).__name__}: n_classes must be >= 2, got {self.n_classes}")
        if not self.x_std > 0:
            raise ValueError(f"{type(self).__name__}: x_std must be > 0, got {self.x_std}")

    def draw(self, rng: np.random.Generator) -> Teacher:
        raise NotImplementedError

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """A fresh task and ``n`` of its examples: features float32 [I, A], labels int64 [I]."""
        return self.draw(rng).sample(n, rng)


@dataclass(frozen=True)
class LinearTask(_Family):
    """Random linear classification: W ~ N(0, 1) [A, B], y = argmax(x W)."""

    n_features: int
    n_classes: int
    x_std: float = 1.0

    def __post_init__(self) -> None:
        self._check()

    def draw(self, rng: np.random.Generator) -> Teacher:
        w = rng.standard_normal((self.n_features, self.n_classes), dtype=np.float32)
        return Teacher(self.n_features, self.n_classes, self.x_std, functools.partial(_argmax_linear, w=w))


@dataclass(frozen=True)
class NonlinearTask(_Family):
    """Random nonlinear classification by a tanh teacher network.

    W1 ~ N(0, (gain / (x_std sqrt(A)))^2) [A, H] so each hidden pre-activation
    has std ``gain`` (2 puts tanh well into its nonlinear range);
    W2 ~ N(0, 1/H) [H, B]; y = argmax(tanh(x W1) W2).
    """

    n_features: int
    n_classes: int
    n_hidden: int = 32
    gain: float = 2.0
    x_std: float = 1.0

    def __post_init__(self) -> None:
        self._check()
        if self.n_hidden < 1:
            raise ValueError(f"NonlinearTask: n_hidden must be >= 1, got {self.n_hidden}")

    def draw(self, rng: np.random.Generator) -> Teacher:
        scale1 = self.gain / (self.x_std * np.sqrt(self.n_features))
        w1 = rng.standard_normal((self.n_features, self.n_hidden), dtype=np.float32) * np.float32(scale1)
        w2 = rng.standard_normal((self.n_hidden, self.n_classes), dtype=np.float32) / np.float32(np.sqrt(self.n_hidden))
        return Teacher(self.n_features, self.n_classes, self.x_std, functools.partial(_argmax_tanh_net, w1=w1, w2=w2))


@dataclass(frozen=True)
class SumSignTask(_Family):
    """The reference's binary task: y = 1 if sum(x) > 0 else 0 (B = 2; the teacher has no parameters)."""

    n_features: int
    x_std: float = 1.0
    n_classes: int = field(default=2, init=False)

    def __post_init__(self) -> None:
        self._check()

    def draw(self, rng: np.random.Generator) -> Teacher:
        del rng  # one fixed teacher; augmentations make it vary
        return Teacher(self.n_features, 2, self.x_std, _sum_sign)


@dataclass(frozen=True, eq=False)
class TabularTeacher(Teacher):
    """A drawn table: per-feature kinds and moments, a sparse linear teacher, class priors, label noise.

    ``sample`` draws raw features by kind (0 Gaussian, 1 Student t with ``df``,
    2 log-normal, 3 0/1 indicator with rate ``rate[a]``), z-scores them with the
    population moments ``mean``, ``std`` [A] (estimated from 4,096 rows when the
    table was drawn), labels them y = argmax(z W + log prior) and replaces a
    share ``noise`` of the labels by uniform ones.
    """

    kinds: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64), repr=False)
    rate: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32), repr=False)
    mean: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32), repr=False)
    std: np.ndarray = field(default_factory=lambda: np.ones(0, np.float32), repr=False)
    df: float = 3.0
    noise: float = 0.0

    def raw(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """[I, A] features before z-scoring."""
        return _raw_features(self.kinds, self.rate, self.df, n, rng)

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``n`` rows: z-scored features float32 [I, A], labels int64 [I]."""
        z = (self.raw(n, rng) - self.mean) / self.std
        y = self.label_fn(z).astype(np.int64)
        flip = rng.random(n) < self.noise
        y[flip] = rng.integers(0, self.n_classes, int(flip.sum()))
        return z.astype(np.float32), y


def _raw_features(kinds: np.ndarray, rate: np.ndarray, df: float, n: int, rng: np.random.Generator) -> np.ndarray:
    """[I, A] float32 features by kind (0 Gaussian, 1 Student t, 2 log-normal, 3 0/1 with rate[a])."""
    a = len(kinds)
    gauss = rng.standard_normal((n, a))
    heavy = rng.standard_t(df, size=(n, a))
    skew = np.exp(rng.standard_normal((n, a)))
    rare = (rng.random((n, a)) < rate).astype(np.float64)
    return np.choose(kinds, [gauss, heavy, skew, rare]).astype(np.float32)


def _argmax_with_prior(x: np.ndarray, *, w: np.ndarray, log_prior: np.ndarray) -> np.ndarray:
    return np.argmax(x @ w + log_prior, axis=1)  # [I, A] @ [A, B] + [B] -> [I]


@dataclass(frozen=True)
class TabularTask(_Family):
    """Random tables with the awkward features of real ones (issue 10's suite: 4-100 features, 2-26 classes).

    Each feature is Gaussian, Student t (``df``: heavy tails and outliers),
    log-normal (skewed) or a rare 0/1 indicator (rate U(0.01, 0.1)), with
    probabilities ``kinds`` (4 weights); it is z-scored by its population
    moments, as the suite z-scores each table. A share ``relevant`` of the
    features carries the label: W [A, B] ~ N(0, 1) on those rows, scaled by
    ``gain / sqrt(relevant rows)``. Class priors pi ~ Dirichlet(``concentration``)
    (small: a few classes dominate) enter as log pi; a share ``noise`` of the
    labels is uniform.
    """

    n_features: int
    n_classes: int
    kinds: tuple[float, float, float, float] = (0.35, 0.3, 0.15, 0.2)
    df: float = 3.0
    relevant: float = 0.3
    gain: float = 2.0
    concentration: float = 0.5
    noise: float = 0.05
    x_std: float = 1.0

    def __post_init__(self) -> None:
        self._check()
        object.__setattr__(self, "kinds", tuple(float(k) for k in self.kinds))
        if len(self.kinds) != 4 or min(self.kinds) < 0 or sum(self.kinds) <= 0:
            raise ValueError(f"TabularTask: kinds must be 4 weights >= 0 with a positive sum, got {self.kinds}")
        if not (self.df > 2 and 0 < self.relevant <= 1 and self.gain > 0 and self.concentration > 0):
            raise ValueError("TabularTask: need df > 2, 0 < relevant <= 1, gain > 0 and concentration > 0")
        if not 0 <= self.noise < 1:
            raise ValueError(f"TabularTask: noise must be in [0, 1), got {self.noise}")

    def draw(self, rng: np.random.Generator) -> TabularTeacher:
        a, b = self.n_features, self.n_classes
        p = np.asarray(self.kinds) / sum(self.kinds)
        kinds = rng.choice(4, size=a, p=p)
        rate = rng.uniform(0.01, 0.1, a).astype(np.float32)
        ref = _raw_features(kinds, rate, self.df, 4096, rng).astype(np.float64)
        mean, std = ref.mean(0), ref.std(0)
        std[std < 1e-6] = 1.0  # an indicator that never fired in the reference rows
        n_rel = max(1, round(self.relevant * a))
        w = np.zeros((a, b), np.float32)
        rows = rng.choice(a, n_rel, replace=False)
        w[rows] = rng.standard_normal((n_rel, b)) * (self.gain / np.sqrt(n_rel))
        log_prior = np.log(rng.dirichlet(np.full(b, self.concentration)) + 1e-3).astype(np.float32)
        label_fn = functools.partial(_argmax_with_prior, w=w, log_prior=log_prior)
        return TabularTeacher(
            a,
            b,
            1.0,
            label_fn,
            kinds=kinds,
            rate=rate,
            mean=mean.astype(np.float32),
            std=std.astype(np.float32),
            df=self.df,
            noise=self.noise,
        )


SYNTHETIC_FAMILIES: dict[str, type[_Family]] = {
    "linear": LinearTask,
    "nonlinear": NonlinearTask,
    "sum-sign": SumSignTask,
    "tabular": TabularTask,
}


def make_family(name: str, n_features: int, n_classes: int | None = None, **options: Any) -> TaskFamily:
    """A family spec by name (``linear``, ``nonlinear``, ``sum-sign``, ``tabular``).

    Args:
        name: the family.
        n_features: A.
        n_classes: B (required except for ``sum-sign``, whose B is 2).
        options: the family's other fields (``x_std``, ``n_hidden``, ``gain``);
            unknown ones are a TypeError.
    """
    key = name.strip().lower().replace("_", "-")
    if key not in SYNTHETIC_FAMILIES:
        raise ValueError(f"unknown synthetic family {name!r}; known: {', '.join(sorted(SYNTHETIC_FAMILIES))}")
    cls = SYNTHETIC_FAMILIES[key]
    if cls is SumSignTask:
        if n_classes not in (None, 2):
            raise ValueError(f"sum-sign is binary: n_classes must be 2 or None, got {n_classes}")
        return SumSignTask(n_features, **options)
    if n_classes is None:
        raise ValueError(f"synthetic family {key!r} needs n_classes")
    return cls(n_features, n_classes, **options)  # type: ignore[call-arg]
