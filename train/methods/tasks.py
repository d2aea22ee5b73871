"""The task mix meta-training draws its episodes from (docs/model.md §6.5).

A meta-training episode is one online classification stream: a fresh learner
sees T examples of one task once, in order. The mix is built from the data
layer: named datasets (``vsml_train.data.datasets``), the synthetic task
families and the augmentations of ``vsml_train.data.sampler`` (random
projections, resizes, class subsets, label permutations).

Every stream is a pure function of (seed, iteration, stream index): stream j of
iteration i comes from block ``j // block`` of that iteration, sampled with its
own seed. So any slice of streams can be drawn without drawing the others
(one process of a distributed run draws only its members' streams), a resumed
run draws exactly the streams the interrupted run would have, and the sampler
"position" is just the iteration number.

Training on small projected inputs and evaluating at full size is one flag:
``project_dim`` (e.g. 32) only affects these training tasks; the V_M runs on
any grid, and meta-test always sees the raw 784 inputs.

Dimension letters: T steps, S streams, E examples per step, A inputs, B
classes, N state size.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor

from ..model.config import VSMLConfig
from ..model.state import init_noise
from ..seeds import BLOCKS_PER_ITERATION, PROJECT, SOURCE, derive_seed


@dataclass(frozen=True)
class Episodes:
    """A batch of S online streams of one task shape.

    Attributes:
        x: [T, S, E, A] float32 standardised inputs.
        y: [T, S, E] int64 labels in [0, n_classes).
        n_classes: B.
    """

    x: Tensor
    y: Tensor
    n_classes: int

    @property
    def n_streams(self) -> int:
        return int(self.x.shape[1])

    def to(self, device: torch.device | str) -> Episodes:
        return Episodes(self.x.to(device), self.y.to(device), self.n_classes)


class TaskSource(Protocol):
    """What the methods need: any slice of an iteration's streams, reproducibly."""

    def sample(self, iteration: int, start: int, stop: int) -> Episodes:
        """Streams [start, stop) of iteration ``iteration`` (same numbers whatever the slicing)."""
        ...


@dataclass(frozen=True)
class TaskOptions:
    """The meta-training task mix.

    Attributes:
        datasets: named datasets streamed from (``"mnist"``, ``"fashion-mnist"``).
        synthetic: synthetic task families of the data layer mixed in
            (``"linear"``, ``"nonlinear"``, ``"sum-sign"``).
        synthetic_features: A of the synthetic tasks.
        synthetic_classes: B of the synthetic tasks (sum-sign is always 2).
        split: the split the training streams come from.
        steps: T, online steps per episode.
        long_steps: a curriculum: from iteration ``long_from`` on, episodes
            have this many steps (None: always ``steps``).
        long_from: the first iteration of the long episodes.
        examples: E, examples per step of one learner (batch; 1 = online).
        project_dim: train on inputs randomly projected to this many dims
            (see ``projection_pool``); None keeps the raw inputs. Meta-test
            never projects: this one flag trains small and deploys at 784.
        projection_pool: None = a fresh projection per episode; K = one of K
            fixed matrices (K = 1: the reference's fixed projection).
        project_fraction: share of iterations whose episodes are projected
            (the reference projects half of them).
        resize: train on images resized to this side length (None: 28).
        pixel_permutation: a fresh permutation of the inputs per episode.
        n_classes: train on random class subsets of this size (None: all).
        permute_labels: a fresh random label permutation per episode.
        class_contrast: when set (a >= 1), the datasets' images (not the
            synthetic families) get a contrast per class and episode,
            log-uniform in [1/a, a] (``augment.ClassContrast``): classes that
            differ in brightness, which the MNIST digits barely do.
        block: streams drawn per sampler call (the unit of reproducibility).
        data_dir: where datasets are looked for first.
        download: fetch missing datasets (network).
    """

    datasets: tuple[str, ...] = ("mnist",)
    synthetic: tuple[str, ...] = ()
    synthetic_features: int = 32
    synthetic_classes: int = 10
    split: str = "train"
    steps: int = 500
    long_steps: int | None = None
    long_from: int = 0
    examples: int = 1
    project_dim: int | None = None
    projection_pool: int | None = None
    project_fraction: float = 1.0
    resize: int | None = None
    pixel_permutation: bool = False
    n_classes: int | None = None
    permute_labels: bool = False
    class_contrast: float | None = None
    block: int = 8
    data_dir: str | None = None
    download: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "datasets", tuple(self.datasets))
        object.__setattr__(self, "synthetic", tuple(self.synthetic))
        if not self.datasets and not self.synthetic:
            raise ValueError("the task mix needs at least one dataset or synthetic family")
        if self.steps < 1 or self.examples < 1 or self.block < 1:
            raise ValueError(f"steps, examples and block must be >= 1, got {self.steps}, {self.examples}, {self.block}")
        if self.long_steps is not None and self.long_steps < 1:
            raise ValueError(f"long_steps must be >= 1 or None, got {self.long_steps}")
        if self.project_dim is not None and self.project_dim < 1:
            raise ValueError(f"project_dim must be >= 1 or None, got {self.project_dim}")
        if self.class_contrast is not None and not self.class_contrast >= 1.0:
            raise ValueError(f"class_contrast must be >= 1 or None, got {self.class_contrast}")
        if not 0.0 <= self.project_fraction <= 1.0:
            raise ValueError(f"project_fraction must be in [0, 1], got {self.project_fraction}")


