"""vsml-eval with several models and a Meta RNN side by side."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import shared_dataset_dir
from vsml_runtime.learner import pretrained_path
from vsml_train.cli_eval import learner_names, main
from vsml_train.model.meta_rnn import MetaRNN, MetaRNNConfig, save_meta_rnn


def test_learner_names_are_unique_and_readable() -> None:
    assert learner_names([Path("a/model.pt")]) == ["vsml"]
    assert learner_names([Path("runs/bptt/model.pt"), Path("x/clone.onnx")]) == ["vsml:bptt", "vsml:clone"]
    assert learner_names([Path("a/m.pt"), Path("a/m.onnx")]) == ["vsml:m.pt", "vsml:m.onnx"]
    assert len(set(learner_names([Path("a/model.pt"), Path("b/a/model.pt")]))) == 2


def test_two_models_and_a_meta_rnn_on_the_same_streams(tmp_path) -> None:
    data = shared_dataset_dir("mnist").parent
    pt = pretrained_path().replace(".onnx", ".pt")
    rnn = tmp_path / "meta_rnn.pt"
    save_meta_rnn(rnn, MetaRNN(MetaRNNConfig(784, 10, 16)), {})
    out = tmp_path / "ev"
    main([pt, pretrained_path(), "--meta-rnn", str(rnn), "--dataset", "mnist", "--steps", "20", "--streams", "2",
          "--no-baselines", "--data-dir", str(data), "--out", str(out)])  # fmt: skip
    results = json.loads((out / "summary.json").read_text())["results"]
    assert set(results) == {"vsml:pretrained.pt", "vsml:pretrained.onnx", "meta-rnn"}
    header = (out / "curves.csv").read_text().splitlines()[0]
    assert "meta-rnn_accuracy" in header
    table = (out / "table.md").read_text().splitlines()
    rows = [line for line in table if line.startswith("| vsml:") or line.startswith("| meta-rnn")]
    assert len(rows) == 3 and all(line.count("±") == 4 for line in rows)


def test_a_meta_rnn_of_another_input_size_is_refused(tmp_path) -> None:
    data = shared_dataset_dir("mnist").parent
    rnn = tmp_path / "meta_rnn.pt"
    save_meta_rnn(rnn, MetaRNN(MetaRNNConfig(784, 10, 16)), {})
    with pytest.raises(ValueError, match="784-input, 10-class"):
        main([pretrained_path(), "--meta-rnn", str(rnn), "--project", "40", "--steps", "5", "--streams", "1",
              "--no-baselines", "--data-dir", str(data), "--out", str(tmp_path / "ev")])  # fmt: skip


def test_synthetic_task_family_with_baselines(tmp_path) -> None:
    out = tmp_path / "ev"
    main([pretrained_path(), "--dataset", "linear", "--features", "8", "--n-classes", "3", "--steps", "40",
          "--streams", "2", "--no-external", "--out", str(out)])  # fmt: skip
    summary = json.loads((out / "summary.json").read_text())
    assert summary["setting"]["dataset"] == "linear"
    assert "vsml" in summary["results"] and any(k.startswith("adam-tanh160") for k in summary["results"])
    assert all(r["summary"]["n_steps"] == 40 for r in summary["results"].values())
