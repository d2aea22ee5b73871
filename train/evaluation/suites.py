"""Meta-test suites: many tasks, every learner on the same streams of each (reference section 7).

Two suites answer "does the learner out-learn what a user would deploy
instead, on data it never saw, at any size?":

- ``tabular_suite``: the real tables of ``vsml_train.data.tabular.SUITE``,
  each feature z-scored, T = 1,000 online steps x S = 4 streams per table.
  Beside the learners: Vowpal Wabbit and River with their default settings,
  and linear online SGD and Adam at ONE setting each, the one of a small grid
  that is best across the whole suite (chosen on the suite itself, which
  flatters the baselines).
- ``invariance_suite``: MNIST and Fashion-MNIST (test splits) randomly
  projected to 16, 64 and 196 dims, resized to 14x14, and restricted to
  random subsets of 2 and 5 classes, next to linear online SGD at one fixed
  rate (chosen once, on MNIST's training split at 784 inputs).

Every task's streams come from the suite seed and the task's name, so adding
a task never changes another task's streams.

Dimension letters: T steps, S streams, A features, B classes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..data.augment import Augmentation, ClassSubset, RandomProjection, Resize
from ..data.datasets import Split
from ..data.sampler import Streams, dataset_streams
from ..data.tabular import SUITE, Table, TableSpec, load_table
from ..seeds import SUITE_TUNE_TASK, task_seed
from .baselines import online_adam, online_sgd
from .external import RiverLogistic, VowpalWabbitOAA, missing_external
from .harness import EvalResult, StreamsLike, evaluate_one, tune_lr
from .learners import OnlineLearner
from .metrics import Estimate, paired_difference

TABULAR_SGD_GRID = (0.01, 0.03, 0.1, 0.3)
TABULAR_ADAM_GRID = (0.001, 0.003, 0.01, 0.03, 0.1)
INVARIANCE_SGD_GRID = (0.001, 0.003, 0.01, 0.03)
Progress = Callable[[str], None]


@dataclass(frozen=True, eq=False)
class SuiteResult:
    """Every learner on every task of a suite.

    Attributes:
        suite: the suite's name.
        tasks: {task: {learner: result}}, every learner on the same streams.
        setting: how the suite ran (JSON-ready).
        chosen: {baseline: the setting it was run at}, e.g. the learning rate.
        vsml: names of the learners under test (the rest are baselines).
    """

    suite: str
    tasks: dict[str, dict[str, EvalResult]]
    setting: dict[str, Any]
    chosen: dict[str, str] = field(default_factory=dict)
    vsml: tuple[str, ...] = ()

    @property
    def learners(self) -> list[str]:
        return list(next(iter(self.tasks.values())))

    def mean_accuracy(self, learner: str) -> float:
        """The suite mean: mean online accuracy averaged over the tasks (each task weighs the same)."""
        return float(np.mean([r[learner].summary.accuracy.mean for r in self.tasks.values()]))

    def wins(self, learner: str, others: Sequence[str], metric: str = "first_accuracy") -> int:
        """On how many tasks ``learner``'s ``metric`` is above every one of ``others``."""
        n = 0
        for r in self.tasks.values():
            mine = getattr(r[learner].summary, metric).mean
            n += all(mine > getattr(r[o].summary, metric).mean for o in others)
        return n

    def paired(self, learner: str, other: str, metric: str = "accuracy") -> dict[str, Estimate]:
        """{task: per-stream ``learner`` - ``other`` of ``metric``}: both ran on the same streams of each task.

        A paired interval that lies above (below) 0 is a difference the streams
        show; one that covers 0 is a tie at this many streams (nan with one stream).
        """
        return {
            t: paired_difference(getattr(r[learner].summary, metric), getattr(r[other].summary, metric))
            for t, r in self.tasks.items()
        }

    def markdown(self) -> str:
        """Per-task rows (mean online accuracy and first-k, 95% intervals over streams) and the suite means."""
        names = self.learners
        first = next(iter(next(iter(self.tasks.values())).values())).summary
        head = f"| task | {' | '.join(names)} |\n|---|{'---|' * len(names)}"
        rows = []
        for task, r in self.tasks.items():
            best = max(r[n].summary.accuracy.mean for n in names)
            cells = []
            for n in names:
                s = r[n].summary
                text = f"{s.accuracy.text(' ± ')} / {s.first_accuracy.mean:.3f}"
                cells.append(f"**{text}**" if s.accuracy.mean == best else text)
            rows.append(f"| {task} | {' | '.join(cells)} |")
        means = " | ".join(f"{self.mean_accuracy(n):.4f}" for n in names)
        firsts = " | ".join(
            f"{np.mean([r[n].summary.first_accuracy.mean for r in self.tasks.values()]):.4f}" for n in names
        )
        lines = [
            f"{self.suite} suite: {first.n_steps} steps x {first.n_streams} streams per task; cells: mean online "
            f"accuracy ± 95% interval over streams / mean accuracy over the first {first.first_steps} steps",
            "",
            head,
            *rows,
            f"| **suite mean** | {means} |",
            f"| suite mean, first {first.first_steps} | {firsts} |",
        ]
        if self.chosen:
            lines += ["", "Baseline settings: " + "; ".join(f"{k}: {v}" for k, v in self.chosen.items())]
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict[str, Any]:
        return {
            "suite": self.suite,
            "setting": self.setting,
            "chosen": self.chosen,
            "suite_mean": {n: self.mean_accuracy(n) for n in self.learners},
            "tasks": {t: {n: r.to_dict(curves=False) for n, r in rs.items()} for t, rs in self.tasks.items()},
        }

    def write(self, out: Path) -> list[Path]:
        """``summary.json``, ``table.md`` and one learning-curve plot per task into ``out``."""
        from .plots import plot_results

        out.mkdir(parents=True, exist_ok=True)
        (out / "summary.json").write_text(json.dumps(self.to_dict(), indent=1))
        (out / "table.md").write_text(self.markdown())
        written = [out / "summary.json", out / "table.md"]
        for task, results in self.tasks.items():
            written.append(plot_results(results, out / f"{task}.png", title=f"{self.suite}: {task}"))
        return written


