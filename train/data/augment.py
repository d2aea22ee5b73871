"""Task augmentations applied per episode (docs/model.md §6.5).

Meta-training on many variants of one dataset makes the learned algorithm
general: the public code trains half its workers on MNIST under a random
projection; inputs resized to 32-196 dims let V_M train small and run at 784.

An augmentation *spec* is a small frozen dataclass. ``spec.draw(rng, A, B)``
draws the concrete transform of one episode (an ``EpisodeTransform``: a map
of the features and a map of the labels); a list of specs is drawn in order
and composed by ``draw_episode``. All randomness comes from the ``rng`` the
caller passes, so the same seed gives the same episode.

Specs:
- ``RandomProjection(n_out, pool_size=None)``: x -> x Proj with Proj [A, A'] ~ N(0, 1/A),
  a fresh P per episode or one of a fixed pool of K matrices.
- ``Resize(size)``: 28x28 images -> size x size by area averaging.
- ``PixelPermutation()``: a random permutation of the A features.
- ``ClassSubset(k)``: keep k of the B classes, relabelled 0..k-1 in increasing
  order of the original label; examples of other classes are dropped.
- ``LabelPermutation()``: a random permutation of the B labels.
- ``ClassContrast(max_factor, pivot)``: every class gets its own contrast,
  x -> pivot + f_y (x - pivot) with f_y log-uniform in [1/max_factor,
  max_factor]; with pivot = the standardised value of a black pixel this
  scales the pixels of class y by f_y (classes that differ in brightness, as
  Fashion-MNIST's do). It must come first: it needs the original labels.

Dimension letters (docs/model.md §8): E examples, A features in, A' features out, B classes.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

FeatureOp = Callable[[np.ndarray], np.ndarray]  # [E, A_in] -> [E, A_out]


@dataclass(frozen=True, eq=False)
class EpisodeTransform:
    """The augmentation of one episode, drawn from specs.

    Attributes:
        n_features_in: A of the inputs it takes.
        n_features: A of the features it returns.
        label_map: int64 [B_in]: new label of each old label, -1 = dropped.
        n_classes: B of the labels it returns.
        ops: feature maps applied in order, each float32 [E, A_i] -> [E, A_i+1].
        label_gain: float32 [B_in] or None: a contrast per original label,
            applied before ``ops`` around ``pivot`` (``ClassContrast``).
        pivot: the value the contrast keeps fixed.
    """

    n_features_in: int
    n_features: int
    label_map: np.ndarray = field(repr=False)
    n_classes: int
    ops: tuple[FeatureOp, ...] = field(default=(), repr=False)
    label_gain: np.ndarray | None = field(default=None, repr=False)
    pivot: float = 0.0

    @property
    def n_classes_in(self) -> int:
        return len(self.label_map)

    @property
    def drops_classes(self) -> bool:
        return bool((self.label_map < 0).any())

    def keeps(self, y: np.ndarray) -> np.ndarray:
        """bool [E]: which examples survive the label map."""
        return self.label_map[y] >= 0

    def apply_x(self, x: np.ndarray, y: np.ndarray | None = None) -> np.ndarray:
        """float32 [E, A_in] (and the original labels int64 [E], needed with a ``label_gain``) -> float32 [E, A]."""
        if x.shape[-1] != self.n_features_in:
            raise ValueError(f"features have A = {x.shape[-1]}, the transform expects {self.n_features_in}")
        if self.label_gain is not None:
            if y is None:
                raise ValueError("this transform changes each class's contrast: apply_x needs the labels")
            gain = self.label_gain[y][:, None]  # [E, 1]
            x = self.pivot + gain * (x - self.pivot)
        for op in self.ops:
            x = op(x)
        return x.astype(np.float32, copy=False)

    def apply_y(self, y: np.ndarray) -> np.ndarray:
        """int64 [E] -> int64 [E]; every label must be one that is kept."""
        mapped = self.label_map[y]
        if (mapped < 0).any():
            raise ValueError("labels of dropped classes reached apply_y; filter with keeps() first")
        return mapped

    def then(self, other: EpisodeTransform) -> EpisodeTransform:
        """This transform followed by ``other``."""
        if other.n_features_in != self.n_features or other.n_classes_in != self.n_classes:
            raise ValueError(
                f"cannot compose: first gives A={self.n_features}, B={self.n_classes}; "
                f"second takes A={other.n_features_in}, B={other.n_classes_in}"
            )
        gain, pivot = self.label_gain, self.pivot
        if other.label_gain is not None:
            identity = not self.ops and np.array_equal(self.label_map, np.arange(self.n_classes_in))
            if gain is not None or not identity:
                raise ValueError("a per-class contrast must come first among the augmentations (it reads the labels)")
            gain, pivot = other.label_gain, other.pivot
        kept = self.label_map >= 0
        label_map = np.where(kept, other.label_map[np.where(kept, self.label_map, 0)], -1)
        return EpisodeTransform(
            self.n_features_in, other.n_features, label_map, other.n_classes, self.ops + other.ops, gain, pivot
        )


def identity_transform(n_features: int, n_classes: int) -> EpisodeTransform:
    """The transform that changes nothing."""
    return EpisodeTransform(n_features, n_features, np.arange(n_classes, dtype=np.int64), n_classes)


class Augmentation(Protocol):
    """A spec: draws one episode's transform for inputs of A features and B classes."""

    def draw(self, rng: np.random.Generator, n_features: int, n_classes: int) -> EpisodeTransform: ...


