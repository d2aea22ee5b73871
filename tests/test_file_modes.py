"""Files the project writes get the mode a plain open() gives, not mkstemp's private 0600."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest

from vsml_train.files import atomic_write_bytes, new_file_mode
from vsml_train.model.model_file import load_model, save_model


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_new_files_follow_the_umask_and_rewrites_keep_the_old_mode(tmp_path, umask_022) -> None:
    path = tmp_path / "a.bin"
    assert new_file_mode(path) == 0o644
    atomic_write_bytes(path, b"1")
    assert _mode(path) == 0o644
    path.chmod(0o600)
    atomic_write_bytes(path, b"2")
    assert _mode(path) == 0o600 and path.read_bytes() == b"2"


def test_model_files_and_learner_states_are_readable_by_others(tmp_path, umask_022) -> None:
    from vsml_runtime import Learner
    from vsml_runtime.learner import pretrained_path

    model = load_model(pretrained_path().replace(".onnx", ".pt"))
    save_model(tmp_path / "m.pt", model)
    assert _mode(tmp_path / "m.pt") == 0o644
    learner = Learner.pretrained(5, 3)
    learner.learn(np.zeros(5, np.float32), 1)
    learner.save(tmp_path / "state.npz")
    assert _mode(tmp_path / "state.npz") == 0o644
