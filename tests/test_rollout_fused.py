"""The C rollout (``rollout_fused``, whole episodes of impl "fused") against the reference and the torch step."""

from __future__ import annotations

import ctypes

import pytest
import torch

from tests.reference_cell import reference_step
from tests.test_step import CONFIGS, DT, assert_states_close, make_inputs, random_params, random_state
from vsml_train.model import rollout_fused as rf
from vsml_train.model import visit_fused as vf
from vsml_train.model.config import VSMLConfig
from vsml_train.model.episode import labels_to_onehot, make_step_fn, run_episode
from vsml_train.model.state import VSMLState
from vsml_train.model.step import step

needs_kernel = pytest.mark.skipif(not vf.fused_available(), reason="no C compiler: the fused kernel is not built")


def _inputs(config: VSMLConfig, pop: int | None, dtype: torch.dtype, a: int = 3, b: int = 2, t: int = 4):
    p = pop or 2
    params = {k: v.to(dtype) for k, v in random_params(config, 0, pop).items()}
    state = random_state(config, a, b, p, 1, 1, random_params(config, 0, pop)).map(lambda v: v.to(dtype))
    x, y = make_inputs(p, 1, a, b, t, 2)
    return params, state, x.to(dtype), y


@needs_kernel
@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("pop", [None, 2])
def test_rollout_matches_per_cell_reference(name: str, pop: int | None) -> None:
    """float64: every config the rollout covers gives the reference's logits and final state; the rest fall back."""
    config = VSMLConfig(**CONFIGS[name])
    params, state, x, y = _inputs(config, pop, DT)
    y1h = labels_to_onehot(y, 2, DT)
    ran = rf.rollout_fused(params, config, x, y1h, state)
    assert (ran is not None) == rf.covers(config)
    res = run_episode(params, config, x, y, 2, state=state, step_fn=make_step_fn(config, "fused"))
    s_ref, logits = state, []
    for t in range(x.shape[0]):
        s_ref, l_ref = reference_step(params, s_ref, x[t], y1h[t], config)
        logits.append(l_ref)
    torch.testing.assert_close(res.logits, torch.stack(logits), atol=1e-10, rtol=1e-10)
    assert_states_close(res.state, s_ref, 1e-10)


@needs_kernel
@pytest.mark.parametrize("n", [16, 32, 6])
@pytest.mark.parametrize("extra", [{}, {"hidden": (4,), "shared_params": False}, {"clip": None, "bias_input": 1.0}])
def test_rollout_float32_matches_fast_step(n: int, extra: dict) -> None:
    """float32 (the vectorised blocks, more columns than one block holds) against the eager fast step."""
    config = VSMLConfig(state_size=n, **extra)
    params, state, x, y = _inputs(config, 2, torch.float32, a=5, b=19, t=5)
    r1 = run_episode(params, config, x, y, 19, state=state, step_fn=make_step_fn(config, "fused"))
    with torch.no_grad():
        r2 = run_episode(params, config, x, y, 19, state=state, step_fn=make_step_fn(config, "fast"))
    torch.testing.assert_close(r1.logits, r2.logits, atol=2e-5, rtol=2e-5)
    for k, v in r1.state.to_dict().items():
        torch.testing.assert_close(v, r2.state.to_dict()[k], atol=2e-5, rtol=2e-5, msg=lambda m, k=k: f"{k}: {m}")


@needs_kernel
def test_rollout_leaves_the_given_state_alone() -> None:
    config = VSMLConfig()
    params, state, x, y = _inputs(config, None, DT)
    before = {k: v.clone() for k, v in state.to_dict().items()}
    rf.rollout_fused(params, config, x, labels_to_onehot(y, 2, DT), state)
    assert all(torch.equal(v, before[k]) for k, v in state.to_dict().items())


@needs_kernel
def test_rollout_keeps_nan_visible() -> None:
    """A NaN input of one learner makes its logits NaN from then on and leaves the other learner finite."""
    config = VSMLConfig()
    params, state, x, y = _inputs(config, 2, DT)
    x[1, 0, 0, 1] = float("nan")
    out = rf.rollout_fused(params, config, x, labels_to_onehot(y, 2, DT), state)
    assert out is not None
    logits, final = out
    assert torch.isnan(logits[1:, 0]).all() and torch.isfinite(logits[:, 1]).all() and torch.isfinite(logits[0]).all()
    assert torch.isnan(final.h[0][0]).any() and torch.isfinite(final.h[0][1]).all()