def _run_all(
    learners: Iterable[OnlineLearner], streams: StreamsLike, seed: int, first_steps: int, progress: Progress | None
) -> dict[str, EvalResult]:
    """Every learner on the same streams: {name: result}."""
    out: dict[str, EvalResult] = {}
    for learner in learners:
        if progress:
            progress(learner.name)
        out[learner.name] = evaluate_one(learner, streams, seed=seed, first_steps=first_steps)
    return out


def tabular_suite(
    learners: Sequence[OnlineLearner],
    *,
    tables: Sequence[TableSpec | Table] = SUITE,
    n_steps: int = 1000,
    n_streams: int = 4,
    seed: int = 0,
    first: int = 50,
    external: bool = True,
    progress: Progress | None = None,
    suite: str = "tabular",
) -> SuiteResult:
    """Run ``learners`` and the baselines (module docstring) on every table.

    Args:
        learners: the learners under test (names must be unique).
        tables: specs (loaded here) or ready ``Table``s.
        n_steps, n_streams: T and S per table.
        seed: the suite seed (``task_seed`` derives each table's streams).
        first: the early-learning window k of "first-k" accuracy.
        external: add Vowpal Wabbit and River at their defaults when installed.
        progress: called with each learner's name before it runs.
        suite: the result's name ("dev-tables" for ``DEV_TABLES``, the tables choices may be made on).
    """
    data = {t.name: t if isinstance(t, Table) else load_table(t) for t in tables}
    streams = {name: t.streams(n_steps, n_streams, task_seed(seed, name)) for name, t in data.items()}
    fixed: list[OnlineLearner] = []
    chosen: dict[str, str] = {}
    if external and not missing_external():
        fixed = [VowpalWabbitOAA(0.5), RiverLogistic(0.01)]
        chosen = {"vowpalwabbit": "defaults (--oaa B --loss_function logistic, -l 0.5)", "river": "defaults (SGD 0.01)"}
    tasks = {name: _run_all([*learners, *fixed], s, seed, first, progress) for name, s in streams.items()}
    for arch, factory, grid in (
        ("sgd-linear", online_sgd, TABULAR_SGD_GRID),
        ("adam-linear", online_adam, TABULAR_ADAM_GRID),
    ):
        # {lr: {task: result}}; the one rate with the best suite mean is kept for every task
        runs: dict[float, dict[str, EvalResult]] = {}
        for lr in grid:
            learner = factory(lr, init="zero")
            runs[lr] = {
                name: _run_all([learner], s, seed, first, progress)[learner.name] for name, s in streams.items()
            }
        best = max(grid, key=lambda lr: np.mean([r.summary.accuracy.mean for r in runs[lr].values()]))
        chosen[arch] = f"lr {best:g}, the best of {list(grid)} by suite mean"
        for name in tasks:
            tasks[name][arch] = runs[best][name]
    setting = {"n_steps": n_steps, "n_streams": n_streams, "seed": seed, "tables": list(data)}
    return SuiteResult(suite, tasks, setting, chosen, tuple(lr.name for lr in learners))


@dataclass(frozen=True)
class ImageTask:
    """One setting of the invariance suite: a dataset and the augmentation applied to every stream."""

    name: str
    dataset: str
    augment: tuple[Augmentation, ...]