def member_noise(config: VSMLConfig, n_features: int, n_classes: int, keys: list[int]) -> list[Tensor]:
    """Initial-state noise, one independent draw per key: per layer [len(keys), A_k, B_k, N/2].

    Keying each learner's draw (rather than drawing all at once) lets any
    subset of learners be rebuilt alone, e.g. by one process of many.
    """
    draws = [init_noise(config, n_features, n_classes, 1, generator=torch.Generator().manual_seed(key)) for key in keys]
    return [torch.cat(layer) for layer in zip(*draws, strict=True)]


@dataclass
class TaskBlocks:
    """Cache of the last sampled blocks, so slicing one iteration twice samples once."""

    iteration: int = -1
    blocks: dict[int, Episodes] = field(default_factory=dict)


def gather_blocks(
    iteration: int,
    start: int,
    stop: int,
    block: int,
    draw: Callable[[int, int], Episodes],
    cache: TaskBlocks | None = None,
) -> Episodes:
    """Streams [start, stop) assembled from whole blocks ``draw(iteration, b) -> Episodes`` of ``block`` streams."""
    if not 0 <= start < stop:
        raise ValueError(f"need 0 <= start < stop, got {start}, {stop}")
    cache = cache if cache is not None else TaskBlocks()
    if cache.iteration != iteration:
        cache.iteration, cache.blocks = iteration, {}
    parts = []
    for b in range(start // block, (stop - 1) // block + 1):
        if b not in cache.blocks:
            cache.blocks[b] = draw(iteration, b)
        ep = cache.blocks[b]
        lo, hi = max(start - b * block, 0), min(stop - b * block, block)
        parts.append(Episodes(ep.x[:, lo:hi], ep.y[:, lo:hi], ep.n_classes))
    n_cls = {p.n_classes for p in parts}
    if len(n_cls) != 1:
        raise ValueError(f"streams of one iteration disagree on the number of classes: {n_cls}")
    return Episodes(torch.cat([p.x for p in parts], 1), torch.cat([p.y for p in parts], 1), parts[0].n_classes)


class TaskMix:
    """The data-layer task mix of ``TaskOptions`` as a ``TaskSource``.

    Per iteration one source (a dataset or a synthetic family) and whether its
    episodes are projected are drawn from (seed, iteration); all streams of an
    iteration share them, so they share A and B and batch into one rollout.
    Streams are drawn in blocks of ``block`` by the data layer's
    ``EpisodeSampler``, block b of iteration i being its "iteration"
    i * 2^24 + b: a pure function of (seed, i, b).
    """

    def __init__(self, options: TaskOptions, seed: int) -> None:
        from ..data import augment as aug
        from ..data.datasets import load_dataset
        from ..data.sampler import MNIST_MEAN, MNIST_STD, EpisodeSampler
        from ..data.synthetic import make_family

        self.options, self.seed = options, seed
        o = options
        sources: list[object] = [
            load_dataset(name, o.split, data_dir=o.data_dir, download=o.download) for name in o.datasets
        ]
        for name in o.synthetic:
            b = None if name.replace("_", "-") == "sum-sign" else o.synthetic_classes
            sources.append(make_family(name, o.synthetic_features, b))
        self.names = [*o.datasets, *o.synthetic]

        def specs(project: bool, image: bool) -> list[object]:
            out: list[object] = []
            if image and o.class_contrast is not None:  # pivot: a black pixel under the scalars images get
                out.append(aug.ClassContrast(o.class_contrast, pivot=-MNIST_MEAN / MNIST_STD))
            if o.resize is not None:
                out.append(aug.Resize(o.resize))
            if o.pixel_permutation:
                out.append(aug.PixelPermutation())
            if project and o.project_dim is not None:
                out.append(aug.RandomProjection(o.project_dim, pool_size=o.projection_pool, pool_seed=seed))
            if o.n_classes is not None:
                out.append(aug.ClassSubset(o.n_classes))
            if o.permute_labels:
                out.append(aug.LabelPermutation())
            return out

        lengths = {o.steps} | ({o.long_steps} if o.long_steps is not None else set())
        self.samplers = {
            (i, proj, t): EpisodeSampler(
                src, n_streams=o.block, n_steps=t * o.examples, seed=seed, augment=specs(proj, i < len(o.datasets))
            )
            for i, src in enumerate(sources)
            for proj in (False, True)
            for t in lengths
        }
        self._cache = TaskBlocks()

    def choice(self, iteration: int) -> tuple[int, bool]:
        """(source index, projected?) of ``iteration``."""
        o = self.options
        src = derive_seed(self.seed, iteration, SOURCE) % len(self.names)
        u = (derive_seed(self.seed, iteration, PROJECT) % 1_000_000) / 1_000_000
        return src, o.project_dim is not None and u < o.project_fraction

    def steps(self, iteration: int) -> int:
        """T of the episodes of ``iteration`` (the curriculum)."""
        o = self.options
        return o.long_steps if o.long_steps is not None and iteration >= o.long_from else o.steps

    def _draw(self, iteration: int, b: int) -> Episodes:
        t, e = self.steps(iteration), self.options.examples
        sampler = self.samplers[(*self.choice(iteration), t)]
        streams = sampler.episodes(iteration * BLOCKS_PER_ITERATION + b)
        x = torch.from_numpy(streams.x)  # [T * E, S, A]
        y = torch.from_numpy(streams.y)  # [T * E, S]
        s, a = x.shape[1], x.shape[2]
        x = x.reshape(t, e, s, a).transpose(1, 2).contiguous()  # [T, S, E, A]
        y = y.reshape(t, e, s).transpose(1, 2).contiguous()  # [T, S, E]
        return Episodes(x, y, streams.n_classes)

    def sample(self, iteration: int, start: int, stop: int) -> Episodes:
        return gather_blocks(iteration, start, stop, self.options.block, self._draw, self._cache)
