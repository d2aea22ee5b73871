"""The run loop: exact resume (also after SIGKILL and Ctrl-C), checkpoint integrity, model.pt metadata."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.tasks import LinearTeacherTasks
from vsml_train.methods.bptt import BpttOptions, BpttTrainer
from vsml_train.methods.checkpoint import CheckpointError, load_checkpoint
from vsml_train.methods.cmaes import CmaesOptions, CmaesTrainer
from vsml_train.methods.es import EsOptions, EsTrainer
from vsml_train.methods.runner import RunOptions, train
from vsml_train.model.config import VSMLConfig
from vsml_train.model.model_file import load_model

CFG = VSMLConfig(state_size=4, msg_size=4, layer_norm=True)
SPEC = {"test": 1}


def _make(method: str):
    tasks = LinearTeacherTasks(3, 2, 4, seed=2, block=2)
    if method == "es":
        return EsTrainer(CFG, EsOptions(pairs=3, lr=0.05), seed=2, tasks=tasks)
    if method == "bptt":
        return BpttTrainer(CFG, BpttOptions(episodes=3, lr=0.01), seed=2, tasks=tasks)
    return CmaesTrainer(CFG, CmaesOptions(popsize=4, diagonal=True, episodes=2), seed=2, tasks=tasks)


def _run(method: str, out: Path, iterations: int, resume: bool = False, every: int = 2):
    run = RunOptions(iterations=iterations, checkpoint_every=every, progress=False, seed=2)
    return train(_make(method), run, out, spec=SPEC, resume=resume)


def _lines(path: Path) -> list[dict]:
    drop = {"seconds", "cell_steps_per_s"}
    return [{k: v for k, v in json.loads(x).items() if k not in drop} for x in path.read_text().splitlines()]


@pytest.mark.parametrize("method", ["es", "bptt", "cmaes"])
def test_interrupted_and_resumed_equals_straight(method: str, tmp_path: Path) -> None:
    straight = _run(method, tmp_path / "a", 5)
    _run(method, tmp_path / "b", 3)  # checkpoints at 2 and at the end (3)
    resumed = _run(method, tmp_path / "b", 5, resume=True)
    a, b = load_model(straight.model_path), load_model(resumed.model_path)
    assert a.params_hash() == b.params_hash()
    assert _lines(tmp_path / "a" / "metrics.jsonl") == _lines(tmp_path / "b" / "metrics.jsonl")
    assert b.meta["method"] == method and b.meta["iterations"] == 5 and b.meta["version"]
    assert b.meta["final_metrics"]["loss"] == straight.metrics["loss"]


_SCRIPT = """
import sys, time, torch
torch.set_num_threads(1)
sys.path.insert(0, {tests!r})
from test_runner_resume import _make
from vsml_train.methods.runner import RunOptions, train
tr = _make("es")
inner = tr.step
def slow(it):
    time.sleep(0.15)
    return inner(it)
tr.step = slow
train(tr, RunOptions(iterations=40, checkpoint_every=3, progress=False, seed=2), sys.argv[1], spec={{"test": 1}})
"""


def _start(out: Path) -> subprocess.Popen[str]:
    script = _SCRIPT.format(tests=str(Path(__file__).parent))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-c", script, str(out)], text=True, env=env)


def _wait_lines(path: Path, n: int, proc: subprocess.Popen[str], timeout: float = 60.0) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if path.exists() and len(path.read_text().splitlines()) >= n:
            return
        assert proc.poll() is None, "the training process ended early"
        time.sleep(0.01)
    raise TimeoutError(f"{path} did not reach {n} lines")


def test_resume_after_sigkill_between_checkpoints(tmp_path: Path) -> None:
    out = tmp_path / "killed"
    proc = _start(out)
    _wait_lines(out / "metrics.jsonl", 5, proc)  # iteration 4 logged: checkpoint at 3, killed before 6
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = int(load_checkpoint(out / "checkpoint.pt")["iteration"])
    logged = len((out / "metrics.jsonl").read_text().splitlines())
    assert done % 3 == 0 and logged > done, (done, logged)  # work after the checkpoint was lost
    resumed = _run("es", out, done + 4, resume=True, every=3)
    straight = _run("es", tmp_path / "straight", done + 4, every=3)
    assert load_model(resumed.model_path).params_hash() == load_model(straight.model_path).params_hash()
    assert _lines(out / "metrics.jsonl") == _lines(tmp_path / "straight" / "metrics.jsonl")


def test_ctrl_c_saves_a_checkpoint_and_exits_cleanly(tmp_path: Path) -> None:
    """SIGINT during iteration 3: the iteration finishes, a checkpoint is written, train returns."""
    tr = _make("es")
    inner = tr.step

    def step(it: int) -> dict[str, float]:
        if it == 3:
            os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C in the terminal sends
        return inner(it)

    tr.step = step  # type: ignore[method-assign]
    res = train(tr, RunOptions(iterations=10, checkpoint_every=5, progress=False, seed=2), tmp_path, spec=SPEC)
    assert res.interrupted and res.iteration == 4 and res.model_path is None
    assert int(load_checkpoint(tmp_path / "checkpoint.pt")["iteration"]) == 4
    assert not (tmp_path / "model.pt").exists()
    assert signal.getsignal(signal.SIGINT) is not None  # the previous handler is back
    resumed = _run("es", tmp_path, 6, resume=True, every=5)
    straight = _run("es", tmp_path / "straight", 6, every=5)
    assert load_model(resumed.model_path).params_hash() == load_model(straight.model_path).params_hash()


def test_corrupt_or_truncated_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    _run("es", tmp_path, 2)
    ckpt = tmp_path / "checkpoint.pt"
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        _run("es", tmp_path, 3, resume=True)
    flipped = bytearray(data)
    mid = len(flipped) // 2
    flipped[mid : mid + 8] = bytes(b ^ 0xFF for b in flipped[mid : mid + 8])
    ckpt.write_bytes(bytes(flipped))
    with pytest.raises(CheckpointError, match=r"corrupt|sha256|unreadable"):
        load_checkpoint(ckpt)
    torch.save({"params": torch.zeros(3)}, ckpt)
    with pytest.raises(CheckpointError, match="not a VSML training checkpoint"):
        load_checkpoint(ckpt)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nothing.pt")


def test_checkpoint_guards(tmp_path: Path) -> None:
    _run("es", tmp_path, 2)
    with pytest.raises(CheckpointError, match="exists"):
        _run("es", tmp_path, 3)  # a fresh run must not overwrite a run's checkpoint
    run = RunOptions(iterations=3, checkpoint_every=2, progress=False)
    with pytest.raises(CheckpointError, match="different run"):
        train(_make("es"), run, tmp_path, spec={"test": 2}, resume=True)
    payload = torch.load(tmp_path / "checkpoint.pt", weights_only=True)  # loads without pickled code
    assert payload["format"] == "vsml-checkpoint"
