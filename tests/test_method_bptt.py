"""Backprop through unrolled episodes (docs/model.md §6.3) on tiny sizes."""

from __future__ import annotations

import math

import pytest
import torch

from tests.tasks import LinearTeacherTasks
from vsml_train.methods.bptt import BpttOptions, BpttTrainer, step_weights
from vsml_train.model.config import VSMLConfig

CFG = VSMLConfig(layer_norm=True, backward_pass=True)


def _trainer(**kw: object) -> BpttTrainer:
    tasks = LinearTeacherTasks(4, 2, 20, seed=5, block=4)
    return BpttTrainer(CFG, BpttOptions(**{"episodes": 8, "lr": 3e-3, **kw}), seed=5, tasks=tasks)


def _held_out(tr: BpttTrainer) -> float:
    with torch.no_grad():
        return sum(float(tr.loss(10_000 + i)[0]) for i in range(3)) / 3


@pytest.mark.parametrize("truncation", [None, 5])
def test_bptt_lowers_the_meta_loss(truncation: int | None) -> None:
    tr = _trainer(truncation=truncation)
    before = _held_out(tr)
    for it in range(25):
        m = tr.step(it)
        assert math.isfinite(m["loss"]) and m["skipped"] == 0
    after = _held_out(tr)
    assert after < before - 0.03, (before, after)


def test_truncation_changes_the_gradient_but_not_the_loss() -> None:
    full, trunc = _trainer(), _trainer(truncation=3)
    lf, _ = full.loss(0)
    lt, _ = trunc.loss(0)
    assert torch.equal(lf, lt)
    lf.backward()
    lt.backward()
    gf, gt = full.vm["w_gates"].grad, trunc.vm["w_gates"].grad
    assert gf is not None and gt is not None and not torch.allclose(gf, gt)


def test_gradient_norm_is_clipped() -> None:
    tr = _trainer(grad_clip=1e-4, lr=1.0)  # Adam normalises; check the clip acted on the stored gradient
    tr.step(0)
    total = torch.linalg.vector_norm(
        torch.stack([torch.linalg.vector_norm(p.grad) for p in tr.vm.values() if p.grad is not None])
    )
    assert float(total) <= 1e-4 * 1.001


def test_nonfinite_gradient_skips_the_update() -> None:
    tr = _trainer()
    before = tr.params()
    with torch.no_grad():
        tr.vm["b_fwd"].fill_(float("nan"))
    m = tr.step(0)
    assert m["skipped"] == 1
    assert torch.equal(tr.vm["w_gates"].detach(), before["w_gates"])


def test_state_dict_roundtrip_continues_identically() -> None:
    a = _trainer()
    for it in range(2):
        a.step(it)
    b = _trainer()
    b.load_state_dict(a.state_dict())
    for it in range(2, 4):
        ma, mb = a.step(it), b.step(it)
        assert ma["loss"] == mb["loss"]
    for k, v in a.params().items():
        assert torch.equal(v, b.params()[k])


@pytest.mark.parametrize("tau", [None, 4.0])
def test_windowed_backward_gives_the_whole_graphs_gradient(tau: float | None) -> None:
    """Backpropagating window by window (memory of K steps) adds up to the truncated graph's gradient."""
    whole, windowed = _trainer(truncation=3, step_weight_tau=tau), _trainer(truncation=3, step_weight_tau=tau)
    lw, _ = whole.loss(0)
    lw.backward()
    loss, _, updates = windowed.accumulate(0)
    assert updates == [] and math.isclose(loss, float(lw), rel_tol=1e-6)
    for k, p in whole.vm.items():
        g, h = p.grad, windowed.vm[k].grad
        assert (g is None) == (h is None)
        if g is not None:
            assert h is not None and torch.allclose(g, h, rtol=1e-5, atol=1e-7), k


def test_window_updates_step_once_per_window_and_resume_exactly() -> None:
    tr = _trainer(truncation=5, window_updates=True)  # 20-step episodes: 4 updates per iteration
    before = tr.params()["w_gates"].clone()
    m = tr.step(0)
    assert m["skipped"] == 0 and math.isfinite(m["loss"])
    assert {float(v["step"]) for v in tr.opt.state_dict()["state"].values()} == {4.0}
    assert not torch.equal(tr.params()["w_gates"], before)
    b = _trainer(truncation=5, window_updates=True)
    b.load_state_dict(tr.state_dict())
    assert tr.step(1)["loss"] == b.step(1)["loss"]
    for k, v in tr.params().items():
        assert torch.equal(v, b.params()[k])


def test_window_updates_need_a_truncation() -> None:
    with pytest.raises(ValueError, match="window_updates needs a truncation"):
        BpttOptions(window_updates=True)


def test_step_weights_favour_the_first_steps_and_average_one() -> None:
    assert torch.equal(step_weights(7, None), torch.ones(7))
    w = step_weights(500, 100.0)
    assert math.isclose(float(w.mean()), 1.0, rel_tol=1e-6)
    assert bool((w[1:] < w[:-1]).all())
    assert math.isclose(float(w[0] / w[100]), 2.0, rel_tol=1e-5)  # (1 + 100 / 100)^-1 against step 0


def test_step_weights_change_the_loss_and_its_gradient() -> None:
    """Weighting is not a no-op: with tau the meta-loss and its gradient differ from the unweighted ones."""
    plain, weighted = _trainer(), _trainer(step_weight_tau=2.0)
    lp, _ = plain.loss(0)
    lw, _ = weighted.loss(0)
    assert not torch.isclose(lp, lw)
    lp.backward()
    lw.backward()
    assert not torch.allclose(plain.vm["w_gates"].grad, weighted.vm["w_gates"].grad)


@pytest.mark.parametrize("tau", [0.0, -1.0, float("nan")])
def test_step_weight_tau_must_be_positive(tau: float) -> None:
    with pytest.raises(ValueError, match="step_weight_tau must be > 0"):
        BpttOptions(step_weight_tau=tau)
