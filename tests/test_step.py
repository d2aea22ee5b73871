"""The fast and naive steps against the per-cell reference, for every config option."""

from __future__ import annotations

import importlib

import pytest
import torch
import torch.nn.functional as F

from tests.reference_cell import reference_step
from vsml_train.model.config import VSMLConfig
from vsml_train.model.episode import labels_to_onehot, online_loss, run_episode
from vsml_train.model.params import Params, init_params
from vsml_train.model.state import VSMLState, init_state
from vsml_train.model.step import Impl, step

DT = torch.float64

# the NCM mixture on top of online_norm (docs/model.md §3.5); "gnb_mixture" adds the third expert to it,
# "lda_mixture" the fourth
NCM_MIXTURE = {
    "online_norm": True,
    "online_norm_prior": 3.0,
    "online_norm_center_prior": 0.5,
    "ncm_temperature": 2.0,
    "ncm_shrink": 0.7,
    "ncm_share": 0.2,
    "bias_input": 1.0,
    "backward_pass": True,
}
# the three-expert mixture: GNB with pooled variances and a class prior, a decaying share, E averaged
GNB_MIXTURE = {
    **NCM_MIXTURE,
    "ncm_share_decay": 1.5,
    "ncm_net_scale": 0.7,
    "gnb_temperature": 1.5,
    "gnb_class_prior": 0.6,
    "gnb_var_prior": 2.0,
    "batch_average": "full",
}
# every option of the config, each switched away from its default at least once
CONFIGS: dict[str, dict] = {
    "default": {},
    "two_layers": {"hidden": (3,)},
    "three_layers_per_layer_params": {"hidden": (2, 3), "shared_params": False},
    "backward_pass": {"backward_pass": True},
    "backward_pass_deep": {"backward_pass": True, "hidden": (3,)},
    "layer_norm": {"layer_norm": True},
    "layer_norm_deep_bp": {"layer_norm": True, "hidden": (2,), "backward_pass": True},
    "no_feed_label": {"feed_label": False},
    "sum_reduction": {"reduction": "sum", "hidden": (2,)},
    "sum_reduction_ln": {"reduction": "sum", "layer_norm": True},
    "sqrt_reduction": {"reduction": "sqrt", "hidden": (2,)},
    "sqrt_reduction_ln_bp": {"reduction": "sqrt", "layer_norm": True, "backward_pass": True},
    "bias_input": {"bias_input": 2.5, "hidden": (2,), "backward_pass": True},
    "bias_input_sqrt_encoded": {
        "bias_input": -1.0,
        "reduction": "sqrt",
        "init_mode": "encoded",
        "batch_average": "full",
    },
    "avg_none": {"batch_average": "none"},
    "avg_full": {"batch_average": "full"},
    "avg_half_deep": {"batch_average": "half", "hidden": (2,)},
    "tight_clip": {"clip": 0.3},
    "no_clip": {"clip": None},
    "one_micro_tick": {"micro_ticks": 1},
    "three_micro_ticks": {"micro_ticks": 3},
    "output_channel_0": {"output_channel": 0, "tanh_bound": 0.5, "output_gain": 3.0},
    "coords": {"coord_inputs": True},
    "time_layer_inputs": {"time_input": True, "layer_input": True, "hidden": (2,)},
    "all_extras_bp_ln": dict(coord_inputs=True, time_input=True, layer_input=True, backward_pass=True, layer_norm=True),
    "encoded_init": {"init_mode": "encoded", "hidden": (2,), "shared_params": False},
    "small_state": {"state_size": 4, "msg_size": 3},
    "no_init_noise": {"init_random": False, "init_scale": 2.0},
    "online_norm_error_decay": {"online_norm": True, "error_decay_steps": 7.0, "error_scale": 1.5},
    "online_norm_bias_sqrt_bp": {
        "online_norm": True,
        "online_norm_eps": 0.3,
        "online_norm_prior": 2.0,
        "online_norm_center_prior": 0.5,
        "bias_input": 3.0,
        "reduction": "sqrt",
        "backward_pass": True,
        "batch_average": "full",
        "hidden": (2,),
    },
    "ncm_mixture": NCM_MIXTURE,
    "gnb_mixture": GNB_MIXTURE,
    # the four-expert mixture: LDA with the full pooled covariance; 5 conjugate-gradient iterations > A = 3
    # reach the oracle's exact solution
    "lda_mixture": {
        **GNB_MIXTURE,
        "lda_temperature": 0.8,
        "lda_var_prior": 2.5,
        "lda_iterations": 5,
    },
    # class-mean experts that do not guess unseen classes (and are not judged on their first labels)
    "unseen_penalty": {**GNB_MIXTURE, "lda_temperature": 0.8, "lda_iterations": 5, "ncm_unseen_penalty": 3.0},
    # ... and whose unseen classes sit at the labelled examples' mirror
    "unseen_mirror": {
        **GNB_MIXTURE,
        "lda_temperature": 0.8,
        "lda_iterations": 5,
        "ncm_unseen_penalty": 3.0,
        "ncm_unseen_mirror": 1.5,
    },
    "error_decay_only": {"error_decay_steps": 2.0, "error_decay_power": 1.0, "feed_label": False},
}


