"""Backprop cloning: its options and the scaling that ties a clone to the SGD it imitates (docs/model.md §6.1).

``CloneOptions`` holds every knob of cloning; ``clone_config`` derives the
model config of a clone from them. Scaling: with the logit gain G, the
reduction over inputs (1 for "sum", A for "mean") and the cell's own step
size s (``update_scale``), a cell holding w~ acts as the weight
W = target_scale * G * w~ / A_red of an SGD layer on tanh(x) with learning
rate lr = target_scale * G * s / A_red. ``clone_config`` picks G from the
learning rate to imitate; changing G later changes the imitated learning
rate without retraining.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..model.config import BatchAverage, Reduction, VSMLConfig
from ..options import from_plain, to_plain


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
    if config.reduction not in ("mean", "sum"):
        errors.append(f"reduction must be 'mean' or 'sum' while cloning, got {config.reduction!r}")
    if config.state_size != options.state_size or config.msg_size != options.msg_size:
        errors.append(
            f"state/message size {config.state_size}/{config.msg_size} differ from the options' "
            f"{options.state_size}/{options.msg_size}"
        )
    if errors:
        raise ValueError("config is not a clone config: " + "; ".join(errors) + " (build it with clone_config)")
