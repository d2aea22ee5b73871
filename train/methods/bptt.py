"""Meta-learning V_M by backpropagation through unrolled episodes (docs/model.md §6.3).

One update: S episodes (streams of the task mix) run as S learners that share
one V_M (base-shaped parameters broadcast over the learner axis) in one
``run_episode`` call; the meta-loss is the mean online cross-entropy over every
step, example and episode (optionally weighted towards the first steps,
``step_weight_tau``); its gradient w.r.t. V_M flows back through the whole
unrolled episode (or, with ``truncation`` K, only within windows of K steps:
the state is detached every K steps); the gradient norm is clipped and Adam
applies it. Public config: Adam 1e-3, clip 25, 128 episodes per update,
LayerNorm on the messages.

With ``truncation`` K the episode runs window by window and each window's
share of the meta-loss is backpropagated before the next window runs, so
memory holds K steps of the graph instead of T (the gradient equals the one
of the whole truncated graph; a 784-input, N = 32 learner with the backward
pass keeps about 130 MB per episode-step eager and 40 MB compiled, so two
300-step episodes did not fit in 24 GB). With
``window_updates`` Adam also steps after every window (online truncated BPTT,
Williams & Peng 1990): T / K updates per episode, each window starting from the
state the previous V_M left.

Dimension letters: S episodes per update, T steps, E examples per step, A
inputs, B classes, N state.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch

from ..model.episode import online_loss, run_episode
from ..model.params import Params, check_params
from ..model.state import VSMLState, state_from_noise
from ..seeds import STATE, derive_seed
from .base import RolloutTrainer
from .es import cell_steps
from .tasks import TaskOptions, member_noise


@dataclass(frozen=True)
class BpttOptions:
    """Backprop-through-time hyper-parameters (public-code defaults).

    Attributes:
        episodes: S episodes per update (learners sharing V_M in one rollout).
        lr: Adam learning rate.
        betas: Adam betas.
        grad_clip: clip the global gradient norm to this (None: no clipping).
        truncation: detach the state every this many steps (None: full BPTT); the
            windows are backpropagated one at a time (memory of K steps).
        window_updates: with ``truncation``, an Adam update after every window
            instead of one per episode.
        step_weight_tau: weight the cross-entropy of step t (0-based) by
            (1 + t / tau)^-1, normalised to mean 1 over the episode's T steps, so
            the first examples of a stream count more (None: every step alike).
        tasks: the episodes' task mix.
    """

    episodes: int = 128
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float | None = 25.0
    truncation: int | None = None
    window_updates: bool = False
    step_weight_tau: float | None = None
    tasks: TaskOptions = field(default_factory=TaskOptions)

    def __post_init__(self) -> None:
        object.__setattr__(self, "betas", tuple(self.betas))
        if self.episodes < 1 or self.lr <= 0:
            raise ValueError(f"need episodes >= 1 and lr > 0, got {self.episodes}, {self.lr}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ValueError(f"grad_clip must be > 0 or None, got {self.grad_clip}")
        if self.truncation is not None and self.truncation < 1:
            raise ValueError(f"truncation must be >= 1 or None, got {self.truncation}")
        if self.window_updates and self.truncation is None:
            raise ValueError("window_updates needs a truncation (the window length)")
        if self.step_weight_tau is not None and not self.step_weight_tau > 0:
            raise ValueError(f"step_weight_tau must be > 0 or None, got {self.step_weight_tau}")


def step_weights(t_steps: int, tau: float | None) -> torch.Tensor:
    """[T] weights of the online cross-entropy per step: (1 + t / tau)^-1 with mean 1 (all 1 without tau)."""
    if tau is None:
        return torch.ones(t_steps)
    w = 1.0 / (1.0 + torch.arange(t_steps, dtype=torch.float64) / tau)
    return (w / w.mean()).float()


class BpttTrainer(RolloutTrainer):
    """Backprop through unrolled episodes with Adam (implements ``methods.base.Trainer``).

    Args: as ``methods.base.RolloutTrainer``, ``options`` a ``BpttOptions``.
    """

    name = "bptt"

    def setup(self, start: Params) -> None:
        self.vm = {k: torch.nn.Parameter(v.detach().to(self.device, torch.float32).clone()) for k, v in start.items()}
        self._names = sorted(self.vm)
        self.opt = torch.optim.Adam([self.vm[k] for k in self._names], lr=self.options.lr, betas=self.options.betas)

    def _start(self, iteration: int) -> tuple[Any, VSMLState]:
        """The episodes of update ``iteration`` (x [T, S, E, A]) and their initial state."""
        s = self.options.episodes
        ep = self.tasks.sample(iteration, 0, s).to(self.device)
        keys = [derive_seed(self.seed, iteration, STATE, i) for i in range(s)]
        noise = member_noise(self.config, ep.x.shape[-1], ep.n_classes, keys)
        state = state_from_noise(self.config, self.vm, [z.to(self.device) for z in noise], ep.x.shape[2])
        return ep, state

    def loss(self, iteration: int) -> tuple[torch.Tensor, int]:
        """The differentiable meta-loss of update ``iteration`` and its cell steps (the whole graph at once)."""
        ep, state = self._start(iteration)
        res = run_episode(
            self.vm,
            self.config,
            ep.x,
            ep.y,
            ep.n_classes,
            state=state,
            step_fn=self.step_fn,
            keep_grad_every=self.options.truncation,
        )
        w = step_weights(ep.y.shape[0], self.options.step_weight_tau).to(self.device)
        loss = (online_loss(res.logits, ep.y) * w[:, None, None]).mean()
        return loss, cell_steps(self.config, ep, self.options.episodes)

    def accumulate(self, iteration: int, update: bool = False) -> tuple[float, int, list[tuple[float, bool]]]:
        """Backpropagate the meta-loss of ``iteration`` one truncation window at a time.

        Each window's part of the mean online cross-entropy (its sum over the
        window's [K, S, E] predictions divided by T * S * E) is backpropagated
        before the next window runs from the detached state, so the gradients
        add up to those of ``loss`` with the same truncation (without one, the
        whole episode is a single window). With ``update`` Adam steps after
        every window (``window_updates``).

        Returns:
            (meta-loss, cell steps, [(gradient norm, applied)] of each update made).
        """
        ep, state = self._start(iteration)
        t_steps, total = ep.x.shape[0], ep.y.numel()
        k = self.options.truncation or t_steps
        w = step_weights(t_steps, self.options.step_weight_tau).to(self.device)
        loss, updates = 0.0, []
        for t0 in range(0, t_steps, k):
            x, y = ep.x[t0 : t0 + k], ep.y[t0 : t0 + k]
            res = run_episode(self.vm, self.config, x, y, ep.n_classes, state=state, step_fn=self.step_fn)
            part = (online_loss(res.logits, y) * w[t0 : t0 + k, None, None]).sum() / total
            part.backward()
            loss += float(part.detach())
            state = res.state.map(torch.Tensor.detach)
            if update:
                updates.append(self._apply())
                self.opt.zero_grad(set_to_none=True)
        return loss, cell_steps(self.config, ep, self.options.episodes), updates

    def _apply(self) -> tuple[float, bool]:
        """Clip the stored gradient and let Adam apply it unless it is non-finite: (norm, applied)."""
        params = [self.vm[k] for k in self._names]
        if self.options.grad_clip is not None:
            norm = torch.nn.utils.clip_grad_norm_(params, self.options.grad_clip)
        else:
            grads = [p.grad for p in params if p.grad is not None]  # unused heads get no gradient
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        finite = bool(torch.isfinite(norm))
        if finite:  # a non-finite gradient would poison Adam's moments: skip the update
            self.opt.step()
        return float(norm), finite

    def step(self, iteration: int) -> dict[str, float]:
        self.opt.zero_grad(set_to_none=True)
        loss, work, updates = self.accumulate(iteration, update=self.options.window_updates)
        if not self.options.window_updates:
            updates = [self._apply()]
        return {
            "loss": loss,
            "grad_norm": updates[-1][0],
            "skipped": float(sum(not ok for _, ok in updates)),
            "cell_steps": float(work),
        }

    def params(self) -> Params:
        return {k: v.detach().to("cpu").clone() for k, v in self.vm.items()}

    def state_dict(self) -> dict[str, Any]:
        adam = copy.deepcopy(self.opt.state_dict())  # no aliasing of the live moments
        return {"params": self.params(), "adam": adam}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_params(state["params"], self.config)
        with torch.no_grad():
            for k, v in state["params"].items():
                self.vm[k].copy_(v.to(self.device))
        self.opt.load_state_dict(state["adam"])
