"""The online SGD a cloned backprop imitates, as an online learner (docs/model.md §6.1).

A linear softmax layer on tanh(x), trained online by (mini-batch over E) SGD
from given initial weights, test-then-train: what one cloned VSML layer is
taught to be. ``ImitatedSGD`` puts it behind the
``OnlineLearner`` protocol so that the harness scores it on the same streams
as the clone; ``online_summary`` is the harness's summary of such a run.

Dimension letters (docs/model.md §8): T steps, S streams, E examples per step,
A inputs, B classes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from .learners import check_streams
from .metrics import FIRST_STEPS, LAST_STEPS, OnlineSummary, summarize


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


def to_steps(x: Tensor, examples: int) -> Tensor:
    """Streams [T * E, S, ...] as steps [T, S, E, ...] (E consecutive examples per step)."""
    t, s = x.shape[0] // examples, x.shape[1]
    return x.reshape(t, examples, s, *x.shape[2:]).transpose(1, 2)


def to_streams(x: Tensor) -> Tensor:
    """Steps [T, S, E, ...] as streams [T * E, S, ...] (the inverse of ``to_steps``)."""
    t, s, e = x.shape[:3]
    return x.transpose(1, 2).reshape(t * e, s, *x.shape[3:])


class ImitatedSGD:
    """``online_sgd`` from fixed initial weights as an ``OnlineLearner`` (E examples per step).

    Args:
        w0: [S, A, B] initial weights, one matrix per stream.
        lr: the learning rate.
        examples_per_step: E; consecutive examples of a stream form one step.
    """

    def __init__(self, w0: Tensor, lr: float, examples_per_step: int = 1, name: str = "sgd") -> None:
        self.w0, self.lr, self.examples_per_step, self._name = w0, lr, examples_per_step, name

    @property
    def name(self) -> str:
        return self._name

    def run(self, x: np.ndarray, y: np.ndarray, n_classes: int, seed: int) -> np.ndarray:
        """x [T * E, S, A], y [T * E, S] -> logits float32 [T * E, S, B]; deterministic (``seed`` unused)."""
        x, y = check_streams(x, y, n_classes)
        e = self.examples_per_step
        if x.shape[0] % e:
            raise ValueError(f"T = {x.shape[0]} is not a multiple of examples_per_step = {e}")
        xs = to_steps(torch.from_numpy(x).to(self.w0.dtype), e)
        logits = online_sgd(self.w0, xs, to_steps(torch.from_numpy(y), e), self.lr)
        return to_streams(logits).numpy().astype(np.float32, copy=False)


def summary_dict(summary: OnlineSummary) -> dict[str, Any]:
    """The few figures a clone report shows: mean, first / last window, the mean's 95% half-width, per stream."""
    return {
        "mean": summary.accuracy.mean,
        "first100": summary.first_accuracy.mean,
        "last200": summary.last_accuracy.mean,
        "mean_ci95": summary.accuracy.half_width,
        "per_stream_mean": list(summary.accuracy.values),
    }


def online_summary(logits: Tensor, y: Tensor) -> dict[str, Any]:
    """Online accuracy of a run of steps [T, S, E, B], [T, S, E] (``metrics.summarize``, Student-t intervals).

    The windows count steps (first 100, last 200 steps of E examples each).
    """
    e = logits.shape[2]
    s = summarize(
        to_streams(logits).detach().cpu().numpy(),
        to_streams(y).cpu().numpy(),
        first_steps=FIRST_STEPS * e,
        last_steps=LAST_STEPS * e,
    )
    return summary_dict(s)
