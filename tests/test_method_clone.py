"""Backprop cloning (methods/clone*.py): options, config, objective, trainer, held-out checks."""

from __future__ import annotations

import io
import math

import pytest
import torch

from vsml_train.clone_check import compare_with_sgd
from vsml_train.evaluation.imitated_sgd import online_sgd, online_summary
from vsml_train.methods.base import Trainer
from vsml_train.methods.clone import CloneTrainer
from vsml_train.methods.clone_eval import clone_errors
from vsml_train.methods.clone_objective import clone_rollout, sgd_targets
from vsml_train.methods.clone_options import CloneOptions, check_clone_config, clone_config, implied_sgd_lr, logit_gain
from vsml_train.model.params import init_params
from vsml_train.model.state import init_state
from vsml_train.model.step import step

# tiny problems: every test here runs in about a second
TINY = {
    "state_size": 8,
    "msg_size": 3,
    "batch": 32,
    "stage1_steps": 4,
    "stage1_iterations": 3,
    "pool_size": 24,
    "row_size": 4,
    "window": 3,
    "mean_age": 8.0,
    "max_age": 12,
}


def tiny(**changes: object) -> CloneOptions:
    return CloneOptions(**{**TINY, **changes})


def test_clone_config_sanity() -> None:
    o = CloneOptions()
    cfg = clone_config(o)
    assert (cfg.state_size, cfg.msg_size, cfg.hidden) == (32, 8, ())
    assert cfg.backward_pass and cfg.init_mode == "encoded" and not cfg.feed_label
    assert cfg.batch_average == "full" and cfg.clip == 4.0
    # G = lr / (target_scale * s) for "sum": 0.01 / (20 * 1e-3)
    assert cfg.output_gain == pytest.approx(0.5)
    for a in (10, 784):
        assert implied_sgd_lr(cfg, o, a) == pytest.approx(0.01)
    # "mean" ties the gain to the deployment fan-in
    om = CloneOptions(reduction="mean", deploy_inputs=784, sgd_lr=0.003)
    cm = clone_config(om)
    assert cm.output_gain == pytest.approx(logit_gain(om)) == pytest.approx(0.003 * 784 / 0.02)
    assert implied_sgd_lr(cm, om, 784) == pytest.approx(0.003)
    # effective initial weights W_0 = factor * z * init_scale / sqrt(A) with std init_gain / sqrt(A)
    for c, oo in ((cfg, o), (cm, om)):
        factor = implied_sgd_lr(c, oo, 784) / oo.update_scale
        assert factor * c.init_scale == pytest.approx(oo.init_gain)
    check_clone_config(cfg, o)
    with pytest.raises(ValueError, match="backward_pass"):
        check_clone_config(cfg.replace(backward_pass=False), o)


def test_options_validation_and_round_trip() -> None:
    o = tiny(examples=(1, 4))
    assert CloneOptions.from_dict(o.to_dict()) == o
    with pytest.raises(ValueError, match="unknown CloneOptions keys"):
        CloneOptions.from_dict({"nope": 1})
    with pytest.raises(ValueError, match="weight_unit"):
        CloneOptions(state_size=4, weight_unit=4)
    with pytest.raises(ValueError, match="examples"):
        CloneOptions(examples=())
    with pytest.raises(ValueError, match="multiple of row_size"):
        CloneOptions(pool_size=25, row_size=10)


def test_trainer_is_a_trainer() -> None:
    o = tiny()
    tr: Trainer = CloneTrainer(clone_config(o), o, seed=0)
    assert tr.name == "clone" and tr.config == clone_config(o)