def random_params(config: VSMLConfig, seed: int, pop: int | None = None) -> Params:
    """V_M with every tensor non-trivial (random biases and LN affine too)."""
    gen = torch.Generator().manual_seed(seed)
    base = init_params(config, seed, dtype=DT)
    out = {}
    for k, t in base.items():
        shape = t.shape if pop is None else (pop, *t.shape)
        noise = torch.randn(shape, generator=gen, dtype=DT)
        scale = 1.5 if k.startswith("w_") else 0.5
        out[k] = (t if pop is None else t.expand(shape)) * (1.0 + 0.3 * noise) + scale * noise * (
            0.5 if k.startswith("w_") else 1.0
        )
    return out


def random_state(config: VSMLConfig, a: int, b: int, p: int, e: int, seed: int, params: Params) -> VSMLState:
    """A fresh state perturbed so that h, c, bwd and t are all non-zero and per-example."""
    gen = torch.Generator().manual_seed(seed)
    s = init_state(config, a, b, p, e, generator=gen, params=params, dtype=DT)

    def jitter(t: torch.Tensor, scale: float) -> torch.Tensor:
        return t + scale * torch.randn(t.shape, generator=gen, dtype=DT)

    return VSMLState(
        h=tuple(jitter(h, 0.3).clamp(-0.99, 0.99) for h in s.h),
        c=tuple(jitter(c, 1.0) for c in s.c),
        bwd=tuple(jitter(x, 0.5) for x in s.bwd),
        t=None if s.t is None else s.t + torch.arange(e, dtype=DT) * 3 + 5,
        norm=None if s.norm is None else (jitter(s.norm[0], 1.0), s.norm[1] + jitter(s.norm[0], 0.5).abs()),
        ncm=s.ncm,
    )


