"""Meta-training the Meta RNN baseline by backpropagation through episodes (docs/model.md §6.6).

The same task mix and meta-loss as VSML's BPTT learner (mean online
cross-entropy, Adam, gradient-norm clip), on raw 784-pixel MNIST with labels
permuted per episode, so that it has to learn each stream's labelling online
(the ``bptt-cpu`` preset without its 32-dim projection, which a fixed-size
LSTM could not be evaluated after). ``MetaRNNTrainer`` is a
``methods.base.Trainer``: ``train_meta_rnn`` runs it through the one run loop
(``methods.runner.train``: progress, metrics log, checkpoints, bit-exact
resume) and writes ``OUT/meta_rnn.pt``.

Dimension letters (docs/model.md §8): T steps, S streams, A inputs, B classes, U
LSTM units.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..model.meta_rnn import MetaRNN, MetaRNNConfig, save_meta_rnn
from ..options import to_plain
from .base import default_tasks
from .checkpoint import CheckpointError
from .runner import RunOptions, train
from .tasks import TaskOptions, TaskSource

MODEL = "meta_rnn.pt"


@dataclass(frozen=True)
class MetaRNNOptions:
    """Meta-training of the Meta RNN: the ``bptt-cpu`` preset's budget by default.

    Attributes:
        hidden: U, LSTM units.
        iterations: meta-updates.
        episodes: S episodes per update.
        lr: Adam learning rate.
        grad_clip: global gradient-norm clip.
        tasks: the episode mix (raw 784-pixel MNIST, labels permuted, 100 then
            200 steps: ``bptt-cpu`` without its 32-dim projection, which a
            fixed-size LSTM could not be evaluated after).
        checkpoint_every: updates between checkpoints.
        threads: torch threads.
    """

    hidden: int = 128
    iterations: int = 500
    episodes: int = 16
    lr: float = 2e-3
    grad_clip: float = 25.0
    tasks: TaskOptions = field(
        default_factory=lambda: TaskOptions(
            datasets=("mnist",), steps=100, long_steps=200, long_from=300, permute_labels=True, block=16
        )
    )
    checkpoint_every: int = 25
    threads: int = 1

    def __post_init__(self) -> None:
        if self.iterations < 1 or self.episodes < 1 or self.lr <= 0 or self.grad_clip <= 0:
            raise ValueError(f"need iterations, episodes >= 1 and lr, grad_clip > 0; got {self}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict (``vsml_train.options.to_plain``)."""
        return to_plain(self)


def online_cross_entropy(logits: Tensor, y: Tensor) -> Tensor:
    """Mean cross-entropy of logits [T, S, B] against labels [T, S]."""
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


class MetaRNNTrainer:
    """BPTT on whole episodes with Adam, as a ``methods.base.Trainer``; resumes bit-exactly.

    Args:
        options: ``MetaRNNOptions``.
        seed: the run's seed (initial weights and episodes).
        tasks: a ``TaskSource`` (default: the data-layer mix of ``options.tasks``).
        n_features, n_classes: A and B of the tasks.
    """

    name = "meta-rnn"

    def __init__(
        self,
        options: MetaRNNOptions,
        seed: int,
        tasks: TaskSource | None = None,
        n_features: int = 784,
        n_classes: int = 10,
    ) -> None:
        self.options, self.seed = options, seed
        self.config = MetaRNNConfig(n_features, n_classes, options.hidden)
        self.model = MetaRNN(self.config, seed)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=options.lr)
        self.tasks = default_tasks(tasks, options.tasks, seed)

    def step(self, iteration: int) -> dict[str, float]:
        """Meta-update ``iteration``: returns loss and gradient norm."""
        ep = self.tasks.sample(iteration, 0, self.options.episodes)
        if ep.x.shape[2] != 1:
            raise ValueError("the Meta RNN learns one example per step (tasks.examples must be 1)")
        logits = self.model(ep.x[:, :, 0], ep.y[:, :, 0])
        loss = online_cross_entropy(logits, ep.y[:, :, 0])
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.options.grad_clip)
        finite = bool(torch.isfinite(norm))
        if finite:
            self.opt.step()
        return {"loss": float(loss.detach()), "grad_norm": float(norm), "skipped": float(not finite)}

    def params(self) -> dict[str, Tensor]:
        """The current weights (detached copies)."""
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def state_dict(self) -> dict[str, Any]:
        return {"model": copy.deepcopy(self.model.state_dict()), "adam": copy.deepcopy(self.opt.state_dict())}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["adam"])


def train_meta_rnn(
    options: MetaRNNOptions,
    seed: int,
    out: Path,
    *,
    resume: bool = False,
    tasks: TaskSource | None = None,
    n_features: int = 784,
    n_classes: int = 10,
) -> Path:
    """Meta-train into ``out`` (checkpoint.pt, metrics.jsonl, meta_rnn.pt) through the run loop; returns the model path.

    A resumed run must have the same options and seed, except ``iterations``,
    which may grow (continue a finished run for longer).
    """
    trainer = MetaRNNTrainer(options, seed, tasks, n_features, n_classes)
    run = RunOptions(
        iterations=options.iterations,
        seed=seed,
        checkpoint_every=options.checkpoint_every,
        eval_every=-1,
        eval_datasets=(),
        threads=options.threads,
    )
    # what a resumed run must share with the checkpoint: everything but the iteration count
    spec = {"options": {**options.to_dict(), "iterations": None}, "seed": seed}

    def write_model(path: Path, info: dict[str, Any]) -> None:
        save_meta_rnn(path, trainer.model, {"options": options.to_dict(), "threads": options.threads, **info})

    try:
        result = train(trainer, run, out, spec=spec, resume=resume, model_name=MODEL, write_model=write_model)
    except CheckpointError as exc:
        raise SystemExit(f"vsml-meta-rnn: {exc}") from exc
    if result.interrupted:
        raise SystemExit(
            f"vsml-meta-rnn: interrupted after iteration {result.iteration}; checkpoint saved in {out}. "
            "Continue with --resume."
        )
    return out / MODEL