@needs_kernel
def test_rollout_steps_aside_for_autograd_and_batches() -> None:
    config = VSMLConfig()
    params, state, x, y = _inputs(config, None, DT)
    y1h = labels_to_onehot(y, 2, DT)
    grad_params = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    assert rf.rollout_fused(grad_params, config, x, y1h, state) is None
    with torch.no_grad():
        assert rf.rollout_fused(grad_params, config, x, y1h, state) is not None
    e2 = VSMLState(h=tuple(h.expand(-1, 2, -1, -1, -1) for h in state.h), c=state.c, bwd=state.bwd, t=state.t)
    assert rf.rollout_fused(params, config, x.expand(-1, -1, 2, -1), y1h.expand(-1, -1, 2, -1), e2) is None


def test_rollout_without_kernel_returns_none(monkeypatch: pytest.MonkeyPatch) -> None:
    """No compiler: run_episode with impl "fused" steps in torch (the fallback visit), same numbers as impl fast."""
    monkeypatch.setattr(vf, "_LIB", None)
    monkeypatch.setattr(vf, "_TRIED", True)
    config = VSMLConfig()
    params, state, x, y = _inputs(config, 2, DT)
    assert rf.rollout_fused(params, config, x, labels_to_onehot(y, 2, DT), state) is None
    r1 = run_episode(params, config, x, y, 2, state=state, step_fn=make_step_fn(config, "fused"))
    r2 = run_episode(params, config, x, y, 2, state=state, step_fn=make_step_fn(config, "fast"))
    assert torch.equal(r1.logits, r2.logits)


@needs_kernel
def test_rollout_float32_extreme_inputs_match_fast_step() -> None:
    """float32 (the AVX-512 exp where built): saturating gates (inputs of 1e30, inf) as in the torch step, NaN kept."""
    config = VSMLConfig()
    params, state, x, y = _inputs(config, 3, torch.float32, a=4, b=10, t=3)
    x[:, 0] *= 1e30
    x[1, 1, 0, 2] = float("inf")
    x[1, 2, 0, 0] = float("nan")
    r1 = run_episode(params, config, x, y, 10, state=state, step_fn=make_step_fn(config, "fused"))
    with torch.no_grad():
        r2 = run_episode(params, config, x, y, 10, state=state, step_fn=make_step_fn(config, "fast"))
    torch.testing.assert_close(r1.logits, r2.logits, atol=2e-5, rtol=2e-5, equal_nan=True)
    assert torch.isnan(r1.logits[1:, 2]).all() and torch.isfinite(r1.logits[:, :2]).all()
    for k, v in r1.state.to_dict().items():
        torch.testing.assert_close(v, r2.state.to_dict()[k], atol=2e-5, rtol=2e-5, equal_nan=True)


@needs_kernel
@pytest.mark.parametrize("n", [16, 32])
def test_portable_kernel_build_matches(monkeypatch: pytest.MonkeyPatch, tmp_path, n: int) -> None:
    """The kernel built without the AVX-512 blocks (-DVSML_NO_AVX512): the same numbers in the rollout and the visit."""
    path = vf.build(tmp_path, extra=("-DVSML_NO_AVX512",))
    assert path is not None
    portable = vf.declare(ctypes.CDLL(str(path)))
    config = VSMLConfig(state_size=n, hidden=(7,))
    params, state, x, y = _inputs(config, 2, torch.float32, a=5, b=12, t=4)
    native = run_episode(params, config, x, y, 12, state=state, step_fn=make_step_fn(config, "fused"))
    y1h = labels_to_onehot(y, 12, torch.float32)
    with torch.no_grad():
        s_native, l_native = step(params, state, x[0], y1h[0], config, impl="fused")
    monkeypatch.setattr(vf, "_LIB", portable)
    monkeypatch.setattr(vf, "_TRIED", True)
    other = run_episode(params, config, x, y, 12, state=state, step_fn=make_step_fn(config, "fused"))
    torch.testing.assert_close(other.logits, native.logits, atol=2e-5, rtol=2e-5)
    with torch.no_grad():
        s_other, l_other = step(params, state, x[0], y1h[0], config, impl="fused")
    torch.testing.assert_close(l_other, l_native, atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(s_other.h[0], s_native.h[0], atol=2e-5, rtol=2e-5)
