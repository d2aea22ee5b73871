"""Population methods over torch.distributed: 2 gloo processes give what 1 process gives."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.tasks import LinearTeacherTasks
from vsml_train.methods.cmaes import CmaesOptions, CmaesTrainer
from vsml_train.methods.distributed import World, gather_fitness, shard
from vsml_train.methods.es import EsOptions, EsTrainer
from vsml_train.model.config import VSMLConfig
from vsml_train.model.params import flatten

CFG = VSMLConfig(state_size=4, msg_size=4, layer_norm=True)
ITERATIONS = 2


def make_trainers() -> tuple[EsTrainer, CmaesTrainer]:
    """Odd population sizes, so the two shards differ in size (5 pairs = 3 + 2, 5 candidates = 3 + 2)."""
    es = EsTrainer(CFG, EsOptions(pairs=5, lr=0.05), seed=4, tasks=LinearTeacherTasks(3, 2, 6, seed=4, block=2))
    cm = CmaesTrainer(
        CFG,
        CmaesOptions(popsize=5, diagonal=True, episodes=2),
        seed=4,
        tasks=LinearTeacherTasks(3, 2, 6, seed=4, block=2),
    )
    return es, cm


def run_all() -> dict[str, torch.Tensor]:
    out = {}
    for tr in make_trainers():
        losses = [tr.step(it)["loss"] for it in range(ITERATIONS)]
        out[tr.name] = flatten(tr.params())
        out[tr.name + "_loss"] = torch.tensor(losses, dtype=torch.float64)
    return out


_WORKER = """
import sys, torch
torch.set_num_threads(1)
sys.path.insert(0, {tests!r})
sys.path.insert(0, {root!r})  # tests.tasks
from vsml_train.methods.distributed import init_from_env, leave
world = init_from_env("cpu")
from test_distributed import run_all
result = run_all()
if world.rank == 0:
    torch.save(result, sys.argv[1])
leave(world)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_shard_covers_every_member_once() -> None:
    for n in (1, 5, 8):
        for w in (1, 2, 3):
            parts = [shard(n, r, w) for r in range(w)]
            assert [i for lo, hi in parts for i in range(lo, hi)] == list(range(n))
    with pytest.raises(ValueError):
        shard(4, 2, 2)
    assert torch.equal(gather_fitness(torch.arange(3.0), 3, World()), torch.arange(3.0, dtype=torch.float64))


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")
def test_two_processes_equal_one(tmp_path: Path) -> None:
    out = tmp_path / "rank0.pt"
    script = _WORKER.format(tests=str(Path(__file__).parent), root=str(Path(__file__).parents[1]))
    port = _free_port()
    procs = []
    for rank in range(2):
        env = {
            **os.environ,
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": "2",
        }
        procs.append(subprocess.Popen([sys.executable, "-c", script, str(out)], env=env))
    for p in procs:
        assert p.wait(timeout=120) == 0
    two = torch.load(out, weights_only=True)
    one = run_all()
    for key in one:
        assert torch.equal(one[key], two[key]), key
