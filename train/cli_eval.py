"""`vsml-eval`: meta-test a learner online next to tuned baselines (docs/model.md §7).

    vsml-eval MODEL [MODEL ...] --dataset fashion-mnist [--steps 2000 --streams 32 --split test --out DIR]

MODEL is a ``model.pt`` (run through PyTorch) or a ``model.onnx`` from
``vsml-export`` (run through ``vsml_runtime.LearnerPool``, one learner per
stream); several models are compared side by side. ``--meta-rnn FILE`` adds
a Meta RNN from ``vsml-meta-rnn``. The learners and the baselines (online SGD
and Adam, and River's and Vowpal Wabbit's online logistic regression when
those optional packages are installed), each with its learning rate tuned on
a grid (on separate streams of the training split by default), see the very
same streams. Writes ``summary.json`` (mean online accuracy, first 100, last
200, final loss, 95% intervals over streams), the same as a markdown table in
``table.md``, ``curves.csv`` (per-step
accuracy of every learner) and ``curves.png`` (learning curves and accuracy by
examples of the same class seen).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from .data.augment import ClassSubset, RandomProjection, Resize
from .data.datasets import DATASETS
from .data.sampler import dataset_streams, sample_synthetic_streams
from .data.synthetic import SYNTHETIC_FAMILIES, make_family
from .evaluation.baselines import reference_baselines
from .evaluation.external import external_baselines, missing_external
from .evaluation.harness import EvalResult, evaluate_one, tune_and_evaluate
from .evaluation.learners import MetaRNNLearner, VSMLLearner
from .evaluation.plots import plot_results
from .seeds import CLI_TUNE_KEY


class _Counted:
    """Wraps a learner so that each ``run`` advances a progress bar."""

    def __init__(self, learner: object, bar: object) -> None:
        self.learner, self.bar = learner, bar

    @property
    def name(self) -> str:
        return self.learner.name  # type: ignore[attr-defined]

    def run(self, x: np.ndarray, y: np.ndarray, n_classes: int, seed: int) -> np.ndarray:
        self.bar.set_postfix_str(self.name)  # type: ignore[attr-defined]
        out = self.learner.run(x, y, n_classes, seed)  # type: ignore[attr-defined]
        self.bar.update(1)  # type: ignore[attr-defined]
        return out


def _counting(factory: Callable[[float], object], bar: object) -> Callable[[float], _Counted]:
    """``factory`` whose learners advance ``bar`` on every run."""
    return lambda lr: _Counted(factory(lr), bar)


class OnnxLearner:
    """An exported model run by ``vsml_runtime`` as an online learner (one learner per stream)."""

    def __init__(self, path: Path, examples_per_step: int = 1, name: str = "vsml") -> None:
        self.path = path
        self.examples_per_step = examples_per_step
        self._name = name

    @property
    def name(self) -> str:
        return self._name

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


def build_learner(model: Path, examples_per_step: int, name: str = "vsml") -> VSMLLearner | OnnxLearner:
    """The learner a model file stands for, by its suffix."""
    if not model.is_file():
        raise SystemExit(f"vsml-eval: model file {model} does not exist")
    if model.suffix == ".onnx":
        return OnnxLearner(model, examples_per_step, name)
    return VSMLLearner.from_file(model, examples_per_step, name=name)


def learner_names(models: list[Path], prefix: str = "vsml") -> list[str]:
    """``prefix`` for one model; for several, ``prefix:`` and the file stem (its folder's name for default names)."""
    if len(models) == 1:
        return [prefix]
    generic = {"model", "meta_rnn"}  # what vsml-train and vsml-meta-rnn write
    names = [f"{prefix}:{m.parent.name if m.stem in generic and m.parent.name else m.stem}" for m in models]
    for fallback in (lambda m: m.name, str):
        if len(set(names)) == len(names):
            break
        names = [f"{prefix}:{fallback(m)}" for m in models]
    return names


def write_outputs(results: dict[str, EvalResult], out: Path, setting: dict, title: str) -> None:
    """summary.json, table.md (markdown, for model cards), curves.csv and curves.png in ``out``."""
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
    first = next(iter(results.values())).summary
    rows = [r.summary.markdown_row(name) for name, r in results.items()]
    table = [f"{title}: {first.n_steps} steps x {first.n_streams} streams, 95% intervals over streams", ""]
    header = first.markdown_header(first.first_steps, first.last_steps)
    (out / "table.md").write_text("\n".join([*table, header, *rows, ""]))
    plot_results(results, out / "curves.png", title=title)


def run_suite(args: argparse.Namespace) -> None:
    """``vsml-eval --suite NAME MODEL...``: every model and the suite's baselines on every task of the suite."""
    from tqdm import tqdm

    from .data.tabular import DEV_TABLES, MissingTableSource
    from .evaluation.suites import invariance_suite, suite_verdicts, tabular_suite

    torch.set_num_threads(1)
    names = learner_names(args.model)
    learners = [build_learner(m, args.examples_per_step, n) for m, n in zip(args.model, names, strict=True)]
    suite_sizes = {"tabular": (1000, 4), "dev-tables": (1000, 16), "invariance": (2000, 8)}
    default_steps, default_streams = suite_sizes[args.suite]
    steps = default_steps if args.steps is None else args.steps
    streams = default_streams if args.streams is None else args.streams
    if steps < 1 or streams < 1:
        raise SystemExit("vsml-eval: --steps and --streams must be >= 1")
    print(f"vsml-eval: the {args.suite} suite, {streams} streams x {steps} steps per task")
    bar = tqdm(desc=f"{args.suite} suite runs", unit="run", dynamic_ncols=True, leave=False)
    kw = {"n_steps": steps, "n_streams": streams, "seed": args.seed, "progress": lambda name: bar.update(1)}
    try:
        if args.suite == "tabular":
            result = tabular_suite(learners, external=not args.no_external, **kw)
        elif args.suite == "dev-tables":  # the tables choices are made on, never scored as evaluation
            result = tabular_suite(learners, tables=DEV_TABLES, external=not args.no_external, suite="dev-tables", **kw)
        else:
            result = invariance_suite(learners, data_dir=args.data_dir, **kw)
    except MissingTableSource as exc:
        raise SystemExit(f"vsml-eval: {exc}") from exc
    bar.close()
    written = result.write(args.out)
    print(result.markdown())
    for name in names:
        print(f"{name}: {json.dumps(suite_verdicts(result, name))}")
    print(f"wrote {args.out}/: summary.json, table.md and {len(written) - 2} plots (one per task)")


def main(argv: list[str] | None = None) -> None:
    """Entry point of `vsml-eval`."""
    ap = argparse.ArgumentParser(prog="vsml-eval", description=__doc__.split("\n\n")[0])
    ap.add_argument("model", type=Path, nargs="+", help="model.pt (PyTorch) or model.onnx (ONNX Runtime), one or more")
    ap.add_argument(
        "--meta-rnn", type=Path, action="append", default=[], help="also evaluate this Meta RNN file; repeatable"
    )
    ap.add_argument(
        "--dataset",
        choices=sorted(DATASETS) + sorted(SYNTHETIC_FAMILIES),
        default="fashion-mnist",
        help="a named dataset, or a synthetic task family (a fresh random teacher per stream)",
    )
    ap.add_argument("--features", type=int, default=32, help="inputs of a synthetic task family")
    ap.add_argument("--n-classes", type=int, default=10, help="classes of a synthetic task family (sum-sign: 2)")
    ap.add_argument("--split", choices=("train", "test"), default="test")
    ap.add_argument("--steps", type=int, default=None, help="online steps per stream (default 2000; suites: theirs)")
    ap.add_argument("--streams", type=int, default=None, help="streams (default 32; suites: theirs)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--examples-per-step", type=int, default=1)
    ap.add_argument("--project", type=int, default=None, help="random projection to this many features")
    ap.add_argument("--resize", type=int, default=None, help="down-sample images to SIZE x SIZE")
    ap.add_argument("--classes", type=int, default=None, help="a random subset of this many classes")
    ap.add_argument("--tune-on", choices=("separate", "eval"), default="separate")
    ap.add_argument("--no-baselines", action="store_true")
    ap.add_argument("--no-external", action="store_true", help="skip River and Vowpal Wabbit even if installed")
    ap.add_argument("--data-dir", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=Path("vsml-eval"))
    ap.add_argument(
        "--suite",
        choices=("tabular", "invariance", "dev-tables"),
        default=None,
        help="run a whole meta-test suite instead of one dataset: 15 real tables (1,000 steps x 4 streams each, "
        "needs the 'tables' extra) or MNIST/Fashion-MNIST at 16-196 dims and on 2/5 classes; 'dev-tables': the 8 "
        "tables a learner's hyper-parameters may be chosen on (1,000 x 16), with the tabular suite's baselines; "
        "--steps/--streams default to the suite's",
    )
    args = ap.parse_args(argv)
    if args.suite:
        return run_suite(args)
    args.steps = 2000 if args.steps is None else args.steps
    args.streams = 32 if args.streams is None else args.streams
    if args.steps < 1 or args.streams < 1:
        ap.error("--steps and --streams must be >= 1")
    torch.set_num_threads(1)
    names = learner_names(args.model)
    learners: list = [build_learner(m, args.examples_per_step, n) for m, n in zip(args.model, names, strict=True)]
    for path, name in zip(args.meta_rnn, learner_names(args.meta_rnn, "meta-rnn"), strict=True):
        try:
            learners.append(MetaRNNLearner.from_file(path, name))
        except ValueError as exc:
            raise SystemExit(f"vsml-eval: {exc}") from exc
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
        if args.dataset in SYNTHETIC_FAMILIES:  # the split does not apply: other seeds give other teachers
            n_classes = None if args.dataset == "sum-sign" else args.n_classes
            family = make_family(args.dataset, args.features, n_classes)
            return sample_synthetic_streams(family, n_streams=args.streams, n_steps=args.steps, seed=seed,
                                            augment=augment)  # fmt: skip
        return dataset_streams(args.dataset, split, n_steps=args.steps, n_streams=args.streams, seed=seed,
                               augment=augment, data_dir=args.data_dir)  # fmt: skip

    eval_streams = streams(args.split, args.seed)
    tune_seed = np.random.SeedSequence(args.seed, spawn_key=(CLI_TUNE_KEY,))  # never the evaluation streams' seed
    tune = eval_streams if args.tune_on == "eval" else streams("train", tune_seed)
    setting = json.loads(json.dumps(vars(args), default=str))  # paths (and lists of them) as strings
    models = ", ".join(map(str, args.model))
    print(f"vsml-eval: {args.dataset} {args.split}, {args.streams} streams x {args.steps} steps, {models}")
    results: dict[str, EvalResult] = {}
    specs: dict = {}
    if not args.no_baselines:
        specs = dict(reference_baselines())  # the reference table's four, on its grids
        if not args.no_external:
            specs.update(external_baselines())
            for name in missing_external():
                print(f"  {name}: not installed, skipped (pip install {name})")
    from tqdm import tqdm

    reruns = 0 if tune is eval_streams else 1  # the chosen rate is run again on the evaluation streams
    total = len(learners) + sum(len(grid) + reruns for _, grid in specs.values())
    bar = tqdm(total=total, desc="vsml-eval runs", dynamic_ncols=True, leave=False)
    for learner in learners:
        r = evaluate_one(_Counted(learner, bar), eval_streams, seed=args.seed)
        results[r.name] = r
        bar.write(f"  {r.name:28s} {r.summary.brief()}")
    counted = {name: (_counting(factory, bar), grid) for name, (factory, grid) in specs.items()}
    for name, search, best in tune_and_evaluate(counted, eval_streams, tune, seed=args.seed):
        label = f"{name}(lr={search.best_lr:g})"
        results[label] = best
        bar.write(f"  {label:28s} {best.summary.brief()}")
    bar.close()
    where = f"{args.features} inputs" if args.dataset in SYNTHETIC_FAMILIES else args.split
    write_outputs(results, args.out, setting, f"{args.dataset} ({where}): online accuracy")
    print(f"wrote {args.out}/: summary.json, table.md, curves.csv, curves.png")


if __name__ == "__main__":
    sys.exit(main())