def test_rollout_is_the_deployed_step() -> None:
    """Single cells fed the grid's own errors reproduce ``step`` on a 3 x 4 grid (E = 2, full averaging)."""
    o = CloneOptions(state_size=6, msg_size=3, micro_ticks=2)
    cfg = clone_config(o)
    dt = torch.float64
    gen = torch.Generator().manual_seed(3)
    params = {k: v + 0.7 * torch.randn(v.shape, generator=gen, dtype=dt) for k, v in init_params(cfg, 1, dt).items()}
    a, b, e, t_steps = 3, 4, 2, 5
    st0 = init_state(cfg, a, b, 1, e, generator=torch.Generator().manual_seed(0), params=params, dtype=dt)
    x = torch.randn(t_steps, 1, e, a, generator=gen, dtype=dt)
    y = torch.nn.functional.one_hot(torch.randint(0, b, (t_steps, 1, e), generator=gen), b).to(dt)
    st, errs, logits = st0, [], []
    for t in range(t_steps):
        st, lg = step(params, st, x[t], y[t], cfg)
        logits.append(lg)
        errs.append(torch.softmax(lg, -1) - y[t])
    err = torch.stack(errs)  # [T, 1, E, B]
    # cell (a, b) as problem a * B + b
    xc = x[:, 0].unsqueeze(-1).expand(t_steps, e, a, b).permute(0, 2, 3, 1).reshape(t_steps, a * b, e)
    ec = err[:, 0].unsqueeze(-2).expand(t_steps, e, a, b).permute(0, 2, 3, 1).reshape(t_steps, a * b, e)

    def cells(s: torch.Tensor) -> torch.Tensor:  # [1, E, A, B, N] -> [A * B, E, 1, 1, N]
        return s[0].permute(1, 2, 0, 3).reshape(a * b, e, 1, 1, -1)

    roll = clone_rollout(params, cfg, cells(st0.h[0]), cells(st0.c[0]), xc, ec, unit=0)
    torch.testing.assert_close(roll.c, cells(st.c[0]), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(roll.h, cells(st.h[0]), rtol=1e-12, atol=1e-12)
    fwd = roll.fwd.reshape(t_steps, a, b, e).sum(1).permute(0, 2, 1)  # "sum" over inputs -> [T, E, B]
    expect = cfg.tanh_bound * torch.tanh(cfg.output_gain * fwd / cfg.tanh_bound)
    torch.testing.assert_close(expect, torch.stack(logits)[:, 0], rtol=1e-12, atol=1e-12)


def test_sgd_targets() -> None:
    x = torch.tensor([[[0.5, -1.0]], [[2.0, 0.0]]])  # [T=2, P=1, E=2]
    e = torch.tensor([[[0.1, 0.3]], [[-0.2, 0.4]]])
    tgt = sgd_targets(torch.tensor([0.01]), x, e, update_scale=1e-3, target_scale=20.0)
    tx = torch.tanh(x)
    w1 = 0.01 - 1e-3 * (tx[0, 0] * e[0, 0]).mean()
    torch.testing.assert_close(
        tgt.w[:, 0], torch.stack([torch.tensor(0.01), w1, w1 - 1e-3 * (tx[1, 0] * e[1, 0]).mean()])
    )
    torch.testing.assert_close(tgt.fwd[1, 0], 20 * tx[1, 0] * w1)
    torch.testing.assert_close(tgt.bwd[0, 0], 20 * 0.01 * e[0, 0] * (1 - tx[0, 0] ** 2))


def test_loss_goes_down() -> None:
    torch.manual_seed(0)
    o = tiny(stage1_iterations=1000, batch=64, lr=1e-2)
    tr = CloneTrainer(clone_config(o), o, seed=0)
    losses = [tr.step(i)["loss"] for i in range(40)]
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-5:]) < 0.5 * sum(losses[:5])


def _roundtrip(state: dict) -> dict:
    """Through torch.save / weights_only load, as a checkpoint would go."""
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def test_resume_is_bit_exact() -> None:
    """Both stages, pool restarts and examples cycling (1, 2): k steps + resume == straight run."""
    o = tiny(examples=(1, 2))
    cfg = clone_config(o)
    straight = CloneTrainer(cfg, o, seed=5)
    for i in range(9):
        straight.step(i)
    first = CloneTrainer(cfg, o, seed=5)
    for i in range(6):
        first.step(i)
    assert first.pool is not None and int(first.pool.age.max()) > 0
    resumed = CloneTrainer(cfg, o, seed=5)
    resumed.load_state_dict(_roundtrip(first.state_dict()))
    for i in range(6, 9):
        resumed.step(i)
    for k, v in straight.params().items():
        assert torch.equal(v, resumed.params()[k]), k
    assert straight.pool is not None and resumed.pool is not None
    assert torch.equal(straight.pool.c, resumed.pool.c) and torch.equal(straight.pool.age, resumed.pool.age)