def make_inputs(p: int, e: int, a: int, b: int, t: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(t, p, e, a, generator=gen, dtype=DT) * 1.5
    y = torch.randint(0, b, (t, p, e), generator=gen)
    y[min(1, t - 1), 0, 0] = -1  # one example without a label
    return x, y


def assert_states_close(s1: VSMLState, s2: VSMLState, tol: float) -> None:
    d1, d2 = s1.to_dict(), s2.to_dict()
    assert d1.keys() == d2.keys()
    for k in d1:
        torch.testing.assert_close(d1[k], d2[k], atol=tol, rtol=tol, msg=lambda m, k=k: f"state {k}: {m}")


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("pop", [None, 2])
def test_fast_and_naive_match_per_cell_reference(name: str, pop: int | None) -> None:
    config = VSMLConfig(**CONFIGS[name])
    p, e, a, b = 2, 3, 3, 2
    params = random_params(config, 0, pop)
    state = random_state(config, a, b, p, e, 1, params)
    x, y = make_inputs(p, e, a, b, 3, 2)
    y1h = labels_to_onehot(y, b, DT)
    impls = ("fast", "fused", "blocked", "chunked", "naive")
    states = dict.fromkeys(impls, state)
    s_ref = state
    for t in range(x.shape[0]):
        s_ref, l_ref = reference_step(params, s_ref, x[t], y1h[t], config)
        for impl in impls:
            states[impl], logits = step(params, states[impl], x[t], y1h[t], config, impl=impl)
            torch.testing.assert_close(logits, l_ref, atol=1e-10, rtol=1e-10, msg=lambda m, i=impl: f"{i}: {m}")
            assert_states_close(states[impl], s_ref, 1e-10)
    assert l_ref.abs().max() > 1e-6, "degenerate test: logits are zero"


@pytest.mark.parametrize("impl", ["onnx", "onnx-rows"])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_export_impl_matches_per_cell_reference(name: str, impl: Impl) -> None:
    """impls "onnx" / "onnx-rows" (the visits and averaging the exporter traces) for one V_M (no population axis)."""
    config = VSMLConfig(**CONFIGS[name])
    p, e, a, b = 2, 3, 3, 2
    params = random_params(config, 0)
    state = random_state(config, a, b, p, e, 1, params)
    x, y = make_inputs(p, e, a, b, 3, 2)
    y1h = labels_to_onehot(y, b, DT)
    s_ref = s_exp = state
    for t in range(x.shape[0]):
        s_ref, l_ref = reference_step(params, s_ref, x[t], y1h[t], config)
        s_exp, logits = step(params, s_exp, x[t], y1h[t], config, impl=impl)
        torch.testing.assert_close(logits, l_ref, atol=1e-10, rtol=1e-10)
        assert_states_close(s_exp, s_ref, 1e-10)
    assert l_ref.abs().max() > 1e-6, "degenerate test: logits are zero"


@pytest.mark.parametrize("name", ["default", "two_layers", "backward_pass_deep", "layer_norm_deep_bp", "avg_full",
                                  "all_extras_bp_ln", "encoded_init", "three_layers_per_layer_params"])  # fmt: skip
def test_gradients_through_unrolled_episode_match_reference(name: str) -> None:
    config = VSMLConfig(**CONFIGS[name])
    p, e, a, b, steps = 1, 2, 3, 2, 3
    x, y = make_inputs(p, e, a, b, steps, 3)
    y[1, 0, 0] = 1
    y1h = labels_to_onehot(y, b, DT)

    def loss_of(step_fn, params: Params) -> torch.Tensor:
        gen = torch.Generator().manual_seed(4)
        s = init_state(config, a, b, p, e, generator=gen, params=params, dtype=DT)
        total = torch.zeros((), dtype=DT)
        for t in range(steps):
            s, logits = step_fn(params, s, x[t], y1h[t], config)
            total = total + F.cross_entropy(logits.reshape(-1, b), y[t].reshape(-1))
        return total + sum(c.pow(2).mean() for c in s.c)

    base = random_params(config, 5)
    grads = {}
    for label, fn in [("ref", reference_step), ("fast", step)]:  # "fast" dispatches to "blocked" under autograd
        ps = {k: v.clone().requires_grad_(True) for k, v in base.items()}
        loss_of(fn, ps).backward()
        grads[label] = {k: v.grad for k, v in ps.items()}
    for k in base:
        torch.testing.assert_close(grads["fast"][k], grads["ref"][k], atol=1e-9, rtol=1e-8, msg=f"grad of {k}")
    assert any(g.abs().max() > 1e-8 for g in grads["ref"].values())


def test_gradcheck_fast_step_finite_differences() -> None:
    config = VSMLConfig(state_size=4, msg_size=2, hidden=(2,), layer_norm=True, backward_pass=True)
    x, y = make_inputs(1, 2, 2, 2, 2, 0)
    params = random_params(config, 1)
    w0 = params["w_gates"]

    def f(w: torch.Tensor) -> torch.Tensor:
        ps = {**params, "w_gates": w}
        r = run_episode(ps, config, x, y, 2, seed=0)
        return online_loss(r.logits, y).sum() + r.state.c[0].sum()

    assert torch.autograd.gradcheck(f, (w0.clone().requires_grad_(True),), eps=1e-6, atol=1e-6)


def _episode(config: VSMLConfig, y: torch.Tensor, x: torch.Tensor) -> list[VSMLState]:
    params = random_params(config, 0)
    y1h = labels_to_onehot(y, 3, DT)
    s = init_state(config, x.shape[-1], 3, 1, 1, generator=torch.Generator().manual_seed(0), params=params, dtype=DT)
    states, logits = [], []
    for t in range(x.shape[0]):
        s, lg = step(params, s, x[t], y1h[t], config)
        states.append(s)
        logits.append(lg)
    return states, torch.stack(logits)


def test_error_timing_without_backward_pass() -> None:
    """e_t reaches the last layer at step t+1 and the layer below one step later."""
    config = VSMLConfig(hidden=(3,))
    x, y = make_inputs(1, 1, 4, 3, 6, 0)
    y[:] = 0
    y2 = y.clone()
    t0 = 2
    y2[t0] = 2
    s1, l1 = _episode(config, y, x)
    s2, l2 = _episode(config, y2, x)
    torch.testing.assert_close(l1[: t0 + 1], l2[: t0 + 1], atol=0, rtol=0)  # prediction before the label
    assert (l1[t0 + 1] - l2[t0 + 1]).abs().max() > 1e-9  # the last layer learned from e_t at t+1
    torch.testing.assert_close(s1[t0].h[1], s2[t0].h[1], atol=0, rtol=0)
    torch.testing.assert_close(s1[t0 + 1].h[0], s2[t0 + 1].h[0], atol=0, rtol=0)  # layer 1 not yet
    assert (s1[t0 + 2].h[0] - s2[t0 + 2].h[0]).abs().max() > 1e-12  # one layer per step


def test_error_timing_with_backward_pass() -> None:
    """With the backward pass e_t is absorbed by every layer in step t, after predicting."""
    config = VSMLConfig(hidden=(3,), backward_pass=True)
    x, y = make_inputs(1, 1, 4, 3, 4, 0)
    y[:] = 0
    y2 = y.clone()
    y2[1] = 2
    s1, l1 = _episode(config, y, x)
    s2, l2 = _episode(config, y2, x)
    torch.testing.assert_close(l1[:2], l2[:2], atol=0, rtol=0)
    assert (s1[1].h[0] - s2[1].h[0]).abs().max() > 1e-12
    assert (s1[1].h[1] - s2[1].h[1]).abs().max() > 1e-12


def test_unlabelled_example_sends_no_error() -> None:
    config = VSMLConfig()
    x, y = make_inputs(1, 1, 4, 3, 3, 0)
    y[1] = -1
    states, _ = _episode(config, y, x)
    assert states[1].bwd[0].abs().max() == 0


@pytest.mark.parametrize("mode", ["none", "full", "half"])
def test_batch_averaging_units(mode: str) -> None:
    config = VSMLConfig(batch_average=mode, hidden=(2,))
    n = config.state_size
    params = random_params(config, 0)
    x, y = make_inputs(2, 4, 3, 2, 1, 0)
    state = random_state(config, 3, 2, 2, 4, 0, params)
    new, _ = step(params, state, x[0], labels_to_onehot(y[0], 2, DT), config)
    for h in (*new.h, *new.c):
        spread = (h - h.mean(1, keepdim=True)).abs().amax(dim=(0, 1, 2, 3))  # [N] max deviation over E per unit
        averaged = {"none": 0, "full": n, "half": n // 2}[mode]
        assert torch.all(spread[:averaged] < 1e-12)
        assert torch.all(spread[averaged:] > 1e-6)
        # each learner averages over its own examples only
        assert (h[0] - h[1]).abs().max() > 1e-6


def test_clipping_bounds_state_on_extreme_inputs() -> None:
    config = VSMLConfig(clip=0.7, hidden=(2,))
    params = random_params(config, 0)
    params = {k: v * 10 for k, v in params.items()}
    x = torch.full((1, 2, 5), 1e6, dtype=DT)
    y = labels_to_onehot(torch.zeros(1, 2, dtype=torch.long), 3, DT)
    s = init_state(config, 5, 3, 1, 2, generator=torch.Generator().manual_seed(0), params=params, dtype=DT)
    hit = False
    for _ in range(20):
        s, logits = step(params, s, x, y, config)
        for c in s.c:
            assert c.abs().max() <= 0.7
            hit |= bool((c.abs() == 0.7).any())
        assert torch.isfinite(logits).all()
    assert hit, "test never reached the clip bound"


def test_initial_state_statistics() -> None:
    config = VSMLConfig(init_scale=2.0, hidden=(50,))
    n, a = config.state_size, 400
    s = init_state(config, a, 50, 3, 2, generator=torch.Generator().manual_seed(0))
    c = s.c[0]
    half = c[..., : n // 2]
    std = 2.0 / a**0.5
    trunc_factor = 0.8796  # std of a standard normal truncated at +-2
    assert abs(half.std().item() / (std * trunc_factor) - 1) < 0.01
    assert half.abs().max() <= 2 * std + 1e-7
    assert abs(half.mean().item()) < 0.01 * std
    assert c[..., n // 2 :].abs().max() == 0 and s.h[0].abs().max() == 0
    torch.testing.assert_close(c[:, 0], c[:, 1])  # examples of a learner share the init
    assert (c[0] - c[1]).abs().max() > 0  # learners differ
    assert abs(s.c[1][..., : n // 2].std().item() / (2.0 / 50**0.5 * trunc_factor) - 1) < 0.05  # fan-in of layer 2
    s2 = init_state(config, a, 50, 3, 2, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(s2.c[0], c, atol=0, rtol=0)


def test_encoded_initial_state_writes_one_weight_through_learned_vectors() -> None:
    config = VSMLConfig(init_mode="encoded")
    params = init_params(config, 0)
    params["init_enc_h"] = torch.linspace(-1, 1, config.state_size)
    s = init_state(config, 9, 4, 1, 1, generator=torch.Generator().manual_seed(0), params=params)
    w = s.c[0][..., 0]
    torch.testing.assert_close(s.c[0], w.unsqueeze(-1) * params["init_enc_c"])
    torch.testing.assert_close(s.h[0], w.unsqueeze(-1) * params["init_enc_h"])
    with pytest.raises(ValueError, match="needs V_M"):
        init_state(config, 9, 4, 1, 1, generator=torch.Generator().manual_seed(0))


def test_logits_independent_of_batch_companions_without_averaging() -> None:
    """With batch_average none, the E examples of one learner are independent copies."""
    config = VSMLConfig(batch_average="none")
    params = random_params(config, 0)
    x, y = make_inputs(1, 3, 4, 3, 4, 0)
    r = run_episode(params, config, x, y, 3, seed=0)
    r0 = run_episode(params, config, x[:, :, :1], y[:, :, :1], 3, seed=0)
    torch.testing.assert_close(r.logits[:, :, :1], r0.logits, atol=1e-12, rtol=0)


def test_chunked_path_crosses_chunk_and_learner_boundaries(monkeypatch) -> None:
    """Chunks that split a learner's grid, span several learners, and per-learner V_M."""
    step_module = importlib.import_module("vsml_train.model.visits")  # where the chunked visit reads it
    monkeypatch.setattr(step_module, "CHUNK_CELLS", 5)  # grids of 3 x 2 cells: chunks cut across learners
    for pop in (None, 2):
        config = VSMLConfig(hidden=(3,), coord_inputs=True, time_input=True)
        params = random_params(config, 0, pop)
        state = random_state(config, 4, 2, 2, 3, 1, params)
        x, y = make_inputs(2, 3, 4, 2, 2, 2)
        y1h = labels_to_onehot(y, 2, DT)
        s1 = s2 = state
        for t in range(2):
            s1, l1 = step(params, s1, x[t], y1h[t], config, impl="chunked")
            s2, l2 = step(params, s2, x[t], y1h[t], config, impl="blocked")
            torch.testing.assert_close(l1, l2, atol=1e-12, rtol=1e-12)
            assert_states_close(s1, s2, 1e-12)


def test_fast_dispatch_uses_autograd_path_when_gradients_are_needed() -> None:
    config = VSMLConfig()
    params = {k: v.requires_grad_(True) for k, v in random_params(config, 0).items()}
    x, y = make_inputs(1, 1, 3, 2, 2, 0)
    r = run_episode(params, config, x, y, 2, seed=0)
    assert r.logits.requires_grad
    with torch.no_grad():
        r2 = run_episode(params, config, x, y, 2, seed=0)
    torch.testing.assert_close(r.logits.detach(), r2.logits, atol=1e-12, rtol=1e-12)
