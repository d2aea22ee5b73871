"""`vsml-eval`: meta-test a learner online next to tuned baselines (reference section 7).

    vsml-eval MODEL --dataset fashion-mnist [--steps 2000 --streams 32 --split test --out DIR]

MODEL is a ``model.pt`` (run through PyTorch) or a ``model.onnx`` from
``vsml-export`` (run through ``vsml_runtime.LearnerPool``, one learner per
stream). The learner and the online SGD / Adam baselines (learning rates tuned
on a grid, on separate streams of the training split by default) see the very
same streams. Writes ``summary.json`` (mean online accuracy, first 100, last
200, final loss, 95% intervals over streams), ``curves.csv`` (per-step
accuracy of every learner) and ``curves.png`` (learning curves and accuracy by
examples of the same class seen).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np
import torch

from .data.augment import ClassSubset, RandomProjection, Resize
from .data.datasets import DATASETS, load_dataset
from .data.sampler import MNIST_MEAN, MNIST_STD, sample_streams
from .evaluation.baselines import online_adam, online_sgd
from .evaluation.harness import EvalResult, evaluate_one, tune_lr
from .evaluation.learners import VSMLLearner
from .evaluation.plots import plot_results

SGD_GRID = (0.001, 0.003, 0.01, 0.03, 0.1)
ADAM_GRID = (1e-4, 3e-4, 1e-3, 3e-3)


class OnnxLearner:
    """An exported model run by ``vsml_runtime`` as an online learner (one learner per stream)."""

    def __init__(self, path: Path, examples_per_step: int = 1) -> None:
        self.path = path
        self.examples_per_step = examples_per_step

    @property
    def name(self) -> str:
        return f"vsml-onnx({self.path.name})"

    def run(self, x: np.ndarray, y: np.ndarray, n_classes: int, seed: int) -> np.ndarray:
        """x [T, S, A], y [T, S] -> logits [T, S, B] made before each label was used."""
        from vsml_runtime import LearnerPool

        t_steps, s, a = x.shape
        e = self.examples_per_step
        if t_steps % e:
            raise ValueError(f"T = {t_steps} is not a multiple of examples_per_step = {e}")
        pool = LearnerPool(self.path, n_learners=s, n_features=a, n_classes=n_classes, seed=seed, examples_per_step=e)
        out = np.empty((t_steps, s, n_classes), dtype=np.float32)
        for t in range(0, t_steps, e):
            xb = np.ascontiguousarray(x[t : t + e].transpose(1, 0, 2))  # [S, E, A]
            yb = np.ascontiguousarray(y[t : t + e].T)  # [S, E]
            if e == 1:
                _, logits = pool.learn(xb[:, 0], yb[:, 0], return_logits=True)
                out[t] = logits
            else:
                _, logits = pool.learn(xb, yb, return_logits=True)
                out[t : t + e] = np.asarray(logits).transpose(1, 0, 2)
        return out


def build_learner(model: Path, examples_per_step: int) -> VSMLLearner | OnnxLearner:
    """The learner a model file stands for, by its suffix."""
    if not model.is_file():
        raise SystemExit(f"vsml-eval: model file {model} does not exist")
    if model.suffix == ".onnx":
        return OnnxLearner(model, examples_per_step)
    return VSMLLearner.from_file(model, examples_per_step, name="vsml")


def write_outputs(results: dict[str, EvalResult], out: Path, setting: dict, title: str) -> None:
    """summary.json, curves.csv and curves.png in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    summary = {"setting": setting, "results": {k: r.to_dict(curves=False) for k, r in results.items()}}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    names = list(results)
    with (out / "curves.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", *(f"{n}_accuracy" for n in names), *(f"{n}_loss" for n in names)])
        t_steps = len(results[names[0]].curves.accuracy)
        for t in range(t_steps):
            w.writerow(
                [t + 1]
                + [f"{results[n].curves.accuracy[t]:.6g}" for n in names]
                + [f"{results[n].curves.loss[t]:.6g}" for n in names]
            )
    plot_results(results, out / "curves.png", title=title)


