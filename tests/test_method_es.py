"""Antithetic ES (docs/model.md §6.2): estimator math, common random numbers, learning on a toy task."""

from __future__ import annotations

import math

import pytest
import torch

from tests.tasks import LinearTeacherTasks
from vsml_train.methods.es import (
    EsOptions,
    EsTrainer,
    centred_ranks,
    es_grad,
    guard_nonfinite,
    population_loss,
    shaped_fitness,
)
from vsml_train.methods.tasks import member_noise
from vsml_train.model.config import VSMLConfig
from vsml_train.model.params import flatten
from vsml_train.seeds import derive_seed

CFG = VSMLConfig(layer_norm=True, backward_pass=True)


def _trainer(pairs: int = 8, steps: int = 20, **kw: object) -> EsTrainer:
    tasks = LinearTeacherTasks(4, 2, steps, seed=3, block=4)
    return EsTrainer(CFG, EsOptions(pairs=pairs, **kw), seed=3, tasks=tasks)


def test_es_grad_is_unbiased_on_a_quadratic() -> None:
    """E[(L(t + s e) - L(t - s e)) / 2s * e] = grad L exactly for a quadratic; check within 4 standard errors."""
    gen = torch.Generator().manual_seed(0)
    d, n, sigma = 6, 20000, 0.3
    a = torch.randn(d, d, generator=gen, dtype=torch.float64)
    h = a @ a.T / d + torch.eye(d, dtype=torch.float64)  # SPD Hessian
    b = torch.randn(d, generator=gen, dtype=torch.float64)
    theta = torch.randn(d, generator=gen, dtype=torch.float64)

    def loss(x: torch.Tensor) -> torch.Tensor:  # [K, D] -> [K]
        return 0.5 * ((x @ h) * x).sum(-1) + x @ b

    eps = torch.randn(n, d, generator=gen, dtype=torch.float64)
    fp, fn = loss(theta + sigma * eps), loss(theta - sigma * eps)
    g = es_grad(eps, fp, fn, sigma)
    true = h @ theta + b
    per_pair = ((fp - fn) / (2 * sigma)).unsqueeze(-1) * eps  # [n, D] single-pair estimates
    se = per_pair.std(0) / math.sqrt(n)
    assert torch.allclose(g, per_pair.mean(0))
    assert ((g - true).abs() < 4 * se).all(), (g, true, se)


def test_es_grad_excludes_invalid_pairs() -> None:
    eps = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    fp, fn = torch.tensor([3.0, 0.0], dtype=torch.float64), torch.tensor([1.0, 0.0], dtype=torch.float64)
    g = es_grad(eps, fp, fn, 0.5, valid=torch.tensor([True, False]))
    assert torch.equal(g, torch.tensor([2.0, 0.0], dtype=torch.float64))  # (3 - 1) / 1 * e0, mean over 1 pair


def test_centred_ranks() -> None:
    r = centred_ranks(torch.tensor([5.0, -1.0, 2.0, 10.0]))
    assert torch.allclose(r, torch.tensor([1 / 6, -0.5, -1 / 6, 0.5], dtype=torch.float64))
    pos, neg = shaped_fitness(torch.tensor([1.0, 9.0]), torch.tensor([2.0, 0.0]), torch.tensor([True, False]))
    assert pos.tolist() == [-0.5, 0.0] and neg.tolist() == [0.5, 0.0]


def test_guard_nonfinite() -> None:
    fp = torch.tensor([1.0, float("nan"), 2.0])
    fn = torch.tensor([0.5, 1.0, float("inf")])
    p, n, valid, bad = guard_nonfinite(fp, fn, "exclude")
    assert bad == 2 and valid.tolist() == [True, False, False]
    assert torch.isfinite(p).all() and torch.isfinite(n).all()
    p, n, valid, bad = guard_nonfinite(fp, fn, "penalise")
    assert bad == 2 and valid.all() and p.tolist() == [1.0, 2.0, 2.0] and n.tolist() == [0.5, 1.0, 2.0]


def test_trainer_reports_and_survives_nonfinite_fitness() -> None:
    tr = _trainer(pairs=4, steps=3)
    before = tr.theta.detach().clone()
    eps = tr.ask(0)
    m = tr.tell(eps, torch.tensor([1.0, float("nan"), 1.0, 2.0]), torch.tensor([0.5, 1.0, 1.0, float("inf")]))
    assert m["nonfinite"] == 2 and m["pairs_used"] == 2
    assert torch.isfinite(tr.theta).all() and not torch.equal(tr.theta.detach(), before)
    m = tr.tell(eps, torch.full((4,), float("nan")), torch.full((4,), float("nan")))
    assert m["pairs_used"] == 0 and math.isnan(m["loss"]) and torch.isfinite(tr.theta).all()


def test_pairs_share_episode_and_initial_state() -> None:
    """With eps = 0 both members of a pair are the same learner on the same data: identical losses."""
    tr = _trainer(pairs=4, steps=5)
    fp, fn, work = tr.evaluate(0, torch.zeros(4, tr.theta.numel()))
    assert torch.equal(fp, fn)
    assert len(set(fp.tolist())) == 4  # distinct pairs see distinct episodes
    assert work == 2 * 4 * (4 * 2) * CFG.micro_ticks * 2 * 5


def test_batched_population_equals_members_alone() -> None:
    """One batched rollout of P learners = P rollouts of one learner (the population axis mixes nothing)."""
    tasks = LinearTeacherTasks(3, 2, 6, seed=1, block=3)
    ep = tasks.sample(0, 0, 3)
    gen = torch.Generator().manual_seed(0)
    base = flatten(_trainer().params())
    flat = base + 0.1 * torch.randn(3, base.numel(), generator=gen)
    noise = member_noise(CFG, 3, 2, [derive_seed(9, i) for i in range(3)])
    together = population_loss(flat, CFG, ep, noise)
    for i in range(3):
        one = ep.__class__(ep.x[:, i : i + 1], ep.y[:, i : i + 1], ep.n_classes)
        alone = population_loss(flat[i : i + 1], CFG, one, [z[i : i + 1] for z in noise])
        assert torch.allclose(together[i], alone[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("rank_shaping", [False, True])
def test_es_lowers_the_meta_loss(rank_shaping: bool) -> None:
    """On fresh-teacher linear tasks the initial V_M is worse than chance; ES must bring the loss down."""
    torch.manual_seed(0)
    tr = _trainer(pairs=8, steps=20, lr=0.03, rank_shaping=rank_shaping)
    held_out = [10_000 + i for i in range(2)]

    def score() -> float:
        losses = []
        for it in held_out:
            _, fn, _ = tr.evaluate(it, torch.zeros(8, tr.theta.numel()))
            losses.append(float(fn.mean()))
        return sum(losses) / len(losses)

    before = score()
    for it in range(25):
        tr.step(it)
    after = score()
    assert after < before - 0.03, (before, after)