def _matmul(x: np.ndarray, *, matrix: np.ndarray) -> np.ndarray:
    return x @ matrix  # [E, A] @ [A, A'] -> [E, A']


def _gather(x: np.ndarray, *, index: np.ndarray) -> np.ndarray:
    return x[:, index]  # [E, A] -> [E, A]


def _area_resize(x: np.ndarray, *, weights: np.ndarray, in_size: int) -> np.ndarray:
    images = x.reshape(len(x), in_size, in_size)  # [E, A] -> [E, H, W]
    out = weights @ images @ weights.T  # [s, H] @ [E, H, W] @ [W, s] -> [E, s, s]
    return out.reshape(len(x), -1)  # [E, s * s]


@functools.lru_cache(maxsize=64)
def _pool_matrix(n_in: int, n_out: int, pool_seed: int, index: int) -> np.ndarray:
    """Matrix ``index`` of a fixed pool: float32 [A, A'] ~ N(0, 1/A), read-only."""
    rng = np.random.default_rng([pool_seed, n_in, n_out, index])
    matrix = rng.standard_normal((n_in, n_out), dtype=np.float32) / np.float32(np.sqrt(n_in))
    matrix.setflags(write=False)
    return matrix


@dataclass(frozen=True)
class RandomProjection:
    """x -> x Proj with Proj float32 [A, A'], entries N(0, 1/A).

    With that scale E[(x P)_d^2] = |x|^2 / A: standardised inputs give
    projected features of about unit variance, whatever A and A'.

    Attributes:
        n_out: A'.
        pool_size: None = a fresh P per episode; K = P is one of K fixed
            matrices (chosen per episode), K = 1 is the reference's fixed projection.
        pool_seed: seeds the pool (matrix k depends only on pool_seed, A, A' and k).
    """

    n_out: int
    pool_size: int | None = None
    pool_seed: int = 0

    def __post_init__(self) -> None:
        if self.n_out < 1:
            raise ValueError(f"RandomProjection: n_out must be >= 1, got {self.n_out}")
        if self.pool_size is not None and self.pool_size < 1:
            raise ValueError(f"RandomProjection: pool_size must be >= 1 or None, got {self.pool_size}")

    def draw(self, rng: np.random.Generator, n_features: int, n_classes: int) -> EpisodeTransform:
        if self.pool_size is None:
            matrix = rng.standard_normal((n_features, self.n_out), dtype=np.float32) / np.float32(np.sqrt(n_features))
        else:
            matrix = _pool_matrix(n_features, self.n_out, self.pool_seed, int(rng.integers(self.pool_size)))
        op = functools.partial(_matmul, matrix=matrix)
        return EpisodeTransform(n_features, self.n_out, np.arange(n_classes, dtype=np.int64), n_classes, (op,))


def area_weights(in_size: int, out_size: int) -> np.ndarray:
    """float32 [out, in]: the share of input pixel j in output pixel i along one axis; rows sum to 1.

    Output pixel i covers [i, i + 1) * in / out of the input axis; its value is
    the mean of the input over that interval (exact area averaging, also for
    sizes that do not divide ``in_size``).
    """
    edges = np.arange(out_size + 1) * (in_size / out_size)
    lo, hi = edges[:-1, None], edges[1:, None]  # [out, 1]
    pixel = np.arange(in_size)[None, :]  # [1, in]
    overlap = np.clip(np.minimum(hi, pixel + 1) - np.maximum(lo, pixel), 0.0, None)  # [out, in]
    return (overlap / (in_size / out_size)).astype(np.float32)


