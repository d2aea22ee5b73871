"""The Meta RNN baseline: one LSTM fed [x_t, e_{t-1}, y_{t-1}] (reference section 7).

What VSML's weight sharing buys is measured against this: a plain LSTM of 128
units that sees the input, the error of its previous prediction and the
previous label, and is meta-trained exactly like VSML's BPTT learner (same
task mix, same meta-loss: mean online cross-entropy, same optimiser). Its
weights are specific to one input size A and one number of classes B, so it
is meta-trained on raw 784-pixel MNIST (labels permuted per episode, so it
has to learn each stream's labelling online) and can only be evaluated on
784-input, 10-class tasks; other shapes raise a ``ValueError``.

One step for stream s at time t::

    u_t      = [x_t, e_{t-1}, onehot(y_{t-1})]        # [A + 2B]
    h_t, c_t = LSTMCell(u_t, (h_{t-1}, c_{t-1}))      # [H]
    logits_t = W_out h_t + b_out                       # [B], made before y_t is seen
    e_t      = softmax(logits_t) - onehot(y_t)        # the error fed back next step

``vsml-meta-rnn --out DIR`` trains it (``MetaRNNOptions``: the ``bptt-cpu``
preset's budget by default) and writes ``DIR/meta_rnn.pt``; ``vsml-eval
MODEL --meta-rnn DIR/meta_rnn.pt`` puts it in the table. Runs resume
bit-exactly from ``DIR/checkpoint.pt`` (episodes are a pure function of
(seed, iteration), the initial weights of the seed).

Dimension letters: T steps, S streams, A inputs, B classes, H hidden units.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import io
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .evaluation.learners import check_streams
from .files import atomic_write_bytes
from .methods.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .methods.runner import CHECKPOINT, MetricsLog
from .methods.tasks import TaskOptions, TaskSource

FORMAT = "vsml-meta-rnn"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class MetaRNNConfig:
    """The Meta RNN's shape.

    Attributes:
        n_features: A, the input size it is built for.
        n_classes: B.
        hidden: H, LSTM units (the reference's 128).
    """

    n_features: int = 784
    n_classes: int = 10
    hidden: int = 128

    def __post_init__(self) -> None:
        if self.n_features < 1 or self.n_classes < 2 or self.hidden < 1:
            raise ValueError(f"need n_features >= 1, n_classes >= 2, hidden >= 1; got {self}")


class MetaRNN(nn.Module):
    """LSTM 128 fed [x, e_prev, y_prev]; ``forward`` runs S streams online.

    Args:
        config: ``MetaRNNConfig``.
        seed: seeds the initial weights (PyTorch's default LSTM / Linear init).
    """

    def __init__(self, config: MetaRNNConfig, seed: int = 0) -> None:
        super().__init__()
        self.config = config
        a, b, h = config.n_features, config.n_classes, config.hidden
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.cell = nn.LSTMCell(a + 2 * b, h)
            self.head = nn.Linear(h, b)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """x [T, S, A] float, y [T, S] int64 -> logits [T, S, B] (logits[t] never depends on y[t])."""
        t_steps, s, a = x.shape
        b, h = self.config.n_classes, self.config.hidden
        if a != self.config.n_features:
            raise ValueError(f"this Meta RNN was built for {self.config.n_features} inputs, got {a}")
        w_ih = self.cell.weight_ih
        # the input part of the gate pre-activations for all steps at once: [T, S, 4H]
        gx = x @ w_ih[:, :a].T + self.cell.bias_ih + self.cell.bias_hh
        w_fb = w_ih[:, a:]  # [4H, 2B]: weights of [e_prev, y_prev]
        hx = x.new_zeros(s, h)
        cx = x.new_zeros(s, h)
        fb = x.new_zeros(s, 2 * b)
        onehot = torch.nn.functional.one_hot(y, b).to(x.dtype)  # [T, S, B]
        out = []
        for t in range(t_steps):
            gates = gx[t] + fb @ w_fb.T + hx @ self.cell.weight_hh.T  # [S, 4H]
            i, f, g, o = gates.chunk(4, dim=-1)
            cx = torch.sigmoid(f) * cx + torch.sigmoid(i) * torch.tanh(g)
            hx = torch.sigmoid(o) * torch.tanh(cx)
            logits = self.head(hx)  # [S, B]
            out.append(logits)
            fb = torch.cat([torch.softmax(logits, -1) - onehot[t], onehot[t]], -1)
        return torch.stack(out)


@dataclass(frozen=True)
class MetaRNNOptions:
    """Meta-training of the Meta RNN: the ``bptt-cpu`` preset's budget by default.

    Attributes:
        hidden: H.
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
        return json.loads(json.dumps(dataclasses.asdict(self)))


def online_cross_entropy(logits: Tensor, y: Tensor) -> Tensor:
    """Mean cross-entropy of logits [T, S, B] against labels [T, S]."""
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


class MetaRNNTrainer:
    """BPTT on whole episodes with Adam; state_dict / load_state_dict resume bit-exactly.

    Args:
        options: ``MetaRNNOptions``.
        seed: the run's seed (initial weights and episodes).
        tasks: a ``TaskSource`` (default: the data-layer mix of ``options.tasks``).
        n_features, n_classes: A and B of the tasks.
    """

    def __init__(
        self,
        options: MetaRNNOptions,
        seed: int,
        tasks: TaskSource | None = None,
        n_features: int = 784,
        n_classes: int = 10,
    ) -> None:
        from .methods.base import default_tasks

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

    def state_dict(self) -> dict[str, Any]:
        return {"model": copy.deepcopy(self.model.state_dict()), "adam": copy.deepcopy(self.opt.state_dict())}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["adam"])


def save_meta_rnn(path: str | Path, model: MetaRNN, meta: dict[str, Any]) -> None:
    """Write a Meta RNN file atomically (loads with ``weights_only=True``)."""
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": dataclasses.asdict(model.config),
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "meta": json.loads(json.dumps(meta, default=str)),
    }
    buf = io.BytesIO()
    torch.save(payload, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_meta_rnn(path: str | Path) -> tuple[MetaRNN, dict[str, Any]]:
    """Read a Meta RNN file; ``ValueError`` naming the problem if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"Meta RNN file {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{path} is not a readable Meta RNN file (corrupt or truncated?): {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not a Meta RNN file (no 'format': '{FORMAT}' entry)")
    if payload.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path} has format_version {payload.get('format_version')}, this reads {FORMAT_VERSION}")
    try:
        model = MetaRNN(MetaRNNConfig(**payload["config"]))
        model.load_state_dict(payload["state"])
    except (KeyError, TypeError, RuntimeError, ValueError) as exc:
        raise ValueError(f"{path}: inconsistent Meta RNN file: {exc}") from exc
    return model, dict(payload.get("meta", {}))


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
    """Meta-train into ``out`` (checkpoint.pt, metrics.jsonl, meta_rnn.pt); returns the model path.

    A resumed run must have the same options and seed, except ``iterations``,
    which may grow (continue a finished run for longer).
    """
    from tqdm import tqdm

    torch.set_num_threads(options.threads)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / CHECKPOINT
    trainer = MetaRNNTrainer(options, seed, tasks, n_features, n_classes)
    # what a resumed run must share with the checkpoint: everything but the iteration count
    spec = {"options": {**options.to_dict(), "iterations": None}, "seed": seed}
    start, wall = 0, 0.0
    if resume:
        try:
            ck = load_checkpoint(ckpt_path)
        except CheckpointError as exc:
            raise SystemExit(f"vsml-meta-rnn: --resume: {exc}") from exc
        if ck["method"] != "meta-rnn" or ck["spec"] != spec:
            raise SystemExit(f"vsml-meta-rnn: {ckpt_path} was written with other options or seed")
        trainer.load_state_dict(ck["trainer"])
        start, wall = int(ck["iteration"]), float(ck["wall_s"])
    elif ckpt_path.exists():
        raise SystemExit(f"vsml-meta-rnn: {out} already holds a run; pass --resume or another --out")
    log = MetricsLog(out, start, enabled=True)

    def checkpoint(done: int) -> None:
        payload = {"method": "meta-rnn", "spec": spec, "iteration": done, "wall_s": wall}
        save_checkpoint(ckpt_path, {**payload, "trainer": trainer.state_dict()})

    bar = tqdm(total=options.iterations, initial=start, desc="meta-rnn", dynamic_ncols=True)
    try:
        for it in range(start, options.iterations):
            t0 = time.perf_counter()
            m = trainer.step(it)
            wall += time.perf_counter() - t0
            log.write(it, m)
            bar.set_postfix(loss=f"{m['loss']:.4f}")
            bar.update(1)
            if (it + 1) % options.checkpoint_every == 0 or it + 1 == options.iterations:
                checkpoint(it + 1)
    finally:
        bar.close()
        log.close()
    model_path = out / "meta_rnn.pt"
    meta = {"options": options.to_dict(), "seed": seed, "train_wall_s": round(wall, 1), "threads": options.threads}
    save_meta_rnn(model_path, trainer.model, meta)
    return model_path


def main(argv: list[str] | None = None) -> int:
    """`vsml-meta-rnn`: meta-train the Meta RNN baseline."""
    ap = argparse.ArgumentParser(prog="vsml-meta-rnn", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="output folder")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--iterations", type=int, default=MetaRNNOptions.iterations)
    ap.add_argument("--episodes", type=int, default=MetaRNNOptions.episodes)
    ap.add_argument("--lr", type=float, default=MetaRNNOptions.lr)
    ap.add_argument("--hidden", type=int, default=MetaRNNOptions.hidden)
    ap.add_argument("--threads", type=int, default=MetaRNNOptions.threads)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument(
        "--keep-labels",
        action="store_true",
        help="do not permute labels per episode (it can then memorise MNIST instead of learning online)",
    )
    ap.add_argument("--resume", action="store_true")
    args = ap.parse_args(argv)
    tasks = dataclasses.replace(MetaRNNOptions().tasks, data_dir=args.data_dir, permute_labels=not args.keep_labels)
    options = MetaRNNOptions(
        hidden=args.hidden,
        iterations=args.iterations,
        episodes=args.episodes,
        lr=args.lr,
        tasks=tasks,
        threads=args.threads,
    )
    path = train_meta_rnn(options, args.seed, args.out, resume=args.resume)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
