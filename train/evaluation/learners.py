"""The online-learner interface of the evaluation, and VSML behind it (docs/model.md §7).

An online learner takes S independent streams at once and returns, for every
step, the logits it predicted for x_t BEFORE it was shown y_t (test, then
train). Each stream starts from a fresh learner; streams never share anything.
The baselines (``baselines.py``) and VSML (``VSMLLearner``) implement the same
``OnlineLearner`` protocol, so the harness scores them on the same streams.

Dimension letters: T steps, S streams, E examples per VSML step, A features,
B classes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from ..model.config import VSMLConfig
from ..model.episode import make_step_fn, run_episode
from ..model.meta_rnn import MetaRNN, load_meta_rnn
from ..model.model_file import load_model
from ..model.params import Params, check_params
from ..model.step import Impl


@runtime_checkable
class OnlineLearner(Protocol):
    """Anything that learns online from S streams in parallel."""

    @property
    def name(self) -> str:
        """A short label (used as the key of results)."""
        ...

    def run(self, x: np.ndarray, y: np.ndarray, n_classes: int, seed: int) -> np.ndarray:
        """Learn each stream from scratch, one example at a time.

        Args:
            x: float32 [T, S, A] inputs.
            y: int64 [T, S] labels in [0, n_classes).
            n_classes: B.
            seed: seeds the learner's initialisation (same seed, same logits).
        Returns:
            float32 [T, S, B] logits; logits[t, s] depends on x[:t+1, s] and
            y[:t, s] only (never on y[t, s] or on other streams).
        """
        ...


def check_streams(x: np.ndarray, y: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Validate a learner's input; return x float32 [T, S, A] and y int64 [T, S]."""
    x = np.asarray(x)
    y = np.asarray(y)
    if x.ndim != 3 or y.shape != x.shape[:2]:
        raise ValueError(f"expected x [T, S, A] and y [T, S], got {x.shape} and {y.shape}")
    if min(x.shape) < 1:
        raise ValueError(f"need T, S, A >= 1, got x {x.shape}")
    if n_classes < 2:
        raise ValueError(f"n_classes must be >= 2, got {n_classes}")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be integers, got {y.dtype}")
    if y.min() < 0 or y.max() >= n_classes:
        raise ValueError(f"labels must lie in [0, {n_classes}), found {y.min()}..{y.max()}")
    return np.ascontiguousarray(x, dtype=np.float32), y.astype(np.int64, copy=False)


class VSMLLearner:
    """A VSML network with fixed V_M as an online learner (no gradients at meta-test).

    Each of the S streams is one learner (P = S) with its own fresh state.
    With ``examples_per_step`` E > 1, each stream's consecutive examples are
    grouped E at a time: step t' processes examples t'E .. t'E + E - 1 of the
    stream in parallel (one VSML learner with E examples, batch-averaged as the
    config says, docs/model.md §4). The logits of all E examples of a group
    are made before any of their labels is used, so a group is a mini-batch;
    T must be a multiple of E.

    Args:
        params: V_M with base shapes (one V_M shared by every stream).
        config: the model configuration.
        examples_per_step: E.
        name: label of the results.
        impl: "fast" or "naive" layer visits.

    Runs in float32 on the CPU under ``torch.no_grad``; the thread count is
    the caller's business (``torch.set_num_threads``).
    """

    def __init__(
        self,
        params: Params,
        config: VSMLConfig,
        examples_per_step: int = 1,
        *,
        name: str = "vsml",
        impl: Impl = "fast",
    ) -> None:
        if examples_per_step < 1:
            raise ValueError(f"examples_per_step must be >= 1, got {examples_per_step}")
        if check_params(params, config) is not None:
            raise ValueError("VSMLLearner needs one V_M with base shapes, not a population [P, ...]")
        self.params: Params = {k: v.detach().to("cpu", torch.float32) for k, v in params.items()}
        self.config = config
        self.examples_per_step = examples_per_step
        self.impl: Impl = impl
        self._name = name

    @classmethod
    def from_file(
        cls, path: str | os.PathLike[str], examples_per_step: int = 1, *, name: str | None = None
    ) -> VSMLLearner:
        """From a ``model.pt`` file (``vsml_train.model.model_file``); named after the file by default."""
        model = load_model(path)
        return cls(model.params, model.config, examples_per_step, name=name or Path(path).stem)

    @property
    def name(self) -> str:
        return self._name

    def run(self, x: np.ndarray, y: np.ndarray, n_classes: int, seed: int) -> np.ndarray:
        """``OnlineLearner.run``: x [T, S, A], y [T, S] -> logits float32 [T, S, B]."""
        x, y = check_streams(x, y, n_classes)
        t_steps, s, a = x.shape
        e = self.examples_per_step
        if t_steps % e:
            raise ValueError(f"T = {t_steps} is not a multiple of examples_per_step = {e}")
        # [T, S, A] -> [T/E, E, S, A] -> [T/E, P=S, E, A]: a step takes E consecutive examples
        xt = torch.from_numpy(x).reshape(t_steps // e, e, s, a).transpose(1, 2)
        yt = torch.from_numpy(y).reshape(t_steps // e, e, s).transpose(1, 2)

        step_fn = make_step_fn(self.config, self.impl)
        with torch.no_grad():
            out = run_episode(
                self.params, self.config, xt.contiguous(), yt.contiguous(), n_classes, seed=seed, step_fn=step_fn
            )
        # [T/E, S, E, B] -> [T/E, E, S, B] -> [T, S, B]
        logits = out.logits.transpose(1, 2).reshape(t_steps, s, n_classes)
        return logits.numpy().astype(np.float32, copy=False)

    def __repr__(self) -> str:
        return f"VSMLLearner(name={self._name!r}, examples_per_step={self.examples_per_step}, impl={self.impl!r})"


class MetaRNNLearner:
    """A meta-trained Meta RNN as an ``OnlineLearner`` (fixed weights, S streams at once)."""

    def __init__(self, model: MetaRNN, name: str = "meta-rnn") -> None:
        self.model = model.eval()
        self._name = name

    @classmethod
    def from_file(cls, path: str | Path, name: str = "meta-rnn") -> MetaRNNLearner:
        return cls(load_meta_rnn(path)[0], name)

    @property
    def name(self) -> str:
        return self._name

    def run(self, x: np.ndarray, y: np.ndarray, n_classes: int, seed: int) -> np.ndarray:
        """x [T, S, A], y [T, S] -> logits float32 [T, S, B]; deterministic (``seed`` unused)."""
        x, y = check_streams(x, y, n_classes)
        cfg = self.model.config
        if x.shape[2] != cfg.n_features or n_classes != cfg.n_classes:
            raise ValueError(
                f"this Meta RNN only runs {cfg.n_features}-input, {cfg.n_classes}-class tasks "
                f"(its weights are tied to them), got {x.shape[2]} inputs and {n_classes} classes"
            )
        with torch.no_grad():
            return self.model(torch.from_numpy(x), torch.from_numpy(y)).numpy()