@dataclass(frozen=True)
class Resize:
    """Square images in_size x in_size -> size x size by area averaging (A = in_size^2 -> size^2)."""

    size: int
    in_size: int = 28

    def __post_init__(self) -> None:
        if not self.size >= 1:
            raise ValueError(f"Resize: size must be >= 1, got {self.size}")

    def draw(self, rng: np.random.Generator, n_features: int, n_classes: int) -> EpisodeTransform:
        del rng  # deterministic
        if n_features != self.in_size**2:
            raise ValueError(
                f"Resize expects {self.in_size}x{self.in_size} = {self.in_size**2} features, got {n_features}"
            )
        op = functools.partial(_area_resize, weights=area_weights(self.in_size, self.size), in_size=self.in_size)
        return EpisodeTransform(n_features, self.size**2, np.arange(n_classes, dtype=np.int64), n_classes, (op,))


@dataclass(frozen=True)
class PixelPermutation:
    """A random permutation of the features, fresh per episode."""

    def draw(self, rng: np.random.Generator, n_features: int, n_classes: int) -> EpisodeTransform:
        op = functools.partial(_gather, index=rng.permutation(n_features))
        return EpisodeTransform(n_features, n_features, np.arange(n_classes, dtype=np.int64), n_classes, (op,))


@dataclass(frozen=True)
class ClassSubset:
    """Keep k random classes of B, relabelled 0..k-1 in increasing order of the original label."""

    k: int

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"ClassSubset: k must be >= 1, got {self.k}")

    def draw(self, rng: np.random.Generator, n_features: int, n_classes: int) -> EpisodeTransform:
        if self.k > n_classes:
            raise ValueError(f"ClassSubset: k = {self.k} but the task has only {n_classes} classes")
        chosen = np.sort(rng.choice(n_classes, size=self.k, replace=False))
        label_map = np.full(n_classes, -1, dtype=np.int64)
        label_map[chosen] = np.arange(self.k)
        return EpisodeTransform(n_features, n_features, label_map, self.k)


@dataclass(frozen=True)
class ClassContrast:
    """Each class's inputs scaled around ``pivot`` by its own factor, log-uniform in [1/max_factor, max_factor].

    Attributes:
        max_factor: the largest factor (>= 1; 1 changes nothing).
        pivot: the value kept fixed; the standardised value of a black pixel,
            (0 - mean) / std for the dataset's scalars, makes it scale the pixels.
    """

    max_factor: float
    pivot: float

    def __post_init__(self) -> None:
        if not (np.isfinite(self.max_factor) and self.max_factor >= 1.0):
            raise ValueError(f"max_factor must be a finite number >= 1, got {self.max_factor}")

    def draw(self, rng: np.random.Generator, n_features: int, n_classes: int) -> EpisodeTransform:
        log_f = np.log(self.max_factor)
        gain = np.exp(rng.uniform(-log_f, log_f, size=n_classes)).astype(np.float32)  # [B]
        labels = np.arange(n_classes, dtype=np.int64)
        return EpisodeTransform(n_features, n_features, labels, n_classes, label_gain=gain, pivot=self.pivot)


@dataclass(frozen=True)
class LabelPermutation:
    """A random permutation of the B labels, fresh per episode (label y becomes perm[y])."""

    def draw(self, rng: np.random.Generator, n_features: int, n_classes: int) -> EpisodeTransform:
        return EpisodeTransform(n_features, n_features, rng.permutation(n_classes).astype(np.int64), n_classes)


def draw_episode(
    augment: Sequence[Augmentation], rng: np.random.Generator, n_features: int, n_classes: int
) -> EpisodeTransform:
    """Draw every spec in order (each sees the sizes the previous ones produce) and compose them."""
    transform = identity_transform(n_features, n_classes)
    for spec in augment:
        transform = transform.then(spec.draw(rng, transform.n_features, transform.n_classes))
    return transform


def apply_augmentations(
    x: np.ndarray,
    y: np.ndarray,
    *,
    n_classes: int,
    augment: Sequence[Augmentation],
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Draw one episode's transform and apply it to a whole set of examples.

    Args:
        x: float32 [E, A].
        y: int64 [E] in [0, n_classes).
        n_classes: B.
        augment: the specs, drawn in order.
        rng: the episode's generator.

    Returns:
        x float32 [E', A'], y int64 [E'] and B', where E' < E when a class
        subset drops examples.
    """
    transform = draw_episode(augment, rng, x.shape[-1], n_classes)
    keep = transform.keeps(y)
    x, y = x[keep], y[keep]
    return transform.apply_x(np.asarray(x, dtype=np.float32), y), transform.apply_y(y), transform.n_classes
