"""Held-out checks of a cloned backprop: regression errors and online learning next to SGD.

``clone_errors`` measures the regression (reference 6.1) on random problems
the trainer never drew. ``compare_with_sgd`` runs the cloned learner online as
a full layer through the deployed rollout (``run_episode``) next to the online
SGD it imitates, on the same streams, from the same initial weights, with the
learning rate its config implies (reference section 7 summaries).

Dimension letters: T steps, S streams (independent learners), E examples per
step, A inputs, B classes, P random problems.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ..model.config import VSMLConfig
from ..model.episode import run_episode
from ..model.params import Params
from ..model.state import init_noise
from ..seeds import CLONE_COMPARE_OFFSET, CLONE_HELD_OUT
from .clone import CloneOptions, _iteration_generator, implied_sgd_lr, weight_factor
from .clone_objective import (
    clone_rollout,
    expand_examples,
    fresh_cells,
    sample_data,
    sample_tasks,
    sample_weights,
    sgd_targets,
)

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


def sample_streams(
    features: Tensor, labels: Tensor, steps: int, streams: int, examples: int, gen: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Streams of distinct examples, standardised with the MNIST scalar statistics.

    Args:
        features: [N, A] in [0, 1]; labels: [N] ints.
    Returns:
        x [T, S, E, A] and y [T, S, E].
    """
    n = features.shape[0]
    need = steps * examples
    if need > n:
        raise ValueError(f"a stream needs {need} distinct examples, the data has {n}")
    idx = torch.stack([torch.randperm(n, generator=gen)[:need] for _ in range(streams)], dim=1)  # [T * E, S]
    idx = idx.reshape(steps, examples, streams).transpose(1, 2)  # [T, S, E]
    x = (features[idx].float() - MNIST_MEAN) / MNIST_STD
    return x, labels[idx].long()


def online_sgd(w0: Tensor, x: Tensor, y: Tensor, lr: float) -> Tensor:
    """Online (mini-batch over E) SGD of a linear softmax layer on tanh(x), test-then-train.

    Args:
        w0: [S, A, B] initial weights; x: [T, S, E, A]; y: [T, S, E].
    Returns:
        logits [T, S, E, B], each made before its label was used.
    """
    w = w0.clone()
    outs = []
    b = w.shape[-1]
    for t in range(x.shape[0]):
        tx = torch.tanh(x[t])  # [S, E, A]
        logits = tx @ w  # [S, E, B]
        outs.append(logits)
        err = torch.softmax(logits, -1) - torch.nn.functional.one_hot(y[t], b).to(logits.dtype)
        w = w - lr * tx.transpose(1, 2) @ err / x.shape[2]
    return torch.stack(outs)


def online_summary(logits: Tensor, y: Tensor) -> dict[str, Any]:
    """Online accuracy summaries (reference section 7): [T, S, E, B], [T, S, E] ->
    mean, first 100 steps, last 200 steps, and the per-stream means."""
    correct = (logits.argmax(-1) == y).float()  # [T, S, E]
    per_step = correct.mean((1, 2))
    per_stream = correct.mean((0, 2))
    s = per_stream.shape[0]
    half_width = 1.96 * float(per_stream.std()) / math.sqrt(s) if s > 1 else float("nan")
    return {
        "mean": float(per_step.mean()),
        "first100": float(per_step[:100].mean()),
        "last200": float(per_step[-200:].mean()),
        "mean_ci95": half_width,
        "per_stream_mean": [float(v) for v in per_stream],
    }


@torch.no_grad()
def compare_with_sgd(
    params: Params,
    config: VSMLConfig,
    dataset_features: Tensor,
    labels: Tensor,
    steps: int = 2000,
    streams: int = 8,
    seed: int = 0,
    *,
    examples: int = 1,
    options: CloneOptions | None = None,
    n_classes: int | None = None,
) -> dict[str, Any]:
    """The cloned learner online next to the SGD it imitates, on the same streams.

    The clone runs as one full A x B layer through ``run_episode`` (the
    deployed rollout; E examples per step share one state, averaged as the
    config says). SGD starts from the clone's effective initial weights
    (same initial-state draw) and uses the implied learning rate.

    Args:
        dataset_features: [N, A] floats in [0, 1] (or uint8 [N, 28, 28]).
        labels: [N] ints in [0, B).
        options: the cloning options the model was made with (defaults if None).
    Returns:
        {"clone": summary, "sgd": summary, "sgd_lr": lr, "steps", "streams", "examples"}
        with summaries from ``online_summary``.
    """
    o = options or CloneOptions()
    feats = torch.as_tensor(dataset_features)
    if feats.dtype == torch.uint8:
        feats = feats.float() / 255.0
    feats = feats.reshape(feats.shape[0], -1)
    labels = torch.as_tensor(labels).long()
    b = int(labels.max()) + 1 if n_classes is None else n_classes
    a = feats.shape[1]
    gen = torch.Generator().manual_seed(seed + CLONE_COMPARE_OFFSET)
    x, y = sample_streams(feats, labels, steps, streams, examples, gen)
    dtype = params["w_gates"].dtype
    x = x.to(dtype)
    clone_logits = run_episode(params, config, x, y, b, seed=seed).logits
    # the same initial draw run_episode made: w~_0 = z * init_scale / sqrt(A), W_0 = factor * w~_0
    noise = init_noise(config, a, b, streams, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    w0 = noise[0][..., 0] * config.init_scale / math.sqrt(a) * weight_factor(config, o, a)
    lr = implied_sgd_lr(config, o, a)
    sgd_logits = online_sgd(w0, x, y, lr)
    return {
        "clone": online_summary(clone_logits, y),
        "sgd": online_summary(sgd_logits, y),
        "sgd_lr": lr,
        "steps": steps,
        "streams": streams,
        "examples": examples,
    }