def test_state_dict_is_a_snapshot() -> None:
    """Training on after state_dict() must not change what it returned (no aliasing)."""
    o = tiny()
    tr = CloneTrainer(clone_config(o), o, seed=0)
    for i in range(5):
        tr.step(i)
    snap = tr.state_dict()
    kept = _roundtrip(snap)
    for i in range(5, 7):
        tr.step(i)
    assert torch.equal(snap["pool"]["c"], kept["pool"]["c"])
    moments = [s["exp_avg"] for s in snap["optimizer"]["state"].values()]
    assert all(torch.equal(m, k["exp_avg"]) for m, k in zip(moments, kept["optimizer"]["state"].values(), strict=True))


def test_load_rejects_other_options() -> None:
    o = tiny()
    tr = CloneTrainer(clone_config(o), o, seed=0)
    other = CloneTrainer(clone_config(o), tiny(lr=1e-4), seed=0)
    with pytest.raises(ValueError, match="other options"):
        other.load_state_dict(tr.state_dict())


def test_determinism_from_seed() -> None:
    o = tiny()
    cfg = clone_config(o)
    runs = []
    for seed in (1, 1, 2):
        tr = CloneTrainer(cfg, o, seed=seed)
        metrics = [tr.step(i) for i in range(5)]
        runs.append((tr.params(), metrics))
    assert all(torch.equal(v, runs[1][0][k]) for k, v in runs[0][0].items())
    assert runs[0][1] == runs[1][1]
    assert not torch.equal(runs[0][0]["w_gates"], runs[2][0]["w_gates"])


def test_clone_errors_keys() -> None:
    o = tiny()
    cfg = clone_config(o)
    errs = clone_errors(init_params(cfg, 0), cfg, o, seed=0, problems=8, steps=5, long_steps=10)
    assert set(errs) == {
        "fwd_rel",
        "fwd_centered_rel",
        "bwd_rel",
        "update_rel",
        "update_centered_rel",
        "weight_err_updates",
        "init_err_updates",
        "long_drift_rel",
        "long_drift_centered_rel",
        "long_fwd_rel",
    }
    assert all(math.isfinite(v) for v in errs.values())
    # the fresh encoding writes the weight into unit 0 exactly
    assert errs["init_err_updates"] == pytest.approx(0.0, abs=1e-6)


def test_online_sgd_matches_a_manual_step() -> None:
    w0 = torch.zeros(1, 2, 2)
    x = torch.tensor([[[[1.0, -1.0]]], [[[0.5, 0.5]]]])  # [T=2, S=1, E=1, A=2]
    y = torch.tensor([[[0]], [[1]]])
    logits = online_sgd(w0, x, y, lr=0.1)
    tx = torch.tanh(x[0, 0, 0])
    w1 = -0.1 * torch.outer(tx, torch.tensor([0.5, 0.5]) - torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(logits[1, 0, 0], torch.tanh(x[1, 0, 0]) @ w1)
    s = online_summary(torch.stack([logits[0], logits[1]]), y)
    assert set(s) >= {"mean", "first100", "last200", "per_stream_mean"}


def test_compare_with_sgd_runs_on_tiny_data() -> None:
    o = tiny()
    cfg = clone_config(o)
    gen = torch.Generator().manual_seed(0)
    feats, labels = torch.rand(60, 6, generator=gen), torch.randint(0, 3, (60,), generator=gen)
    r = compare_with_sgd(init_params(cfg, 0), cfg, feats, labels, steps=10, streams=2, seed=0, options=o)
    assert r["sgd_lr"] == pytest.approx(o.sgd_lr)
    for who in ("clone", "sgd"):
        assert 0.0 <= r[who]["mean"] <= 1.0 and len(r[who]["per_stream_mean"]) == 2
    r2 = compare_with_sgd(init_params(cfg, 0), cfg, feats, labels, steps=5, streams=1, seed=0, options=o, examples=4)
    assert r2["examples"] == 4
