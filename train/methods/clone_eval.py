"""Held-out regression errors of a cloned backprop (docs/model.md §6.1).

``clone_errors`` measures the regression on random problems the trainer never
drew. The online comparison with the SGD it imitates goes through the
evaluation harness: ``vsml_train.clone_check.compare_with_sgd``.

Dimension letters (docs/model.md §8): T steps, P random problems (each one
learner of the rollout), E examples per step, G problems per row.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..model.config import VSMLConfig
from ..model.params import Params
from ..seeds import CLONE_HELD_OUT
from .clone import _iteration_generator
from .clone_objective import (
    clone_rollout,
    expand_examples,
    fresh_cells,
    sample_data,
    sample_tasks,
    sample_weights,
    sgd_targets,
)
from .clone_options import CloneOptions

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


def _rel_rmse(pred: Tensor, target: Tensor) -> float:
    """RMS error relative to the RMS of the target."""
    return float((pred - target).pow(2).mean().sqrt() / target.pow(2).mean().sqrt().clamp_min(1e-12))


@torch.no_grad()
def clone_errors(
    params: Params,
    config: VSMLConfig,
    options: CloneOptions,
    seed: int,
    *,
    problems: int = 250,
    steps: int = 100,
    long_steps: int = 1000,
    examples: int = 1,
) -> dict[str, float]:
    """Regression errors on held-out random problems (fresh cells, teacher from the true initial weight).

    Returns:
        fwd_rel, bwd_rel: RMS error of the forward / backward outputs relative
            to the RMS of their targets, over ``steps`` steps.
        fwd_centered_rel: the same for the forward outputs minus their row
            mean (the part one softmax layer sees).
        update_rel: RMS error of the stored weight's per-step change relative
            to the RMS of the SGD step.
        weight_err_updates: RMS error of the stored weight after ``steps``, in
            units of the update scale.
        init_err_updates: the same for the encoded initial weight.
        update_centered_rel: the same after removing each row's mean (an
            input-only drift changes every logit alike: harmless for one layer).
        long_drift_rel: after ``long_steps`` without re-anchoring, RMS of
            (stored - SGD weight) relative to the RMS of the SGD weight's total change.
        long_drift_centered_rel: the same, both centered within rows.
        long_fwd_rel: forward-output error over the last 100 of those steps.
    """
    o = options
    gen = _iteration_generator(seed, 0, stream=CLONE_HELD_OUT)  # never used by the trainer
    out: dict[str, float] = {}
    for name, t_steps in (("short", steps), ("long", long_steps)):
        rows = max(1, problems // o.row_size)
        tasks = sample_tasks(
            gen, rows, x_std=o.x_std, const_x_prob=o.const_x_prob, err_logit_std_max=o.err_logit_std_max
        )
        w0 = sample_weights(gen, rows * o.row_size, w_std_min=o.w_std_min, w_std_max=o.w_std_max)
        x, e = sample_data(gen, tasks, t_steps, examples, o.row_size, x_std=o.x_std, err_classes=o.err_classes)
        h, c = fresh_cells(params, config, w0)
        roll = clone_rollout(
            params, config, expand_examples(h, examples), expand_examples(c, examples), x, e, o.weight_unit
        )
        tgt = sgd_targets(w0, x, e, update_scale=o.update_scale, target_scale=o.target_scale)
        if name == "short":
            out["fwd_rel"] = _rel_rmse(roll.fwd, tgt.fwd)
            rows_shape = (t_steps, -1, o.row_size, examples)
            d_out, d_tgt = roll.fwd.reshape(rows_shape), tgt.fwd.reshape(rows_shape)
            out["fwd_centered_rel"] = _rel_rmse(
                d_out - d_out.mean(2, keepdim=True), d_tgt - d_tgt.mean(2, keepdim=True)
            )
            out["bwd_rel"] = _rel_rmse(roll.bwd, tgt.bwd)
            stored = torch.cat([w0.unsqueeze(0), roll.unit])  # [T + 1, P]; w0 as the encoding should store it
            out["update_rel"] = _rel_rmse(stored.diff(dim=0), tgt.w.diff(dim=0))
            d_s, d_t = (
                stored.diff(dim=0).reshape(t_steps, -1, o.row_size),
                tgt.w.diff(dim=0).reshape(t_steps, -1, o.row_size),
            )
            out["update_centered_rel"] = _rel_rmse(d_s - d_s.mean(2, keepdim=True), d_t - d_t.mean(2, keepdim=True))
            out["weight_err_updates"] = float((roll.unit[-1] - tgt.w[-1]).pow(2).mean().sqrt() / o.update_scale)
            init_err = c[:, 0, 0, 0, o.weight_unit] - w0
            out["init_err_updates"] = float(init_err.pow(2).mean().sqrt() / o.update_scale)
        else:
            change = (tgt.w[-1] - tgt.w[0]).pow(2).mean().sqrt()
            out["long_drift_rel"] = float((roll.unit[-1] - tgt.w[-1]).pow(2).mean().sqrt() / change)
            drift = (roll.unit[-1] - tgt.w[-1]).reshape(-1, o.row_size)
            delta = (tgt.w[-1] - tgt.w[0]).reshape(-1, o.row_size)
            centered = (drift - drift.mean(1, keepdim=True)).pow(2).mean().sqrt()
            out["long_drift_centered_rel"] = float(
                centered / (delta - delta.mean(1, keepdim=True)).pow(2).mean().sqrt()
            )
            out["long_fwd_rel"] = _rel_rmse(roll.fwd[-100:], tgt.fwd[-100:])
    return out
