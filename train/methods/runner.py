"""The run loop that drives every meta-training method (``methods.base.Trainer``).

``train(trainer, run, out_dir, ...)`` does, around ``trainer.step(i)``:

- a progress bar (tqdm) with the meta-loss and the throughput in cell-steps/s;
- a metrics log ``OUT/metrics.jsonl`` (one JSON object per logged iteration,
  periodic meta-test results included; TensorBoard events too when
  ``tensorboard`` is installed);
- periodic meta-test evaluation through an ``evaluate(params)`` callback (the
  meta-test is passed in: ``vsml_train.evaluation.meta_test`` builds it; the
  methods never import the evaluation);
- checkpoints ``OUT/checkpoint.pt`` every ``checkpoint_every`` iterations,
  atomic, with everything needed to resume bit-exactly (``checkpoint.py``);
- ``resume=True`` continues from the checkpoint: the parameters after
  iteration i are identical to a run that never stopped, also after a SIGKILL
  between checkpoints (the log is cut back to the checkpoint's iteration);
- Ctrl-C (SIGINT) or SIGTERM: the current iteration finishes, a checkpoint is
  saved, and the run returns cleanly (a second Ctrl-C aborts at once);
- at the end, ``OUT/model.pt`` (``save_model``) with metadata: method, data,
  seed, iterations, project version, final metrics.

With several processes (``distributed.py``) only rank 0 writes; every rank
reads the checkpoint on resume (so the folder must be shared between nodes).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..model.model_file import ModelFile, save_model
from ..model.params import Params
from ..model.step import Impl
from .base import Trainer
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .distributed import World, broadcast_flag, current_world

Evaluator = Callable[[Params], dict[str, float]]

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"
MODEL = "model.pt"


@dataclass(frozen=True)
class RunOptions:
    """How long to train and what to record.

    Attributes:
        iterations: total meta-updates of the run (a resumed run continues to this).
        seed: the run's seed (the trainer's randomness derives from it).
        checkpoint_every: write ``checkpoint.pt`` every this many iterations.
        log_every: write a metrics line every this many iterations.
        eval_every: meta-test every this many iterations (0: only at the end; <0: never).
        eval_datasets: held-out datasets of the meta-test.
        eval_split: their split ("test").
        eval_steps: online steps per meta-test stream.
        eval_streams: streams per meta-test dataset.
        threads: ``torch.set_num_threads`` (None: leave as is).
        progress: show the progress bar.
        device: where the trainer's rollouts run ("cpu", "cuda"; with several
            processes, also the torch.distributed backend's device).
        impl: the step implementation (``vsml_train.model.step.IMPLS``).
        compile: ``torch.compile`` the step.
    """

    iterations: int = 10000
    seed: int = 0
    checkpoint_every: int = 100
    log_every: int = 1
    eval_every: int = 0
    eval_datasets: tuple[str, ...] = ("fashion-mnist",)
    eval_split: str = "test"
    eval_steps: int = 500
    eval_streams: int = 4
    threads: int | None = None
    progress: bool = True
    device: str = "cpu"
    impl: Impl = "fast"
    compile: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "eval_datasets", tuple(self.eval_datasets))
        if self.iterations < 0 or self.checkpoint_every < 1 or self.log_every < 1:
            raise ValueError("need iterations >= 0, checkpoint_every >= 1, log_every >= 1")


@dataclass(frozen=True)
class TrainResult:
    """What a run ended with."""

    iteration: int
    interrupted: bool
    metrics: dict[str, float]
    model_path: Path | None


class _StopFlag:
    """SIGINT / SIGTERM set a flag; a second SIGINT raises KeyboardInterrupt."""

    def __init__(self) -> None:
        self.set = False
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread: no handlers, no clean stop
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.set and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.set = True

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


class MetricsLog:
    """JSONL metrics (and TensorBoard events when available), written by rank 0.

    Opened at iteration ``start`` > 0 (a resume), it first drops what a killed
    run logged after its checkpoint, including a line cut short by the kill.
    """

    def __init__(self, out: Path, start: int, enabled: bool) -> None:
        self.enabled = enabled
        self.path = out / METRICS
        self.tb = None
        if not enabled:
            return
        kept = []
        if start > 0 and self.path.exists():  # drop what a killed run logged after its checkpoint
            for line in self.path.read_text().splitlines():
                try:
                    if json.loads(line).get("iteration", math.inf) < start:
                        kept.append(line)
                except json.JSONDecodeError:
                    break  # a line cut by a kill
        self.path.write_text("".join(k + "\n" for k in kept))
        try:
            from torch.utils.tensorboard import SummaryWriter  # needs the optional tensorboard package

            self.tb = SummaryWriter(str(out / "tb"), purge_step=start)
        except ImportError:
            self.tb = None

    def write(self, iteration: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps({"iteration": iteration, **metrics}) + "\n")
        if self.tb is not None:
            for k, v in metrics.items():
                if isinstance(v, int | float) and math.isfinite(v):
                    self.tb.add_scalar(k, v, iteration)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def train(
    trainer: Trainer,
    run: RunOptions,
    out_dir: str | Path,
    *,
    spec: dict[str, Any],
    resume: bool = False,
    evaluate: Evaluator | None = None,
    meta: dict[str, Any] | None = None,
    world: World | None = None,
    model_name: str = MODEL,
    write_model: Callable[[Path, dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Run ``trainer`` from its current state (or its checkpoint) to ``run.iterations``.

    Args:
        trainer: a freshly built trainer (same config, options and seed as
            the checkpoint when resuming).
        run: the run options.
        out_dir: where ``checkpoint.pt``, ``metrics.jsonl`` and ``model.pt`` go.
        spec: what defines the run (config, options, seed; plain values):
            stored in the checkpoint and compared on resume.
        resume: continue from ``OUT/checkpoint.pt`` (an error if absent).
        evaluate: meta-test callback ``evaluate(params) -> metrics``.
        meta: extra metadata for ``model.pt`` (e.g. the data description).
        model_name: the file the trained model goes to, in ``out_dir``.
        write_model: ``write_model(path, metadata)`` writes it (default: a
            VSML ``model.pt`` of ``trainer.config`` and ``trainer.params()``;
            the Meta RNN writes its own file).
    Returns:
        ``TrainResult``; ``model.pt`` is written only when the run completed.
    Raises:
        CheckpointError: resume without a valid checkpoint, a checkpoint of a
            different run, or a fresh run into a folder that has one.
    """
    world = world or current_world()
    out = Path(out_dir)
    ckpt_path = out / CHECKPOINT
    if world.is_main:
        out.mkdir(parents=True, exist_ok=True)
    start = 0
    spec = json.loads(json.dumps(spec))  # plain values only, as stored
    last: dict[str, float] = {}
    if resume:
        ckpt = load_checkpoint(ckpt_path)
        if ckpt["method"] != trainer.name or ckpt["spec"] != spec:
            raise CheckpointError(
                f"{ckpt_path} was written by a different run (method {ckpt['method']!r}); resume with the same "
                "method, preset and options, or choose another --out"
            )
        trainer.load_state_dict(ckpt["trainer"])
        start = int(ckpt["iteration"])
        last = dict(ckpt.get("metrics", {}))
    elif ckpt_path.exists():
        raise CheckpointError(
            f"{out} already holds a run ({ckpt_path} exists): pass resume=True (--resume) to continue it, "
            "or choose another --out"
        )
    if run.threads:
        torch.set_num_threads(run.threads)

    def checkpoint(iteration: int) -> None:
        if world.is_main:
            payload = {
                "method": trainer.name,
                "iteration": iteration,
                "spec": spec,
                "run": json.loads(json.dumps(dataclasses.asdict(run))),
                "trainer": trainer.state_dict(),
                "metrics": last,
            }
            save_checkpoint(ckpt_path, payload)

    log = MetricsLog(out, start, world.is_main)
    bar = None
    if run.progress and world.is_main:
        from tqdm import tqdm

        bar = tqdm(total=run.iterations, initial=start, desc=trainer.name, dynamic_ncols=True)
    interrupted = False
    done = start  # updates done so far
    try:
        with _StopFlag() as stop:
            for it in range(start, run.iterations):
                t0 = time.perf_counter()
                metrics = trainer.step(it)
                dt = time.perf_counter() - t0
                metrics["seconds"] = dt
                if "cell_steps" in metrics:
                    metrics["cell_steps_per_s"] = metrics["cell_steps"] / max(dt, 1e-9)
                done = it + 1
                if run.eval_every > 0 and done % run.eval_every == 0 and done < run.iterations and evaluate:
                    metrics.update(_prefixed(evaluate(trainer.params())))
                last = {k: float(v) for k, v in metrics.items()}
                if done % run.log_every == 0 or done == run.iterations:
                    log.write(it, last)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(
                        loss=f"{metrics['loss']:.4f}", Mcs=f"{metrics.get('cell_steps_per_s', 0) / 1e6:.2f}"
                    )
                if broadcast_flag(stop.set, world):
                    interrupted = True
                    checkpoint(done)
                    break
                if done % run.checkpoint_every == 0:
                    checkpoint(done)
    finally:
        if bar is not None:
            bar.close()
    if interrupted:
        log.close()
        return TrainResult(iteration=done, interrupted=True, metrics=last, model_path=None)
    if run.eval_every >= 0 and evaluate is not None:
        final_eval = _prefixed(evaluate(trainer.params()))
        last.update(final_eval)
        log.write(run.iterations, final_eval)
    log.close()
    if run.iterations % run.checkpoint_every:
        checkpoint(run.iterations)
    model_path = out / model_name
    if world.is_main:
        info = {
            "method": trainer.name,
            "seed": run.seed,
            "iterations": run.iterations,
            "version": __version__,
            "torch_version": str(torch.__version__),
            "processes": world.size,
            "final_metrics": last,
            **(meta or {}),
        }
        info = json.loads(json.dumps(info))  # plain values only: model.pt must load with weights_only=True
        if write_model is not None:
            write_model(model_path, info)
        else:
            save_model(model_path, ModelFile(config=trainer.config, params=trainer.params(), meta=info))
    return TrainResult(iteration=run.iterations, interrupted=False, metrics=last, model_path=model_path)


def _prefixed(metrics: dict[str, float]) -> dict[str, float]:
    return {k if k.startswith("meta_test/") else f"meta_test/{k}": float(v) for k, v in metrics.items()}


def limit_numpy_threads(n: int = 1) -> bool:
    """Cap the threads of numpy's OpenBLAS (the data layer's projections) at ``n``.

    On a small machine numpy's BLAS threads and torch's fight for the cores:
    a [100, 784] @ [784, 32] projection took 15 ms instead of 0.1 ms. numpy
    offers no API for this and reads ``OPENBLAS_NUM_THREADS`` only at import,
    so the bundled OpenBLAS is told directly; returns False where it is not found.
    """
    import ctypes
    import glob
    import os

    import numpy as np

    root = os.path.dirname(np.__file__)
    ok = False
    for lib in glob.glob(os.path.join(root, os.pardir, "numpy.libs", "*openblas*")):
        try:
            handle = ctypes.CDLL(lib)
        except OSError:
            continue
        for sym in ("scipy_openblas_set_num_threads64_", "openblas_set_num_threads64_", "openblas_set_num_threads"):
            if hasattr(handle, sym):
                getattr(handle, sym)(int(n))
                ok = True
    return ok
