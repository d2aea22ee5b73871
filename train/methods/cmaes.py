"""Improving an existing V_M (a cloned backprop first of all) with CMA-ES (docs/model.md §6.4).

The ``cma`` package's ``CMAEvolutionStrategy`` runs the ask / tell loop over
the flat V_M, starting at the given model with initial step size ``sigma0``.
Each iteration: ``ask`` lambda candidates [lambda, D]; every candidate learns
the SAME S long episodes from the SAME initial states (common random numbers:
the ranking then compares V_Ms, not tasks); all lambda x S learners run in ONE
batched ``run_episode`` call; fitness = mean online cross-entropy; ``tell``.
Non-finite fitness (a diverging candidate) is counted and replaced by the
worst finite fitness plus one, since CMA-ES needs a total order.

For large V_M the separable variant (``diagonal``: ``CMA_diagonal=True``,
O(D) instead of O(D^2) per iteration) is the practical choice.

The optimizer draws its normals from its own ``numpy.random.RandomState``
(cma option ``randn``), never from numpy's global generator, so the pickled
optimizer (stored as a uint8 tensor in the checkpoint, see ``checkpoint.py``
for the trust model) holds its RNG state and a resumed run asks exactly the
same candidates. Every process of a distributed run builds the same optimizer
from the same seed, evaluates a shard of the candidates and all-gathers the
fitness values.

Original settings: population 64, 200 iterations, 1e4 inner steps, initial
step size 0.1. Dimension letters: L lambda candidates, D flat V_M size, S
episodes per candidate, T steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import cma
import numpy as np
import torch

from ..model.params import Params, flatten, unflatten
from ..seeds import CMAES_RNG, STATE, derive_seed
from .base import RolloutTrainer
from .checkpoint import pickle_to_tensor, tensor_to_pickle
from .distributed import World, current_world, gather_fitness, shard
from .es import cell_steps, population_loss
from .tasks import Episodes, TaskOptions, member_noise


@dataclass(frozen=True)
class CmaesOptions:
    """CMA-ES hyper-parameters (original defaults; cluster sized).

    Attributes:
        popsize: lambda, candidates per iteration.
        sigma0: initial step size.
        diagonal: separable CMA-ES (diagonal covariance) for large V_M.
        episodes: S streams every candidate is evaluated on (shared by all).
        tasks: the episodes' task mix (long episodes).
    """

    popsize: int = 64
    sigma0: float = 0.1
    diagonal: bool = False
    episodes: int = 1
    tasks: TaskOptions = field(default_factory=lambda: TaskOptions(steps=10000))

    def __post_init__(self) -> None:
        if self.popsize < 2 or self.sigma0 <= 0 or self.episodes < 1:
            raise ValueError(
                f"need popsize >= 2, sigma0 > 0, episodes >= 1; got {self.popsize}, {self.sigma0}, {self.episodes}"
            )


def finite_fitness(fit: np.ndarray) -> tuple[np.ndarray, int]:
    """Replace NaN / inf fitness by (worst finite + 1); returns (fitness [L], count replaced)."""
    bad = ~np.isfinite(fit)
    if not bad.any():
        return fit, 0
    worst = float(fit[~bad].max()) + 1.0 if (~bad).any() else 1e6
    return np.where(bad, worst, fit), int(bad.sum())


class CmaesTrainer(RolloutTrainer):
    """CMA-ES on the flat V_M (implements ``methods.base.Trainer``).

    Args: as ``methods.base.RolloutTrainer``, ``options`` a ``CmaesOptions``.
    """

    name = "cmaes"
    gradient_free = True

    def setup(self, start: Params) -> None:
        self.world: World = current_world()
        x0 = flatten(start).detach().to("cpu", torch.float64).numpy()
        rng = np.random.RandomState(derive_seed(self.seed, CMAES_RNG) % 2**32)
        opts = {
            "popsize": self.options.popsize,
            "CMA_diagonal": bool(self.options.diagonal),
            "randn": rng.randn,  # the optimizer's own generator, pickled with it
            "seed": math.nan,  # leave numpy's global generator alone
            "verbose": -9,
            "verb_log": 0,  # no output files
            "verb_disp": 0,
            "maxiter": math.inf,
            "tolfun": 0,
            "tolx": 0,
        }
        self.es = cma.CMAEvolutionStrategy(x0, self.options.sigma0, opts)

    def evaluate(self, iteration: int, candidates: np.ndarray) -> tuple[np.ndarray, int]:
        """Fitness [L] of every candidate (this process's shard, gathered) and the cell steps done."""
        lam, s = candidates.shape[0], self.options.episodes
        lo, hi = shard(lam, self.world.rank, self.world.size)
        work = 0
        if hi > lo:
            ep = self.tasks.sample(iteration, 0, s).to(self.device)
            n = hi - lo
            noise = member_noise(
                self.config,
                ep.x.shape[-1],
                ep.n_classes,
                [derive_seed(self.seed, iteration, STATE, k) for k in range(s)],
            )
            flat = torch.as_tensor(candidates[lo:hi], dtype=torch.float32).to(self.device)
            flat = flat.repeat_interleave(s, 0)  # [n * S, D]: candidate-major
            both = Episodes(ep.x.repeat(1, n, 1, 1), ep.y.repeat(1, n, 1), ep.n_classes)
            fit = population_loss(flat, self.config, both, [z.repeat(n, 1, 1, 1) for z in noise], self.step_fn)
            local = fit.reshape(n, s).mean(1)
            work = cell_steps(self.config, both, n * s)
        else:
            local = torch.empty(0)
        full = gather_fitness(local, lam, self.world)
        return full.numpy(), work * self.world.size

    def step(self, iteration: int) -> dict[str, float]:
        candidates = np.asarray(self.es.ask())  # [L, D]
        raw, work = self.evaluate(iteration, candidates)
        fit, n_bad = finite_fitness(raw)
        self.es.tell(list(candidates), fit.tolist())
        finite = raw[np.isfinite(raw)]
        return {
            "loss": float(finite.mean()) if finite.size else float("nan"),
            "best": float(finite.min()) if finite.size else float("nan"),
            "sigma": float(self.es.sigma),
            "nonfinite": float(n_bad),
            "cell_steps": float(work),
        }

    def params(self) -> Params:
        """The distribution mean (CMA-ES's current estimate of the best V_M)."""
        mean = torch.as_tensor(np.asarray(self.es.mean), dtype=torch.float32)
        return unflatten(mean, self.config)

    def state_dict(self) -> dict[str, Any]:
        return {"cma": pickle_to_tensor(self.es)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        es = tensor_to_pickle(state["cma"])
        if not isinstance(es, cma.CMAEvolutionStrategy) or es.N != self.es.N:
            raise ValueError(f"checkpoint holds no CMA-ES state of dimension {self.es.N}")
        self.es = es
