"""Meta-learning V_M from scratch with antithetic evolution strategies (docs/model.md §6.2).

One iteration, over the flat V_M vector theta [D]:

1. ``ask``: P pairs of standard normal directions eps [P, D], drawn from
   (seed, iteration) alone (every process regenerates them; none travel).
2. Evaluate theta + sigma * eps_i and theta - sigma * eps_i on the SAME episode
   and the SAME initial state (common random numbers: the pair's difference
   then measures the direction, not the task). The whole population (2P
   learners, each its own V_M on the leading [P] axis) runs in ONE batched
   ``run_episode`` call. Fitness = mean online cross-entropy over the episode.
3. ``tell``: g = mean_i (L+_i - L-_i) / (2 sigma) * eps_i (``es_grad``),
   optionally on centred ranks instead of raw losses, applied with Adam.

Non-finite fitness (a diverging member) is counted and reported; its pair is
either excluded from the mean ("exclude") or given the worst finite fitness
of the population ("penalise").

The estimator math lives in small pure functions (``centred_ranks``,
``guard_nonfinite``, ``es_grad``) apart from sampling and distribution.

Dimension letters (docs/model.md §8): P learners (here: P antithetic pairs, a
population of 2P), D flat V_M size,
T steps, E examples per step, A inputs, B classes.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from ..model.config import VSMLConfig
from ..model.episode import online_loss, run_episode
from ..model.params import Params, flatten, n_params, unflatten
from ..model.state import state_from_noise
from ..seeds import NOISE, STATE, derive_seed
from .base import RolloutTrainer
from .distributed import World, current_world, gather_fitness, shard
from .tasks import Episodes, TaskOptions, member_noise

NonFinite = Literal["exclude", "penalise"]


@dataclass(frozen=True)
class EsOptions:
    """Antithetic ES hyper-parameters (public-code defaults; cluster sized).

    Attributes:
        pairs: P antithetic pairs per iteration (population 2P).
        sigma: perturbation std.
        lr: Adam learning rate on the ES gradient estimate.
        betas: Adam betas.
        rank_shaping: replace losses by centred ranks in [-0.5, 0.5] before
            the estimate (robust to outliers, changes the scale).
        nonfinite: what a pair with a NaN / inf fitness does ("exclude" or
            "penalise", see the module docstring).
        tasks: the episodes' task mix (one episode per pair).
    """

    pairs: int = 1024
    sigma: float = 0.05
    lr: float = 0.025
    betas: tuple[float, float] = (0.9, 0.999)
    rank_shaping: bool = False
    nonfinite: NonFinite = "exclude"
    tasks: TaskOptions = field(default_factory=TaskOptions)

    def __post_init__(self) -> None:
        object.__setattr__(self, "betas", tuple(self.betas))
        if self.pairs < 1 or self.sigma <= 0 or self.lr <= 0:
            raise ValueError(f"need pairs >= 1, sigma > 0, lr > 0; got {self.pairs}, {self.sigma}, {self.lr}")
        if self.nonfinite not in ("exclude", "penalise"):
            raise ValueError(f"nonfinite must be 'exclude' or 'penalise', got {self.nonfinite!r}")


# ---------------------------------------------------------------------------
# estimator math (pure)


def centred_ranks(f: Tensor) -> Tensor:
    """Fitness [K] -> centred ranks [K] in [-0.5, 0.5] (lowest -0.5; ties broken by position)."""
    k = f.numel()
    ranks = torch.empty(k, dtype=torch.float64, device=f.device)
    ranks[torch.argsort(f.reshape(-1), stable=True)] = torch.arange(k, dtype=torch.float64, device=f.device)
    return (ranks / max(k - 1, 1) - 0.5).reshape(f.shape)


def guard_nonfinite(fit_pos: Tensor, fit_neg: Tensor, mode: NonFinite) -> tuple[Tensor, Tensor, Tensor, int]:
    """Handle NaN / inf fitness of pairs.

    Args:
        fit_pos, fit_neg: [P] losses of theta +- sigma * eps_i.
        mode: "exclude" drops a pair with any non-finite member; "penalise"
            sets every non-finite loss to the worst finite loss (the pair then
            still points away from the failure).
    Returns:
        (fit_pos [P], fit_neg [P], valid [P] bool, number of non-finite members).
    """
    bad_pos, bad_neg = ~torch.isfinite(fit_pos), ~torch.isfinite(fit_neg)
    n_bad = int(bad_pos.sum() + bad_neg.sum())
    if mode == "exclude":
        valid = ~(bad_pos | bad_neg)
        return torch.where(valid, fit_pos, 0.0), torch.where(valid, fit_neg, 0.0), valid, n_bad
    finite = torch.cat([fit_pos[~bad_pos], fit_neg[~bad_neg]])
    worst = finite.max() if finite.numel() else torch.tensor(0.0, dtype=fit_pos.dtype)
    valid = torch.ones_like(bad_pos) if finite.numel() else torch.zeros_like(bad_pos)
    return torch.where(bad_pos, worst, fit_pos), torch.where(bad_neg, worst, fit_neg), valid, n_bad


def es_grad(eps: Tensor, fit_pos: Tensor, fit_neg: Tensor, sigma: float, valid: Tensor | None = None) -> Tensor:
    """Antithetic ES estimate of the gradient of E[L(theta + sigma * eps)].

    Args:
        eps: [P, D] directions.
        fit_pos, fit_neg: [P] losses at theta +- sigma * eps_i.
        valid: [P] bool, pairs to average over (default all).
    Returns:
        [D] = mean over valid i of (L+_i - L-_i) / (2 sigma) * eps_i; zero if no pair is valid.
    """
    w = (fit_pos - fit_neg).to(eps.dtype) / (2 * sigma)  # [P]
    if valid is not None:
        w = torch.where(valid, w, 0.0)
        n = int(valid.sum())
    else:
        n = w.numel()
    return (w @ eps) / max(n, 1)


def shaped_fitness(fit_pos: Tensor, fit_neg: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
    """Centred ranks over the 2P losses of the valid pairs (invalid pairs get 0)."""
    both = torch.cat([fit_pos[valid], fit_neg[valid]])
    r = centred_ranks(both)
    pos, neg = torch.zeros_like(fit_pos), torch.zeros_like(fit_neg)
    n = int(valid.sum())
    pos[valid], neg[valid] = r[:n].to(pos.dtype), r[n:].to(neg.dtype)
    return pos, neg


# ---------------------------------------------------------------------------
# batched population rollout (shared with CMA-ES)


def population_loss(
    flat: Tensor, config: VSMLConfig, episodes: Episodes, noise: list[Tensor], step_fn: Any = None
) -> Tensor:
    """Mean online cross-entropy of P learners, each with its own V_M, in one batched rollout.

    Args:
        flat: [P, D] flat V_M per learner.
        episodes: x [T, P, E, A], y [T, P, E] (learner p sees stream p).
        noise: initial-state noise per layer [P, A_k, B_k, N/2] (``member_noise``).
    Returns:
        [P] fitness (lower is better); NaN / inf where a learner diverged.
    """
    params = unflatten(flat, config)
    dev = flat.device
    state = state_from_noise(config, params, [z.to(dev) for z in noise], episodes.x.shape[2])
    with torch.no_grad():
        res = run_episode(params, config, episodes.x, episodes.y, episodes.n_classes, state=state, step_fn=step_fn)
        loss = online_loss(res.logits, episodes.y)  # [T, P, E]
        # each learner's mean over one contiguous row: the same summation order whatever P is, so a
        # member's fitness does not depend on which other members share its batch (or process)
        return loss.permute(1, 0, 2).reshape(loss.shape[1], -1).contiguous().mean(-1)


def cell_steps(config: VSMLConfig, episodes: Episodes, learners: int) -> int:
    """Cell updates of a rollout: learners x E x sum_k A_k B_k x micro ticks (x2 with backward_pass) x T."""
    t, _, e, a = episodes.x.shape
    cells = sum(ak * bk for ak, bk in config.layer_sizes(a, episodes.n_classes))
    return learners * e * cells * config.micro_ticks * (2 if config.backward_pass else 1) * t


# ---------------------------------------------------------------------------
# the trainer


class EsTrainer(RolloutTrainer):
    """Antithetic ES with Adam over the flat V_M (implements ``methods.base.Trainer``).

    Args: as ``methods.base.RolloutTrainer``, ``options`` a ``EsOptions``.
    """

    name = "es"
    gradient_free = True

    def setup(self, start: Params) -> None:
        self.world: World = current_world()
        self.theta = torch.nn.Parameter(flatten(start).detach().to(self.device, torch.float32).clone())
        self.opt = torch.optim.Adam([self.theta], lr=self.options.lr, betas=self.options.betas)

    # ask / tell ------------------------------------------------------------

    def ask(self, iteration: int) -> Tensor:
        """The directions eps [P, D] of ``iteration`` (identical on every process)."""
        gen = torch.Generator().manual_seed(derive_seed(self.seed, iteration, NOISE))
        return torch.randn(self.options.pairs, n_params(self.config), generator=gen)

    def evaluate(self, iteration: int, eps: Tensor) -> tuple[Tensor, Tensor, int]:
        """Losses of theta +- sigma * eps_i for this process's pairs, gathered: ([P], [P], cell steps)."""
        p, sigma = self.options.pairs, self.options.sigma
        lo, hi = shard(p, self.world.rank, self.world.size)
        if hi > lo:
            ep = self.tasks.sample(iteration, lo, hi).to(self.device)
            n = hi - lo
            noise = member_noise(
                self.config,
                ep.x.shape[-1],
                ep.n_classes,
                [derive_seed(self.seed, iteration, STATE, i) for i in range(lo, hi)],
            )
            theta = self.theta.detach()
            d = sigma * eps[lo:hi].to(self.device)
            flat = torch.cat([theta + d, theta - d])  # [2n, D]: pairs' + then - members
            both = Episodes(torch.cat([ep.x, ep.x], 1), torch.cat([ep.y, ep.y], 1), ep.n_classes)
            fit = population_loss(flat, self.config, both, [torch.cat([z, z]) for z in noise], self.step_fn)
            local_pos, local_neg, work = fit[:n], fit[n:], cell_steps(self.config, both, 2 * n)
        else:
            local_pos = local_neg = torch.empty(0)
            work = 0
        fit_pos = gather_fitness(local_pos, p, self.world)
        fit_neg = gather_fitness(local_neg, p, self.world)
        return fit_pos, fit_neg, work * self.world.size

    def tell(self, eps: Tensor, fit_pos: Tensor, fit_neg: Tensor) -> dict[str, float]:
        """Adam step on the ES estimate from the gathered losses; returns metrics."""
        fit_pos, fit_neg, valid, n_bad = guard_nonfinite(fit_pos, fit_neg, self.options.nonfinite)
        n_valid = int(valid.sum())
        loss = float(torch.cat([fit_pos[valid], fit_neg[valid]]).mean()) if n_valid else float("nan")
        if self.options.rank_shaping and n_valid:
            fit_pos, fit_neg = shaped_fitness(fit_pos, fit_neg, valid)
        grad = es_grad(eps.to(torch.float64), fit_pos, fit_neg, self.options.sigma, valid)
        if n_valid:
            self.theta.grad = grad.to(self.theta.dtype).to(self.device)
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
        return {"loss": loss, "grad_norm": float(grad.norm()), "nonfinite": float(n_bad), "pairs_used": float(n_valid)}

    # Trainer protocol ----------------------------------------------------------

    def step(self, iteration: int) -> dict[str, float]:
        eps = self.ask(iteration)
        fit_pos, fit_neg, work = self.evaluate(iteration, eps)
        metrics = self.tell(eps, fit_pos, fit_neg)
        metrics["cell_steps"] = float(work)
        return metrics

    def params(self) -> Params:
        flat = self.theta.detach().to("cpu").clone()
        return unflatten(flat, self.config)

    def state_dict(self) -> dict[str, Any]:
        return {
            "theta": self.theta.detach().to("cpu").clone(),
            "adam": copy.deepcopy(self.opt.state_dict()),
        }  # no aliasing of live moments

    def load_state_dict(self, state: dict[str, Any]) -> None:
        theta = state["theta"]
        if tuple(theta.shape) != tuple(self.theta.shape):
            raise ValueError(f"checkpoint V_M has {tuple(theta.shape)} numbers, this model {tuple(self.theta.shape)}")
        with torch.no_grad():
            self.theta.copy_(theta.to(self.device))
        self.opt.load_state_dict(state["adam"])
