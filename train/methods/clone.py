"""Learning-algorithm cloning of backprop (reference 6.1, probe notes in section 8).

V_M is trained by supervised regression so that every sub-RNN behaves like one
weight of a tanh layer trained by online SGD (targets in
``clone_objective``). Two stages:

1. fresh short episodes of random single-cell problems, the teacher starting
   from the weight written into the state by the learned encoding;
2. a pool of Q problems whose states carry over from one short window to the
   next (states hundreds to thousands of steps old, like a deployed learner
   late in a stream); each window re-anchors the teacher to what the cell
   stores now, so the loss measures new drift only. Without this stage (the
   probe of reference section 8 found) the stored weights drift after some
   hundred steps and accuracy collapses.

The defaults are the recipe that worked on one CPU thread: 5,000 updates
(500 of stage 1) of 500 cells, every fourth with 16 averaged examples, about
25 minutes; the clone's mean online accuracy over 2,000 steps then came
within 1 point of the SGD it imitates on MNIST and Fashion-MNIST.

Scaling. With the logit gain G, the reduction over inputs (1 for "sum", A for
"mean") and the cell's own step size s (``update_scale``), a cell holding w~
acts as the weight W = target_scale * G * w~ / A_red of an SGD layer on
tanh(x) with learning rate lr = target_scale * G * s / A_red. ``clone_config``
picks G from the learning rate to imitate; changing G later changes the
imitated learning rate without retraining.

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

from ..model.config import BatchAverage, Reduction, VSMLConfig
from ..model.params import Params, check_params, init_params
from ..options import from_plain, to_plain
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


@dataclass(frozen=True)
class CloneOptions:
    """Every knob of backprop cloning.

    Attributes:
        state_size: N of the cloned cell (32 in the paper's cloning runs).
        msg_size: M.
        micro_ticks: LSTM updates per layer visit.
        weight_unit: the unit of c that holds the scaled weight w~ (directly
            supervised; the encoded initial state writes w~ into it).
        sgd_lr: the learning rate of the imitated online SGD (sets the logit gain).
        update_scale: s, the cell's own step: w~ <- w~ - s * tanh(x) * e (the
            paper's "gradient-update target norm 1e-3").
        target_scale: forward and backward targets are scaled up by this (h is
            bounded in (-1, 1)); the weight is stored scaled down by it.
        reduction: pooling of cell messages over the grid in the clone's
            config. "sum" makes the imitated learning rate independent of the
            number of inputs; "mean" is the reference default and ties the
            gain to ``deploy_inputs``.
        deploy_inputs: A the gain is set for when ``reduction`` is "mean".
        init_gain: initial effective weights W_0 have std about init_gain / sqrt(A).
        batch_average: state averaging over the examples of one learner in the
            clone's config ("full" as in the paper's cloning experiments).
        x_std: std of the random inputs (the paper's "random data std 2").
        const_x_prob: share of problems whose input is mostly one constant (a
            background pixel, lit now and then) instead of i.i.d. draws.
        err_classes: errors are drawn as softmax(z)[0] - [label == 0] of a
            softmax over this many classes.
        err_logit_std_max: the random logits z have a per-problem std uniform in [0, this].
        w_std_min: smallest per-problem std of the initial stored weights w~_0.
        w_std_max: largest one (log-uniform in between).
        lr: Adam learning rate.
        lr_final: learning rate reached at ``decay_iterations`` (cosine); then constant.
        decay_iterations: length of the cosine decay; 0 keeps ``lr`` constant.
        batch: cells per update, about P * E (P = G * (batch // (E * G)) problems, at least G).
        examples: E per update, cycled over iterations (E > 1: the cloning
            episodes average the state over E examples, like a batched deployment).
        beta: Smooth-L1 transition point.
        fwd_weight: weight of the forward-output loss.
        fwd_centered_weight: weight of the forward-output loss after removing
            each row's mean (the part the softmax of one layer sees).
        row_size: G problems share one input stream (like the B cells of one
            input); the centered loss compares within rows.
        weight_weight: weight of the stored-weight loss (in units of one update).
        bwd_weight: weight of the backward-output loss (deep clones need it).
        grad_clip: clip the gradient norm to this (None: no clipping).
        stage1_iterations: updates on fresh episodes before the long-horizon pool.
        stage1_steps: T of a stage-1 episode.
        pool_size: Q problems whose states carry over in stage 2 (a multiple of row_size).
        window: T of a stage-2 window (backpropagation is truncated there).
        mean_age: a pool problem restarts with probability window / mean_age
            after each window (ages roughly exponential with this mean, in steps).
        max_age: and always once it is this many steps old.
    """

    state_size: int = 32
    msg_size: int = 8
    micro_ticks: int = 2
    weight_unit: int = 0
    sgd_lr: float = 0.01
    update_scale: float = 1e-3
    target_scale: float = 20.0
    reduction: Reduction = "sum"
    deploy_inputs: int = 784
    init_gain: float = 1.0
    batch_average: BatchAverage = "full"
    x_std: float = 2.0
    const_x_prob: float = 0.25
    err_classes: int = 10
    err_logit_std_max: float = 4.0
    w_std_min: float = 1e-3
    w_std_max: float = 0.05
    lr: float = 5e-3
    lr_final: float = 5e-4
    decay_iterations: int = 5000
    batch: int = 500
    examples: tuple[int, ...] = (1, 1, 1, 16)
    beta: float = 1.0
    fwd_weight: float = 0.25
    fwd_centered_weight: float = 1.0
    row_size: int = 10
    weight_weight: float = 1.0
    bwd_weight: float = 0.25
    grad_clip: float | None = 1.0
    stage1_iterations: int = 500
    stage1_steps: int = 20
    pool_size: int = 2000
    window: int = 20
    mean_age: float = 1000.0
    max_age: int = 4000

    def __post_init__(self) -> None:
        object.__setattr__(self, "examples", tuple(int(e) for e in self.examples))
        errors = []
        if not 0 <= self.weight_unit < self.state_size:
            errors.append(f"weight_unit must be in [0, {self.state_size}), got {self.weight_unit}")
        for name in ("sgd_lr", "update_scale", "target_scale", "x_std", "lr", "beta", "w_std_min", "mean_age"):
            if getattr(self, name) <= 0:
                errors.append(f"{name} must be > 0, got {getattr(self, name)}")
        if self.w_std_max < self.w_std_min:
            errors.append(f"w_std_max must be >= w_std_min, got {self.w_std_max} < {self.w_std_min}")
        if not self.examples or min(self.examples) < 1:
            errors.append(f"examples must be a non-empty tuple of ints >= 1, got {self.examples}")
        elif self.batch < max(self.examples):
            errors.append(f"batch must be >= max(examples) = {max(self.examples)}, got {self.batch}")
        if self.row_size < 1 or self.pool_size % self.row_size:
            errors.append(f"pool_size ({self.pool_size}) must be a multiple of row_size ({self.row_size}) >= 1")
        if self.err_classes < 2:
            errors.append(f"err_classes must be >= 2, got {self.err_classes}")
        if min(self.stage1_steps, self.window, self.pool_size, self.max_age) < 1:
            errors.append("stage1_steps, window, pool_size and max_age must be >= 1")
        if errors:
            raise ValueError("invalid CloneOptions: " + "; ".join(errors))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict (tuples become lists; ``vsml_train.options.to_plain``)."""
        return to_plain(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CloneOptions:
        """Inverse of ``to_dict``; unknown keys raise ``ValueError`` (``vsml_train.options.from_plain``)."""
        return from_plain(cls, d)


def reduction_inputs(options: CloneOptions) -> int:
    """A_red: 1 for "sum", ``deploy_inputs`` for "mean"."""
    return options.deploy_inputs if options.reduction == "mean" else 1


def logit_gain(options: CloneOptions, sgd_lr: float | None = None) -> float:
    """G = lr * A_red / (target_scale * s): the output gain that imitates SGD with ``sgd_lr``."""
    lr = options.sgd_lr if sgd_lr is None else sgd_lr
    return lr * reduction_inputs(options) / (options.target_scale * options.update_scale)


def weight_factor(config: VSMLConfig, options: CloneOptions, n_features: int) -> float:
    """W / w~ = target_scale * G / A_red: effective SGD weight per stored weight."""
    a_red = n_features if config.reduction == "mean" else 1
    return options.target_scale * config.output_gain / a_red


def implied_sgd_lr(config: VSMLConfig, options: CloneOptions, n_features: int) -> float:
    """The learning rate a clone with this config imitates on ``n_features`` inputs."""
    return weight_factor(config, options, n_features) * options.update_scale


def clone_config(options: CloneOptions) -> VSMLConfig:
    """The VSMLConfig of a cloned backprop.

    One dense layer, backward-pass schedule (ticks on (x, 0), read, ticks on
    (x, e)), no label input (the cell only ever sees errors), encoded initial
    weight, the logit gain of ``logit_gain`` and an initial-state scale that
    gives effective initial weights of std about init_gain / sqrt(A).
    """
    gain = logit_gain(options)
    # W_0 = target_scale * G / A_red * z * init_scale / sqrt(A); want init_gain * z / sqrt(A)
    init_scale = options.init_gain * reduction_inputs(options) / (options.target_scale * gain)
    return VSMLConfig(
        state_size=options.state_size,
        msg_size=options.msg_size,
        micro_ticks=options.micro_ticks,
        hidden=(),
        feed_label=False,
        backward_pass=True,
        layer_norm=False,
        output_channel=1,
        output_gain=gain,
        reduction=options.reduction,
        init_mode="encoded",
        init_scale=init_scale,
        clip=4.0,
        batch_average=options.batch_average,
    )


def check_clone_config(config: VSMLConfig, options: CloneOptions) -> None:
    """Raise ``ValueError`` listing what makes ``config`` unusable for cloning."""
    errors = []
    if config.hidden:
        errors.append(f"one layer only (hidden=()), got hidden={config.hidden}")
    if not config.backward_pass:
        errors.append("backward_pass must be True (the cloned schedule)")
    if config.init_mode != "encoded":
        errors.append("init_mode must be 'encoded'")
    if config.feed_label:
        errors.append("feed_label must be False (the cell is taught on errors only)")
    if config.n_extra_inputs:
        errors.append("no extra cell inputs (coord_inputs, time_input, layer_input)")
    if config.state_size != options.state_size or config.msg_size != options.msg_size:
        errors.append(
            f"state/message size {config.state_size}/{config.msg_size} differ from the options' "
            f"{options.state_size}/{options.msg_size}"
        )
    if errors:
        raise ValueError("config is not a clone config: " + "; ".join(errors) + " (build it with clone_config)")


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