def invariance_tasks(datasets: Sequence[str] = ("mnist", "fashion-mnist")) -> list[ImageTask]:
    """Projections to 16, 64 and 196 dims, 14x14 resizing, and class subsets of 2 and 5, per dataset."""
    tasks = []
    for ds in datasets:
        tasks += [ImageTask(f"{ds}-proj{a}", ds, (RandomProjection(a),)) for a in (16, 64, 196)]
        tasks.append(ImageTask(f"{ds}-14x14", ds, (Resize(14),)))
        tasks += [ImageTask(f"{ds}-{b}classes", ds, (ClassSubset(b),)) for b in (2, 5)]
    return tasks


def _image_streams(task: ImageTask, split: Split, n_steps: int, n_streams: int, seed: Any, data_dir: Any) -> Streams:
    return dataset_streams(task.dataset, split, n_steps=n_steps, n_streams=n_streams, seed=seed,
                           augment=task.augment, data_dir=data_dir)  # fmt: skip


def invariance_suite(
    learners: Sequence[OnlineLearner],
    *,
    tasks: Sequence[ImageTask] | None = None,
    n_steps: int = 2000,
    n_streams: int = 8,
    seed: int = 0,
    data_dir: Any = None,
    progress: Progress | None = None,
) -> SuiteResult:
    """Run ``learners`` and linear SGD at one fixed rate (module docstring) on every task (test splits)."""
    tasks = invariance_tasks() if tasks is None else list(tasks)
    tune = _image_streams(
        ImageTask("mnist", "mnist", ()), "train", n_steps, n_streams, task_seed(seed, SUITE_TUNE_TASK), data_dir
    )
    search = tune_lr(lambda lr: online_sgd(lr, init="zero"), INVARIANCE_SGD_GRID, tune, seed=seed)
    sgd = online_sgd(search.best_lr, init="zero")
    results: dict[str, dict[str, EvalResult]] = {}
    for task in tasks:
        streams = _image_streams(task, "test", n_steps, n_streams, task_seed(seed, task.name), data_dir)
        results[task.name] = _run_all([*learners, sgd], streams, seed, 100, progress)
        results[task.name] = {("sgd-linear" if k == sgd.name else k): v for k, v in results[task.name].items()}
    chosen = {
        "sgd-linear": f"lr {search.best_lr:g}, tuned once on MNIST train at 784 inputs over {list(INVARIANCE_SGD_GRID)}"
    }
    setting = {"n_steps": n_steps, "n_streams": n_streams, "seed": seed, "tasks": [t.name for t in tasks]}
    return SuiteResult("invariance", results, setting, chosen, tuple(lr.name for lr in learners))


def suite_verdicts(result: SuiteResult, learner: str) -> dict[str, Any]:
    """The issue's targets for one learner, as numbers (what ``vsml-eval --suite`` prints at the end)."""
    names = result.learners
    if result.suite in ("tabular", "dev-tables"):
        fixed = [n for n in ("sgd-linear", "adam-linear") if n in names]
        best_fixed = max(fixed, key=result.mean_accuracy)
        others = [n for n in (best_fixed, "vowpalwabbit-oaa(lr=0.5)") if n in names]
        firsts = [result.paired(learner, o, "first_accuracy") for o in others]
        return {
            "suite_mean": result.mean_accuracy(learner),
            "baseline_means": {n: result.mean_accuracy(n) for n in names if n not in result.vsml},
            "first_wins": f"{result.wins(learner, others)} of {len(result.tasks)} tasks above {others}",
            # the same count with the streams' noise: paired 95% intervals above / below 0 against the baselines
            "first_clear_wins": [t for t in result.tasks if all(p[t].low > 0 for p in firsts)],
            "first_clear_losses": [t for t in result.tasks if any(p[t].high < 0 for p in firsts)],
        }
    paired = result.paired(learner, "sgd-linear")  # its mean is the difference of the two means
    return {
        # below by more than float rounding: equal per-stream means are a tie, not a loss
        "tasks_below_sgd": [t for t, p in paired.items() if p.mean < -1e-9],
        "n_tasks": len(result.tasks),
        # below by a paired 95% interval clear of 0; the rest of tasks_below_sgd are ties at this many streams
        "tasks_clearly_below_sgd": [t for t, p in paired.items() if p.high < 0],
        "paired_vs_sgd": {t: [_json_number(v) for v in (p.mean, p.low, p.high)] for t, p in paired.items()},
    }


def _json_number(x: float) -> float | None:
    """Rounded for printing; None where one stream leaves no interval (nan is not JSON)."""
    return None if math.isnan(x) else round(x, 5)
