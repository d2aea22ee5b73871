"""Learning-algorithm cloning of backprop (docs/model.md §6.1).

V_M is trained by supervised regression so that every sub-RNN behaves like one
weight of a tanh layer trained by online SGD (targets in
``clone_objective``). Two stages:

1. fresh short episodes of random single-cell problems, the teacher starting
   from the weight written into the state by the learned encoding;
2. a pool of Q problems whose states carry over from one short window to the
   next (states hundreds to thousands of steps old, like a deployed learner
   late in a stream); each window re-anchors the teacher to what the cell
   stores now, so the loss measures new drift only. Without this stage (the
   first CPU probe found) the stored weights drift after some
   hundred steps and accuracy collapses.

The defaults are the recipe that worked on one CPU thread: 5,000 updates
(500 of stage 1) of 500 cells, every fourth with 16 averaged examples, about
25 minutes; the clone's mean online accuracy over 2,000 steps then came
within 1 point of the SGD it imitates on MNIST and Fashion-MNIST.

The options and the scaling that ties a clone to the SGD it imitates are in
``clone_options``.

Dimension letters as in ``clone_objective``.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..model.config import VSMLConfig
from ..model.params import Params, check_params, init_params
from ..seeds import CLONE_BATCH, CLONE_POOL
from .clone_objective import (
    Tasks,
    clone_losses,
    clone_rollout,
    expand_examples,
    fresh_cells,
    sample_data,
    sample_tasks,
    sample_weights,
    sgd_targets,
)
from .clone_options import CloneOptions, check_clone_config


def _iteration_generator(seed: int, iteration: int, stream: int = CLONE_BATCH) -> torch.Generator:
    """A generator whose draws depend only on (seed, iteration, stream)."""
    s = np.random.SeedSequence([seed, iteration, stream]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(s[0]) << 31 | int(s[1]) >> 1)


@dataclass
class _Pool:
    """The stage-2 problems: states [Q, N] (example mean), tasks and ages (steps) per row [Q / G]."""

    h: Tensor
    c: Tensor
    tasks: Tasks
    age: Tensor

    def to_dict(self) -> dict[str, Tensor]:
        """Copies of the tensors (the pool is updated in place)."""
        return {
            "h": self.h.clone(),
            "c": self.c.clone(),
            "x_keep": self.tasks.x_keep.clone(),
            "x_value": self.tasks.x_value.clone(),
            "err_std": self.tasks.err_std.clone(),
            "age": self.age.clone(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Tensor]) -> _Pool:
        return cls(
            h=d["h"].clone(),
            c=d["c"].clone(),
            tasks=Tasks(d["x_keep"].clone(), d["x_value"].clone(), d["err_std"].clone()),
            age=d["age"].clone(),
        )


class CloneTrainer:
    """Backprop cloning as a ``Trainer`` (see ``methods.base``).

    Args:
        config: the model config, from ``clone_config(options)`` (checked).
        options: the cloning knobs.
        seed: all randomness derives from (seed, iteration).
        init: start from this V_M instead of a fresh one (e.g. to continue cloning).
    """

    name = "clone"

    def __init__(self, config: VSMLConfig, options: CloneOptions, seed: int, init: Params | None = None) -> None:
        check_clone_config(config, options)
        self.config = config
        self.options = options
        self.seed = seed
        start = init_params(config, seed) if init is None else {k: v.detach().clone().float() for k, v in init.items()}
        check_params(start, config)
        self._params = {k: v.requires_grad_(True) for k, v in start.items()}
        self._names = sorted(self._params)
        self.optimizer = torch.optim.Adam([self._params[k] for k in self._names], lr=options.lr)
        self.pool: _Pool | None = None

    # -- the protocol -------------------------------------------------------

    def step(self, iteration: int) -> dict[str, float]:
        """One Adam update on a batch of cloning problems (stage 1 or 2 by ``iteration``)."""
        o = self.options
        lr = self.learning_rate(iteration)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        examples = o.examples[iteration % len(o.examples)]
        gen = _iteration_generator(self.seed, iteration)
        stage = 1 if iteration < o.stage1_iterations else 2
        g = o.row_size
        rows = max(1, o.batch // (examples * g))
        if stage == 1:
            tasks = self._sample_tasks(gen, rows)
            w0 = sample_weights(gen, rows * g, w_std_min=o.w_std_min, w_std_max=o.w_std_max)
            h, c = fresh_cells(self._params, self.config, w0)
            w_start, steps, row_idx = w0, o.stage1_steps, None
        else:
            if self.pool is None:
                self.pool = self._new_pool()
            rows = min(rows, o.pool_size // g)
            row_idx = torch.randperm(o.pool_size // g, generator=gen)[:rows]
            idx = _problems(row_idx, g)
            tasks = self.pool.tasks.index(row_idx)
            h, c = self.pool.h[idx].reshape(rows * g, 1, 1, 1, -1), self.pool.c[idx].reshape(rows * g, 1, 1, 1, -1)
            w_start, steps = c[:, 0, 0, 0, o.weight_unit], o.window  # re-anchor to what the cell stores
        x, e = sample_data(gen, tasks, steps, examples, g, x_std=o.x_std, err_classes=o.err_classes)
        out = clone_rollout(
            self._params,
            self.config,
            expand_examples(h, examples),
            expand_examples(c, examples),
            x,
            e,
            o.weight_unit,
        )
        tgt = sgd_targets(w_start, x, e, update_scale=o.update_scale, target_scale=o.target_scale)
        losses = clone_losses(
            out,
            tgt,
            update_scale=o.update_scale,
            target_scale=o.target_scale,
            beta=o.beta,
            fwd_weight=o.fwd_weight,
            fwd_centered_weight=o.fwd_centered_weight,
            weight_weight=o.weight_weight,
            bwd_weight=o.bwd_weight,
            row_size=g,
        )
        self.optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        params = [self._params[k] for k in self._names]
        if o.grad_clip is not None:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, o.grad_clip))
        else:
            grad_norm = float(torch.sqrt(sum(p.grad.pow(2).sum() for p in params if p.grad is not None)))
        self.optimizer.step()
        metrics = {k: float(v.detach()) for k, v in losses.items()}
        metrics.update(stage=float(stage), examples=float(examples), lr=lr, grad_norm=grad_norm)
        if row_idx is not None:
            self._update_pool(row_idx, out.h, out.c, steps, gen)
            assert self.pool is not None
            metrics["pool_mean_age"] = float(self.pool.age.float().mean())
        return metrics

    def params(self) -> Params:
        """The current V_M, base shapes, detached copies."""
        return {k: v.detach().clone() for k, v in self._params.items()}

    def state_dict(self) -> dict[str, Any]:
        """V_M, Adam state, the stage-2 pool (states, tasks, ages), options and seed."""
        opt = copy.deepcopy(self.optimizer.state_dict())  # no aliasing of the live Adam moments
        groups = [{k: list(v) if isinstance(v, tuple) else v for k, v in g.items()} for g in opt["param_groups"]]
        return {
            "method": self.name,
            "seed": self.seed,
            "options": self.options.to_dict(),
            "params": self.params(),
            "optimizer": {"state": opt["state"], "param_groups": groups},
            "pool": None if self.pool is None else self.pool.to_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned (options and seed must match)."""
        if state.get("method") != self.name:
            raise ValueError(f"not a {self.name} trainer state (method={state.get('method')!r})")
        if CloneOptions.from_dict(state["options"]) != self.options or state["seed"] != self.seed:
            raise ValueError("trainer state was made with other options or seed")
        check_params(state["params"], self.config)
        with torch.no_grad():
            for k, v in state["params"].items():
                self._params[k].copy_(v)
        opt = state["optimizer"]
        groups = [{k: tuple(v) if k == "betas" else v for k, v in g.items()} for g in opt["param_groups"]]
        self.optimizer.load_state_dict({"state": opt["state"], "param_groups": groups})
        self.pool = None if state["pool"] is None else _Pool.from_dict(state["pool"])

    # -- helpers ------------------------------------------------------------

    def learning_rate(self, iteration: int) -> float:
        """Adam's learning rate at ``iteration`` (cosine from lr to lr_final over decay_iterations)."""
        o = self.options
        if o.decay_iterations <= 0:
            return o.lr
        frac = min(iteration / o.decay_iterations, 1.0)
        return o.lr_final + 0.5 * (o.lr - o.lr_final) * (1 + math.cos(math.pi * frac))

    def _sample_tasks(self, gen: torch.Generator, n: int) -> Tasks:
        o = self.options
        return sample_tasks(gen, n, x_std=o.x_std, const_x_prob=o.const_x_prob, err_logit_std_max=o.err_logit_std_max)

    def _fresh(self, gen: torch.Generator, rows: int) -> tuple[Tensor, Tensor, Tasks]:
        """Fresh problems: states [rows * G, N] holding new random weights, and the rows' tasks."""
        o = self.options
        tasks = self._sample_tasks(gen, rows)
        n = rows * o.row_size
        w0 = sample_weights(gen, n, w_std_min=o.w_std_min, w_std_max=o.w_std_max)
        with torch.no_grad():
            h, c = fresh_cells(self._params, self.config, w0)
        return h.reshape(n, -1), c.reshape(n, -1), tasks

    def _new_pool(self) -> _Pool:
        gen = _iteration_generator(self.seed, 0, stream=CLONE_POOL)
        rows = self.options.pool_size // self.options.row_size
        h, c, tasks = self._fresh(gen, rows)
        return _Pool(h=h, c=c, tasks=tasks, age=torch.zeros(rows, dtype=torch.long))

    def _update_pool(self, row_idx: Tensor, h: Tensor, c: Tensor, steps: int, gen: torch.Generator) -> None:
        """Write the window's final states back (example mean), age the rows, restart some."""
        o = self.options
        pool = self.pool
        assert pool is not None
        idx = _problems(row_idx, o.row_size)
        pool.h[idx] = h.detach().mean(1).reshape(idx.shape[0], -1)
        pool.c[idx] = c.detach().mean(1).reshape(idx.shape[0], -1)
        pool.age[row_idx] += steps
        restart = (torch.rand(row_idx.shape[0], generator=gen) < steps / o.mean_age) | (pool.age[row_idx] >= o.max_age)
        r = row_idx[restart]
        if r.numel():
            h0, c0, tasks = self._fresh(gen, int(r.numel()))
            ri = _problems(r, o.row_size)
            pool.h[ri], pool.c[ri], pool.age[r] = h0, c0, 0
            pool.tasks.x_keep[r] = tasks.x_keep
            pool.tasks.x_value[r] = tasks.x_value
            pool.tasks.err_std[r] = tasks.err_std


def _problems(row_idx: Tensor, row_size: int) -> Tensor:
    """Problem indices [R * G] of rows ``row_idx`` [R] (problem r * G + g)."""
    return (row_idx.unsqueeze(1) * row_size + torch.arange(row_size)).reshape(-1)
