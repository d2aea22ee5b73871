"""`vsml-demo`: progress bar, --threads, the reading guide; the bar's learner is the plain VSMLLearner."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vsml_train import demo
from vsml_train.evaluation.learners import VSMLLearner
from vsml_train.model.config import VSMLConfig
from vsml_train.model.params import init_params


def test_ticking_learner_gives_the_same_logits_and_ticks_every_step() -> None:
    config = VSMLConfig()
    plain = VSMLLearner(init_params(config, 0), config)
    ticks: list[int] = []
    ticking = demo._TickingVSML(plain, lambda: ticks.append(1))
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((7, 2, 5)).astype(np.float32), rng.integers(0, 3, (7, 2))
    assert np.array_equal(ticking.run(x, y, 3, 4), plain.run(x, y, 3, 4))
    assert len(ticks) == 7


def test_demo_prints_the_guide_uses_one_thread_and_shows_progress(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    threads = torch.get_num_threads()
    try:
        demo.main(["--dataset", "mnist", "--steps", "12", "--streams", "1", "--out", str(tmp_path)])
        assert torch.get_num_threads() == 1  # the default
        captured = capsys.readouterr()
        assert "reading guide: accuracy = share of examples predicted right BEFORE" in captured.out
        assert "right: accuracy by examples of the same class seen before" in captured.out
        assert "12/12" in captured.err  # the progress bar reached the end
        demo.main(
            [
                "--dataset",
                "mnist",
                "--steps",
                "4",
                "--streams",
                "1",
                "--threads",
                "2",
                "--no-progress",
                "--out",
                str(tmp_path),
            ]
        )
        assert torch.get_num_threads() == 2 and "12/12" not in capsys.readouterr().err
    finally:
        torch.set_num_threads(threads)
