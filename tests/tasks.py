"""A dependency-free synthetic task source for the method tests (no datasets needed)."""

from __future__ import annotations

import torch

from vsml_train.methods.tasks import Episodes, TaskBlocks, gather_blocks
from vsml_train.seeds import derive_seed


class LinearTeacherTasks:
    """A dependency-free synthetic task source (tests and benchmarks).

    Each stream has its own random linear teacher W [A, B]; inputs are
    standard normal and y = argmax(x @ W). A learner that adapts online beats
    chance; a fixed predictor cannot, since every stream has a new teacher.
    """

    def __init__(self, n_features: int, n_classes: int, steps: int, seed: int, examples: int = 1, block: int = 8):
        self.n_features, self.n_classes, self.steps = n_features, n_classes, steps
        self.examples, self.seed, self.block = examples, seed, block
        self._cache = TaskBlocks()

    def _draw(self, iteration: int, b: int) -> Episodes:
        gen = torch.Generator().manual_seed(derive_seed(self.seed, iteration, b))
        t, s, e, a, k = self.steps, self.block, self.examples, self.n_features, self.n_classes
        w = torch.randn(s, a, k, generator=gen)  # [S, A, B]
        x = torch.randn(t, s, e, a, generator=gen)  # [T, S, E, A]
        y = torch.einsum("tsea,sab->tseb", x, w).argmax(-1)  # [T, S, E]
        return Episodes(x, y, k)

    def sample(self, iteration: int, start: int, stop: int) -> Episodes:
        return gather_blocks(iteration, start, stop, self.block, self._draw, self._cache)
