"""impl "fused" (the C kernel of ``visit_fused``) and its fallback: the same numbers as the plain graph.

The float64 parity against the per-cell reference for every config option is
in ``test_step.py``; here: float32 (the kernel's vectorised path), the state
sizes with their own compiled copies (16, 32) and one without, NaN
propagation, the fallback when the kernel cannot be built, and which impl the
gradient-free trainers pick.
"""

from __future__ import annotations

import pytest
import torch

from tests.tasks import LinearTeacherTasks
from tests.test_step import make_inputs, random_params, random_state
from vsml_train.methods.es import EsOptions, EsTrainer
from vsml_train.model import visit_fused as vf
from vsml_train.model.config import VSMLConfig
from vsml_train.model.episode import labels_to_onehot
from vsml_train.model.state import VSMLState
from vsml_train.model.step import step

needs_kernel = pytest.mark.skipif(not vf.fused_available(), reason="no C compiler: the fused kernel is not built")


def _run(config: VSMLConfig, impl: str, dtype: torch.dtype, pop: int | None, e: int) -> tuple[VSMLState, torch.Tensor]:
    p, a, b = 2, 5, 3
    params = {k: v.to(dtype) for k, v in random_params(config, 0, pop).items()}
    s = random_state(config, a, b, p, e, 1, random_params(config, 0, pop)).map(lambda t: t.to(dtype))
    x, y = make_inputs(p, e, a, b, 3, 2)
    y1h = labels_to_onehot(y, b, dtype)
    out = []
    with torch.no_grad():
        for t in range(x.shape[0]):
            s, logits = step(params, s, x[t].to(dtype), y1h[t], config, impl=impl)
            out.append(logits)
    return s, torch.stack(out)


@needs_kernel
@pytest.mark.parametrize("n", [16, 32, 6])
@pytest.mark.parametrize(("pop", "e"), [(None, 1), (2, 1), (None, 3), (2, 3)])
@pytest.mark.parametrize("extra", [{}, {"backward_pass": True, "layer_norm": True, "hidden": (4,)}, {"clip": None}])
def test_fused_float32_matches_fast(n: int, pop: int | None, e: int, extra: dict) -> None:
    config = VSMLConfig(state_size=n, **extra)
    s1, l1 = _run(config, "fused", torch.float32, pop, e)
    s2, l2 = _run(config, "fast", torch.float32, pop, e)
    torch.testing.assert_close(l1, l2, atol=2e-5, rtol=2e-5)
    for k, v in s1.to_dict().items():
        torch.testing.assert_close(v, s2.to_dict()[k], atol=2e-5, rtol=2e-5, msg=lambda m, k=k: f"{k}: {m}")


@needs_kernel
def test_fused_keeps_nan_visible() -> None:
    """A diverging learner must stay NaN (ES counts non-finite fitness): no clamp or exp may hide it."""
    config = VSMLConfig()
    params = random_params(config, 0)
    s = random_state(config, 4, 3, 1, 1, 1, params)
    x = torch.randn(1, 1, 4, dtype=torch.float64)
    x[0, 0, 1] = float("nan")
    y = torch.zeros(1, 1, 3, dtype=torch.float64)
    with torch.no_grad():
        s1, l1 = step(params, s, x, y, config, impl="fused")
        s2, l2 = step(params, s, x, y, config, impl="fast")
    assert torch.isnan(l1).all() and torch.isnan(l2).all()
    assert torch.equal(torch.isnan(s1.h[0]), torch.isnan(s2.h[0]))


def test_fallback_without_kernel_is_the_plain_graph(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the kernel cannot run, impl "fused" is impl "fast" with the step's clip: the same numbers exactly."""
    monkeypatch.setattr(vf, "_LIB", None)
    monkeypatch.setattr(vf, "_TRIED", True)
    assert not vf.fused_available()
    for extra in ({}, {"backward_pass": True, "hidden": (2,)}, {"clip": 0.3}):
        config = VSMLConfig(**extra)
        for e in (1, 3):
            s1, l1 = _run(config, "fused", torch.float64, 2, e)
            s2, l2 = _run(config, "fast", torch.float64, 2, e)
            assert torch.equal(l1, l2)
            assert all(torch.equal(v, s2.to_dict()[k]) for k, v in s1.to_dict().items())


def test_fused_disabled_by_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VSML_FUSED", "0")
    assert vf.kernel() is None


def test_build_without_compiler_returns_none(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    with pytest.warns(UserWarning, match="fused kernel not built"):
        assert vf.build(tmp_path) is None


def test_fused_under_autograd_falls_back_and_differentiates() -> None:
    config = VSMLConfig()
    params = {k: v.clone().requires_grad_(True) for k, v in random_params(config, 0).items()}
    s = random_state(config, 3, 2, 1, 1, 1, params)
    x, y = make_inputs(1, 1, 3, 2, 1, 0)
    _, logits = step(params, s, x[0], labels_to_onehot(y, 2, torch.float64)[0], config, impl="fused")
    logits.sum().backward()
    assert params["w_gates"].grad is not None


def test_gradient_free_trainers_default_to_fused() -> None:
    tasks = LinearTeacherTasks(3, 2, 6, seed=4, block=2)
    assert EsTrainer(VSMLConfig(), EsOptions(pairs=1), seed=0, tasks=tasks).impl == "fused"
    assert EsTrainer(VSMLConfig(), EsOptions(pairs=1), seed=0, tasks=tasks, impl="naive").impl == "naive"


def test_build_into_an_unwritable_cache_returns_none(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.warns(UserWarning, match="fused kernel not built"):
        assert vf.build(blocker / "cache") is None
