"""The Meta RNN baseline: online causality, shapes, files, resumable meta-training."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.tasks import LinearTeacherTasks
from vsml_train.evaluation.learners import MetaRNNLearner
from vsml_train.methods.meta_rnn import MetaRNNOptions, MetaRNNTrainer, train_meta_rnn
from vsml_train.methods.tasks import Episodes, TaskOptions
from vsml_train.model.meta_rnn import MetaRNN, MetaRNNConfig, load_meta_rnn, save_meta_rnn

A, B, H, T, S = 6, 3, 8, 12, 2


def _streams(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((T, S, A)).astype(np.float32), rng.integers(0, B, (T, S))


def test_logits_at_t_never_depend_on_the_label_at_t_but_later_ones_do() -> None:
    learner = MetaRNNLearner(MetaRNN(MetaRNNConfig(A, B, H), seed=1))
    x, y = _streams()
    base = learner.run(x, y, B, 0)
    assert base.shape == (T, S, B) and base.dtype == np.float32
    y2 = y.copy()
    y2[5, 0] = (y[5, 0] + 1) % B
    other = learner.run(x, y2, B, 0)
    np.testing.assert_array_equal(other[:6], base[:6])  # steps <= 5 made before y[5] was known
    assert np.abs(other[6:, 0] - base[6:, 0]).max() > 1e-6  # y[5] and e[5] are fed at step 6
    np.testing.assert_array_equal(other[:, 1], base[:, 1])  # streams are independent


def test_the_seed_fixes_the_initial_weights() -> None:
    a, b, c = (MetaRNN(MetaRNNConfig(A, B, H), seed=s) for s in (3, 3, 4))
    assert torch.equal(a.cell.weight_ih, b.cell.weight_ih)
    assert not torch.equal(a.cell.weight_ih, c.cell.weight_ih)


def test_other_task_shapes_are_refused_by_name() -> None:
    learner = MetaRNNLearner(MetaRNN(MetaRNNConfig(A, B, H)))
    x, y = _streams()
    with pytest.raises(ValueError, match="6-input, 3-class"):
        learner.run(x[..., :5], y, B, 0)
    with pytest.raises(ValueError, match="6-input, 3-class"):
        learner.run(x, y, B + 1, 0)


def test_file_round_trip_and_bad_files(tmp_path) -> None:
    model = MetaRNN(MetaRNNConfig(A, B, H), seed=2)
    path = tmp_path / "m.pt"
    save_meta_rnn(path, model, {"note": tmp_path})
    loaded, meta = load_meta_rnn(path)
    x, y = _streams()
    np.testing.assert_array_equal(MetaRNNLearner(loaded).run(x, y, B, 0), MetaRNNLearner(model).run(x, y, B, 0))
    assert meta["note"] == str(tmp_path)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        load_meta_rnn(bad)
    torch.save({"format": "something-else"}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a Meta RNN file"):
        load_meta_rnn(tmp_path / "other.pt")
    with pytest.raises(ValueError, match="does not exist"):
        load_meta_rnn(tmp_path / "missing.pt")


def _options(iterations: int) -> MetaRNNOptions:
    return MetaRNNOptions(hidden=H, iterations=iterations, episodes=4, lr=1e-2, tasks=TaskOptions(), checkpoint_every=2)


class _OneTeacher:
    """Every stream labelled by one fixed linear teacher: learnable by meta-training alone."""

    def __init__(self) -> None:
        self.w = torch.randn(A, B, generator=torch.Generator().manual_seed(0))

    def sample(self, iteration: int, start: int, stop: int) -> Episodes:
        gen = torch.Generator().manual_seed(iteration)
        x = torch.randn(20, stop - start, 1, A, generator=gen)
        return Episodes(x, (x @ self.w).argmax(-1), B)


def test_meta_training_lowers_the_online_loss() -> None:
    trainer = MetaRNNTrainer(_options(40), seed=0, tasks=_OneTeacher(), n_features=A, n_classes=B)
    losses = [trainer.step(i)["loss"] for i in range(40)]
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])


def test_resumed_training_equals_uninterrupted_training(tmp_path) -> None:
    def tasks() -> LinearTeacherTasks:
        return LinearTeacherTasks(A, B, steps=10, seed=5, block=4)

    once = train_meta_rnn(_options(4), 7, tmp_path / "once", tasks=tasks(), n_features=A, n_classes=B)
    train_meta_rnn(_options(2), 7, tmp_path / "two", tasks=tasks(), n_features=A, n_classes=B)
    with (tmp_path / "two" / "metrics.jsonl").open("a") as f:
        f.write('{"iteration": 2, "lo')  # a line cut short by a kill
    # the same run continued to 4 updates: only the iteration count differs, which resume allows
    resumed = train_meta_rnn(_options(4), 7, tmp_path / "two", tasks=tasks(), n_features=A, n_classes=B, resume=True)
    a, _ = load_meta_rnn(once)
    b, _ = load_meta_rnn(resumed)
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
    logged = [json.loads(line)["loss"] for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    expected = [json.loads(line)["loss"] for line in (tmp_path / "once" / "metrics.jsonl").read_text().splitlines()]
    assert logged == expected


def test_a_second_run_into_the_same_folder_is_refused(tmp_path) -> None:
    tasks = LinearTeacherTasks(A, B, steps=5, seed=0, block=4)
    train_meta_rnn(_options(2), 0, tmp_path, tasks=tasks, n_features=A, n_classes=B)
    with pytest.raises(SystemExit, match="already holds a run"):
        train_meta_rnn(_options(2), 0, tmp_path, tasks=tasks, n_features=A, n_classes=B)
