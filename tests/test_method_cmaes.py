"""CMA-ES on the flat V_M (docs/model.md §6.4): learning, exact state, own RNG, weights_only checkpoints."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from tests.tasks import LinearTeacherTasks
from vsml_train.methods.checkpoint import bytes_to_tensor, tensor_to_bytes
from vsml_train.methods.cmaes import CmaesOptions, CmaesTrainer, finite_fitness
from vsml_train.methods.es import population_loss
from vsml_train.methods.tasks import member_noise
from vsml_train.model.config import VSMLConfig
from vsml_train.model.params import flatten, init_params
from vsml_train.seeds import derive_seed

CFG = VSMLConfig(layer_norm=True, backward_pass=True)


SMALL = VSMLConfig(state_size=4, msg_size=4, layer_norm=True, backward_pass=True)  # D = 236: cheap full covariance


def _trainer(diagonal: bool = True) -> CmaesTrainer:
    tasks = LinearTeacherTasks(4, 2, 10, seed=7, block=4)
    opts = CmaesOptions(popsize=8, sigma0=0.1, diagonal=diagonal, episodes=2)
    return CmaesTrainer(SMALL, opts, seed=7, tasks=tasks)


def test_cmaes_improves_a_given_model() -> None:
    """Start from a V_M whose outputs are over-confident (loss far above chance); CMA-ES must repair it."""
    init = init_params(CFG, 7)
    init["ln_fwd_g"] = init["ln_fwd_g"] * 4
    tasks = LinearTeacherTasks(4, 2, 20, seed=7, block=4)
    tr = CmaesTrainer(CFG, CmaesOptions(popsize=8, sigma0=0.1, diagonal=True, episodes=4), 7, init, tasks)
    held = LinearTeacherTasks(4, 2, 20, seed=99, block=8).sample(0, 0, 8)
    noise = member_noise(CFG, 4, 2, [derive_seed(1, i) for i in range(8)])

    def score() -> float:
        flat = flatten(tr.params()).unsqueeze(0).expand(8, -1).contiguous()
        return float(population_loss(flat, CFG, held, noise).mean())

    before = score()
    for it in range(15):
        m = tr.step(it)
    assert m["nonfinite"] == 0
    assert score() < before - 0.2, (before, score())


@pytest.mark.parametrize("diagonal", [True, False])
def test_state_dict_resumes_exactly_and_ignores_numpy_global_rng(diagonal: bool) -> None:
    a = _trainer(diagonal)
    for it in range(2):
        a.step(it)
    state = a.state_dict()
    assert state["cma"].dtype == torch.uint8
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    restored = torch.load(buf, weights_only=True)  # the pickled optimizer travels as bytes
    np.random.seed(123)  # global numpy state must not matter
    np.random.rand(17)
    b = _trainer(diagonal)
    b.load_state_dict(restored)
    for it in range(2, 4):
        assert a.step(it) == b.step(it)
    for k, v in a.params().items():
        assert torch.equal(v, b.params()[k])


def test_load_rejects_foreign_state() -> None:
    tr = _trainer()
    with pytest.raises(ValueError, match="CMA-ES state"):
        tr.load_state_dict({"cma": bytes_to_tensor(__import__("pickle").dumps({"not": "cma"}))})


def test_finite_fitness() -> None:
    fit, bad = finite_fitness(np.array([1.0, np.nan, 3.0, np.inf]))
    assert bad == 2 and fit.tolist() == [1.0, 4.0, 3.0, 4.0]
    assert tensor_to_bytes(bytes_to_tensor(b"abc")) == b"abc"
