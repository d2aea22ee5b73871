"""Reproducible streams of examples for meta-training and meta-test (docs/model.md §6 and §7).

A *stream* is one task's sequence of T examples, seen once, in order, by a
fresh learner. ``sample_streams`` draws S streams from a labelled set;
``sample_synthetic_streams`` draws them from a synthetic family (a fresh
teacher per stream); ``EpisodeSampler`` gives a new batch of streams for
every meta-training iteration, a pure function of (seed, iteration) so a
resumed run sees the same data.

Randomness: the master seed's ``np.random.SeedSequence`` is spawned into one
child per stream; stream s uses only its own generator, in a fixed order
(augmentation draw, then examples). So the same seed gives exactly the same
streams, and the first S streams of a larger batch equal the S streams of a
smaller one with the same seed.

Per stream, from a labelled set:
1. draw the episode's augmentation (``augment.draw_episode``);
2. draw T examples among those whose class the augmentation keeps, without
   replacement; when T exceeds that pool, in successive full passes (each a
   fresh permutation), so no example repeats more than needed;
3. scale uint8 pixels to [0, 1], standardise with one scalar mean / std
   (the reference uses the MNIST values for every dataset), then apply the
   augmentation's feature maps (so a projection sees centred inputs).

Dimension letters: T steps, S streams, I examples (instances) of a dataset, A features, B classes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..seeds import EPISODE_KEY
from .augment import Augmentation, EpisodeTransform, draw_episode
from .datasets import Dataset, load_dataset
from .synthetic import TaskFamily

MNIST_MEAN = 0.1307
MNIST_STD = 0.3081
# Scalar pixel statistics (pixels in [0, 1]) of the full training sets. The
# reference standardises every dataset with the MNIST pair.
PIXEL_STATS: dict[str, tuple[float, float]] = {
    "mnist": (MNIST_MEAN, MNIST_STD),
    "fashion-mnist": (0.2860, 0.3530),
}

Seed = int | np.random.SeedSequence


@dataclass(frozen=True, eq=False)
class Streams:
    """S streams of T examples.

    Attributes:
        x: float32 [T, S, A].
        y: int64 [T, S] in [0, n_classes).
        n_classes: B.
    """

    x: np.ndarray = field(repr=False)
    y: np.ndarray = field(repr=False)
    n_classes: int

    def __post_init__(self) -> None:
        if self.x.ndim != 3 or self.y.shape != self.x.shape[:2]:
            raise ValueError(f"Streams need x [T, S, A] and y [T, S], got {self.x.shape} and {self.y.shape}")

    @property
    def n_steps(self) -> int:
        return self.x.shape[0]

    @property
    def n_streams(self) -> int:
        return self.x.shape[1]

    @property
    def n_features(self) -> int:
        return self.x.shape[2]

    def __repr__(self) -> str:
        return (
            f"Streams(T={self.n_steps}, S={self.n_streams}, A={self.n_features}, "
            f"n_classes={self.n_classes}, x={self.x.dtype}, y={self.y.dtype})"
        )


def _seed_sequence(seed: Seed) -> np.random.SeedSequence:
    """A fresh SeedSequence equal to ``seed`` (so spawning never depends on earlier spawns)."""
    if isinstance(seed, np.random.SeedSequence):
        return np.random.SeedSequence(seed.entropy, spawn_key=seed.spawn_key, pool_size=seed.pool_size)
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative int or a SeedSequence, got {seed!r}")
    return np.random.SeedSequence(int(seed))


def stream_generators(seed: Seed, n_streams: int) -> list[np.random.Generator]:
    """One independent generator per stream, spawned from the master seed."""
    return [np.random.default_rng(child) for child in _seed_sequence(seed).spawn(n_streams)]


def _draw_indices(rng: np.random.Generator, pool: np.ndarray, n: int) -> np.ndarray:
    """``n`` entries of ``pool``: without replacement, in full passes when ``n`` > len(pool)."""
    n_passes, rest = divmod(n, len(pool))
    parts = [rng.permutation(pool) for _ in range(n_passes)]
    if rest:
        parts.append(rng.choice(pool, size=rest, replace=False))
    return np.concatenate(parts)


def _check_sizes(n_streams: int, n_steps: int) -> None:
    if n_streams < 1 or n_steps < 1:
        raise ValueError(f"n_streams and n_steps must be >= 1, got {n_streams} and {n_steps}")


class _Collector:
    """Writes each stream into preallocated x float32 [T, S, A] and y int64 [T, S]."""

    def __init__(self, n_steps: int, n_streams: int) -> None:
        self.shape = (n_steps, n_streams)
        self.x: np.ndarray | None = None
        self.y = np.empty(self.shape, dtype=np.int64)
        self.n_classes = 0

    def put(self, s: int, x: np.ndarray, y: np.ndarray, transform: EpisodeTransform) -> None:
        """Stream s: x [T, A], y [T]."""
        if self.x is None:  # A and B are known once the first transform is drawn
            self.x = np.empty((*self.shape, transform.n_features), dtype=np.float32)
            self.n_classes = transform.n_classes
        self.x[:, s] = x
        self.y[:, s] = y

    def streams(self) -> Streams:
        assert self.x is not None
        return Streams(x=self.x, y=self.y, n_classes=self.n_classes)


def sample_streams(
    features: np.ndarray,
    labels: np.ndarray,
    *,
    n_streams: int,
    n_steps: int,
    seed: Seed,
    augment: Sequence[Augmentation] = (),
    mean: float | None = MNIST_MEAN,
    std: float | None = MNIST_STD,
    n_classes: int | None = None,
) -> Streams:
    """Draw S reproducible streams of T examples from a labelled set.

    Args:
        features: [I, A] float in [0, 1] (``Dataset.features``), or uint8
            images [I, rows, cols] / [I, A] (``Dataset.images``), scaled to [0, 1]
            here, only for the drawn rows.
        labels: int [I] in [0, n_classes).
        n_streams: S.
        n_steps: T.
        seed: master seed (int or SeedSequence).
        augment: augmentation specs, drawn per stream.
        mean: subtracted from every feature (None: not centred).
        std: every feature is divided by it (None: not scaled).
        n_classes: B (default: max label + 1).

    Returns:
        Streams with x float32 [T, S, A'] and y int64 [T, S]; A' and B as the
        augmentations leave them.
    """
    _check_sizes(n_streams, n_steps)
    features = np.asarray(features)
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) != len(features) or len(labels) == 0:
        raise ValueError(f"need labels [I] matching features [I, ...], got {labels.shape} and {features.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers, got {labels.dtype}")
    flat = features.reshape(len(features), -1)  # [N, A] (a view)
    n_classes = int(labels.max()) + 1 if n_classes is None else n_classes
    if labels.min() < 0 or labels.max() >= n_classes:
        raise ValueError(f"labels must lie in [0, {n_classes}), found {labels.min()}..{labels.max()}")
    if std is not None and not std > 0:
        raise ValueError(f"std must be > 0, got {std}")
    scale = np.float32(1 / 255) if flat.dtype == np.uint8 else None

    out = _Collector(n_steps, n_streams)
    for s, rng in enumerate(stream_generators(seed, n_streams)):
        transform = draw_episode(augment, rng, flat.shape[1], n_classes)
        pool = np.flatnonzero(transform.keeps(labels)) if transform.drops_classes else np.arange(len(labels))
        if len(pool) == 0:
            raise ValueError("the augmentation keeps no example of this set (class subset of absent classes)")
        index = _draw_indices(rng, pool, n_steps)
        x = flat[index].astype(np.float32, copy=False)  # [T, A], a fresh array (fancy indexing)
        if scale is not None:
            x *= scale
        if mean is not None:
            x -= np.float32(mean)
        if std is not None:
            x /= np.float32(std)
        out.put(s, transform.apply_x(x, labels[index]), transform.apply_y(labels[index]), transform)
    return out.streams()


def sample_synthetic_streams(
    family: TaskFamily,
    *,
    n_streams: int,
    n_steps: int,
    seed: Seed,
    augment: Sequence[Augmentation] = (),
) -> Streams:
    """Draw S reproducible streams of T examples, each from a fresh task of ``family``.

    Inputs are drawn standardised (N(0, x_std^2)), so no mean / std applies.
    With a class subset the stream's teacher is sampled until T kept examples
    are found.

    Returns:
        Streams with x float32 [T, S, A'] and y int64 [T, S].
    """
    _check_sizes(n_streams, n_steps)
    out = _Collector(n_steps, n_streams)
    for s, rng in enumerate(stream_generators(seed, n_streams)):
        transform = draw_episode(augment, rng, family.n_features, family.n_classes)
        teacher = family.draw(rng)
        x, y = teacher.sample(n_steps, rng)
        if transform.drops_classes:
            kept_x, kept_y, n_kept = [], [], 0
            for _ in range(1000):
                keep = transform.keeps(y)
                kept_x.append(x[keep])
                kept_y.append(y[keep])
                n_kept += int(keep.sum())
                if n_kept >= n_steps:
                    break
                x, y = teacher.sample(n_steps, rng)
            else:
                raise ValueError("the teacher almost never produces the classes the class subset keeps")
            x, y = np.concatenate(kept_x)[:n_steps], np.concatenate(kept_y)[:n_steps]
        out.put(s, transform.apply_x(x, y), transform.apply_y(y), transform)
    return out.streams()


class EpisodeSampler:
    """A new batch of S episodes (streams of T steps) per meta-training iteration.

    ``episodes(i)`` depends only on (seed, i) and the configuration, so a run
    resumed at iteration i sees exactly the data it would have seen.

    Args:
        source: a ``Dataset`` (its images, standardised with mean / std) or a
            synthetic family spec (``LinearTask`` etc.; already standardised,
            mean / std do not apply).
        n_streams: S.
        n_steps: T.
        seed: the run's master seed.
        augment: augmentation specs, drawn per episode.
        mean, std: the scalar standardisation of dataset pixels.
    """

    def __init__(
        self,
        source: Dataset | TaskFamily,
        *,
        n_streams: int,
        n_steps: int,
        seed: int,
        augment: Sequence[Augmentation] = (),
        mean: float | None = MNIST_MEAN,
        std: float | None = MNIST_STD,
    ) -> None:
        _check_sizes(n_streams, n_steps)
        _seed_sequence(seed)  # validates
        self.source = source
        self.n_streams = n_streams
        self.n_steps = n_steps
        self.seed = seed
        self.augment = tuple(augment)
        self.mean = mean
        self.std = std

    def seed_of(self, iteration: int) -> np.random.SeedSequence:
        """The seed of iteration ``iteration`` (a child of the master seed)."""
        if iteration < 0:
            raise ValueError(f"iteration must be >= 0, got {iteration}")
        return np.random.SeedSequence(self.seed, spawn_key=(EPISODE_KEY, iteration))

    def episodes(self, iteration: int) -> Streams:
        """The batch of iteration ``iteration``: x float32 [T, S, A], y int64 [T, S]."""
        seed = self.seed_of(iteration)
        if isinstance(self.source, Dataset):
            return sample_streams(
                self.source.images,
                self.source.labels,
                n_streams=self.n_streams,
                n_steps=self.n_steps,
                seed=seed,
                augment=self.augment,
                mean=self.mean,
                std=self.std,
                n_classes=self.source.n_classes,
            )
        return sample_synthetic_streams(
            self.source, n_streams=self.n_streams, n_steps=self.n_steps, seed=seed, augment=self.augment
        )

    def iterate(self, start: int = 0) -> Iterator[Streams]:
        """``episodes(start)``, ``episodes(start + 1)``, ... without end."""
        iteration = start
        while True:
            yield self.episodes(iteration)
            iteration += 1

    def __iter__(self) -> Iterator[Streams]:
        return self.iterate(0)

    def __repr__(self) -> str:
        source = (
            f"Dataset({self.source.name!r}, {self.source.split!r})" if isinstance(self.source, Dataset) else self.source
        )
        return (
            f"EpisodeSampler(source={source}, n_streams={self.n_streams}, n_steps={self.n_steps}, "
            f"seed={self.seed}, augment={self.augment})"
        )


def dataset_streams(
    dataset: str,
    split: str,
    *,
    n_steps: int,
    n_streams: int,
    seed: int | np.random.SeedSequence,
    augment: Sequence[Augmentation] = (),
    mean: float = MNIST_MEAN,
    std: float = MNIST_STD,
    data_dir: str | os.PathLike[str] | None = None,
) -> Streams:
    """S streams of T examples of a named dataset's split (``sample_streams`` after ``load_dataset``)."""
    data = load_dataset(dataset, split, data_dir=data_dir)
    return sample_streams(data.images, data.labels, n_streams=n_streams, n_steps=n_steps, seed=seed,
                          augment=augment, mean=mean, std=std, n_classes=data.n_classes)  # fmt: skip