def main(argv: list[str] | None = None) -> None:
    """Entry point of `vsml-eval`."""
    ap = argparse.ArgumentParser(prog="vsml-eval", description=__doc__.split("\n\n")[0])
    ap.add_argument("model", type=Path, help="model.pt (PyTorch) or model.onnx (ONNX Runtime)")
    ap.add_argument("--dataset", choices=sorted(DATASETS), default="fashion-mnist")
    ap.add_argument("--split", choices=("train", "test"), default="test")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--streams", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--examples-per-step", type=int, default=1)
    ap.add_argument("--project", type=int, default=None, help="random projection to this many features")
    ap.add_argument("--resize", type=int, default=None, help="down-sample images to SIZE x SIZE")
    ap.add_argument("--classes", type=int, default=None, help="a random subset of this many classes")
    ap.add_argument("--tune-on", choices=("separate", "eval"), default="separate")
    ap.add_argument("--no-baselines", action="store_true")
    ap.add_argument("--data-dir", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=Path("vsml-eval"))
    args = ap.parse_args(argv)
    if args.steps < 1 or args.streams < 1:
        ap.error("--steps and --streams must be >= 1")
    torch.set_num_threads(1)
    learner = build_learner(args.model, args.examples_per_step)
    augment = tuple(
        a
        for a in (
            Resize(args.resize) if args.resize else None,
            RandomProjection(args.project) if args.project else None,
            ClassSubset(args.classes) if args.classes else None,
        )
        if a is not None
    )

    def streams(split: str, seed: int | np.random.SeedSequence):
        data = load_dataset(args.dataset, split, data_dir=args.data_dir)
        return sample_streams(data.images, data.labels, n_streams=args.streams, n_steps=args.steps, seed=seed,
                              augment=augment, mean=MNIST_MEAN, std=MNIST_STD, n_classes=data.n_classes)  # fmt: skip

    eval_streams = streams(args.split, args.seed)
    tune_seed = np.random.SeedSequence(args.seed, spawn_key=(7,))  # never the evaluation streams' seed
    tune = eval_streams if args.tune_on == "eval" else streams("train", tune_seed)
    setting = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    print(f"vsml-eval: {args.dataset} {args.split}, {args.streams} streams x {args.steps} steps, model {args.model}")
    results: dict[str, EvalResult] = {}
    r = evaluate_one(learner, eval_streams, seed=args.seed)
    results[r.name] = r
    print(f"  {r.name:28s} {r.summary.brief()}", flush=True)
    if not args.no_baselines:
        specs = {
            "sgd-linear": (lambda lr: online_sgd(lr, init="zero"), SGD_GRID),
            "sgd-tanh160": (lambda lr: online_sgd(lr, hidden=(160,)), SGD_GRID),
            "adam-linear": (lambda lr: online_adam(lr, init="zero"), ADAM_GRID),
            "adam-tanh160": (lambda lr: online_adam(lr, hidden=(160,)), ADAM_GRID),
        }
        for name, (factory, grid) in specs.items():
            search = tune_lr(factory, grid, tune, seed=args.seed)
            best = evaluate_one(factory(search.best_lr), eval_streams, seed=args.seed)
            results[f"{name}(lr={search.best_lr:g})"] = best
            print(f"  {name + f'(lr={search.best_lr:g})':28s} {best.summary.brief()}", flush=True)
        for name in ("river", "vowpalwabbit"):
            try:
                __import__(name)
                print(f"  {name}: installed, but its baseline is not wired into vsml-eval yet")
            except ImportError:
                print(f"  {name}: not installed, skipped")
    write_outputs(results, args.out, setting, f"{args.dataset} ({args.split}): online accuracy")
    print(f"wrote {args.out / 'summary.json'}, {args.out / 'curves.csv'}, {args.out / 'curves.png'}")


if __name__ == "__main__":
    sys.exit(main())
