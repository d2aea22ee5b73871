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


SYNTHETIC_FAMILIES: dict[str, type[_Family]] = {
    "linear": LinearTask,
    "nonlinear": NonlinearTask,
    "sum-sign": SumSignTask,
}


def make_family(name: str, n_features: int, n_classes: int | None = None, **options: Any) -> TaskFamily:
    """A family spec by name (``linear``, ``nonlinear``, ``sum-sign``).

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
