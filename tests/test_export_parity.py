"""Parity of the exported step (ONNX Runtime) with the PyTorch step, step by step.

From the same state, 20 consecutive steps (each fed the PyTorch state), the
logits and every state tensor agree within 1e-5, for one and two layers, one
and several examples per step, every batch-averaging mode, with and without
the backward pass and LayerNorm. The export impl's visit and averaging
(``vsml_train.model.visit_onnx``) are also compared with ``visit_fast`` directly in float64.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from vsml_export.exporter import VERIFY_TOL, ExportOptions, export_graphs
from vsml_export.module import StepModule
from vsml_export.switch import BLOCKED_FROM_FLOATS
from vsml_export.trace import grid_names
from vsml_runtime.format import FEATURES_AXIS
from vsml_runtime.sessions import session_options
from vsml_train.model.cell import average_and_clip, extra_inputs, input_message, layer_params
from vsml_train.model.config import VSMLConfig
from vsml_train.model.model_file import ModelFile
from vsml_train.model.params import init_params
from vsml_train.model.state import init_state, state_names
from vsml_train.model.visit_onnx import average_and_clip_onnx, row_blocks, visit_onnx, visit_onnx_rows
from vsml_train.model.visits import visit_fast

TOL = 1e-5

# each config once per feature, and some in combination (tiny sizes keep this fast)
CONFIGS = {
    "default": {},
    "none-ln": {"batch_average": "none", "layer_norm": True},
    "full-bp": {"batch_average": "full", "backward_pass": True},
    "deep-half-ln-bp": {"hidden": (5,), "layer_norm": True, "backward_pass": True},
    "deep-none": {"hidden": (4,), "batch_average": "none"},
    "deep-full-ln-perlayer": {"hidden": (3,), "batch_average": "full", "layer_norm": True, "shared_params": False},
    "extras-sum-noclip": {
        "coord_inputs": True,
        "time_input": True,
        "layer_input": True,
        "reduction": "sum",
        "clip": None,
        "feed_label": False,
    },
    "n32-encoded-gain": {"state_size": 32, "init_mode": "encoded", "output_gain": 3.0, "micro_ticks": 3},
    # the shipped default's options: size-free pooling and a bias input
    "sqrt-bias-encoded": {
        "reduction": "sqrt",
        "bias_input": 3.0,
        "init_mode": "encoded",
        "batch_average": "full",
        "backward_pass": True,
        "feed_label": False,
        "output_gain": 14.0,
    },
    "sqrt-bias-deep-ln": {"reduction": "sqrt", "bias_input": 1.0, "hidden": (4,), "layer_norm": True},
    # online standardisation of the inputs and the annealed error (learner 5's options)
    "norm-decay-bias": {
        "online_norm": True,
        "error_decay_steps": 5.0,
        "error_decay_power": 0.7,
        "reduction": "sqrt",
        "bias_input": 3.0,
        "init_mode": "encoded",
        "batch_average": "full",
        "backward_pass": True,
    },
    "norm-deep": {"online_norm": True, "hidden": (3,), "online_norm_eps": 0.5},
    "norm-centre-prior": {"online_norm": True, "online_norm_prior": 10.0, "online_norm_center_prior": 1.0},
    "ncm-mixture": {"online_norm": True, "online_norm_center_prior": 0.3, "ncm_temperature": 5.0, "bias_input": 3.0},
    "gnb-mixture": {
        "online_norm": True,
        "online_norm_center_prior": 0.3,
        "ncm_temperature": 5.0,
        "gnb_temperature": 2.0,
        "ncm_share_decay": 30.0,
        "ncm_net_scale": 0.75,
        "bias_input": 3.0,
    },
    "lda-mixture": {
        "online_norm": True,
        "online_norm_center_prior": 0.3,
        "ncm_temperature": 5.0,
        "gnb_temperature": 2.0,
        "lda_temperature": 1.0,
        "lda_var_prior": 3.0,
        "ncm_share_decay": 30.0,
        "ncm_unseen_penalty": 10.0,
        "ncm_unseen_mirror": 2.0,
        "bias_input": 3.0,
        "backward_pass": True,
        "batch_average": "full",
    },
    # the LDA expert up to 7 features: the parity sizes (6 and 9) run both branches of the If
    "lda-limit": {
        "online_norm": True,
        "ncm_temperature": 5.0,
        "gnb_temperature": 2.0,
        "lda_temperature": 1.0,
        "lda_max_features": 7,
        "hidden": (3,),
    },
}


def _model(overrides: dict, seed: int = 0) -> ModelFile:
    config = VSMLConfig(**overrides)
    params = init_params(config, seed)
    # make biases and LN parameters non-trivial so that every term is exercised
    gen = torch.Generator().manual_seed(seed + 1)
    params = {k: v if k.startswith("w_") else v + 0.3 * torch.randn(v.shape, generator=gen) for k, v in params.items()}
    return ModelFile(config=config, params=params, meta={})


def _session(graph: object) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(graph.SerializeToString(), so, providers=["CPUExecutionProvider"])  # type: ignore[attr-defined]


def step_parity(
    model: ModelFile, sess: ort.InferenceSession, p: int, e: int, sizes: list[int], steps: int, tol: float = TOL
) -> float:
    """Max |ORT - torch| over ``steps`` consecutive steps, each from the torch state; asserts ``tol``.

    The mixture's class sums and scatter grow with the stream: theirs is relative to their largest entry (>= 1).
    """
    config = model.config
    names = state_names(config)
    cfg = config.replace(hidden=tuple(sizes[1:-1]))
    gen = torch.Generator().manual_seed(5)
    state = init_state(cfg, sizes[0], sizes[-1], p, e, generator=gen, params=model.params).to_dict()
    module = StepModule(model.params, config)
    worst = 0.0
    for t in range(steps):
        x = torch.randn(p, e, sizes[0], generator=gen) * (4.0 if t % 7 == 3 else 1.0)
        y = torch.randint(-1, sizes[-1], (p, e), generator=gen)
        with torch.no_grad():
            ref = module(*(state[n] for n in names), x, y)
        feed = {n: v.numpy() for n, v in state.items()} | {"x": x.numpy(), "y": y.numpy()}
        got = sess.run(None, feed)
        for name, g, r in zip([*names, "logits"], got, ref, strict=True):
            assert g.shape == tuple(r.shape), name
            err = float(np.abs(g - r.numpy()).max()) if g.size else 0.0  # (the LDA state above its limit)
            if name.startswith(("ncm_", "lda_")):  # the mixture's growing sums: float32 rounding relative to their size
                err /= max(1.0, float(r.abs().max()) if r.numel() else 0.0)
            assert err <= tol, f"step {t}: {name} differs by {err}"
            worst = max(worst, err)
        state = dict(zip(names, ref[: len(names)], strict=True))
    return worst


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_exported_step_matches_torch_for_20_steps(name: str) -> None:
    model = _model(CONFIGS[name])
    step_graph, _, _ = export_graphs(model, ExportOptions(verify=False))
    sess = _session(step_graph)
    hidden = list(model.config.hidden)
    for p, e, a, b in ((1, 1, 6, 3), (2, 3, 9, 4)):
        worst = step_parity(model, sess, p, e, [a, *hidden, b], steps=20)
        print(f"{name} P={p} E={e}: max |ORT - torch| over 20 steps = {worst:.2e}")


def test_untuned_export_matches_torch() -> None:
    """The plain trace of ``visit_fast`` (--untuned) computes the same numbers."""
    model = _model({"hidden": (3,), "layer_norm": True})
    step_graph, _, _ = export_graphs(model, ExportOptions(verify=False, tuned=False))
    step_parity(model, _session(step_graph), 2, 3, [5, 3, 4], steps=20)


@pytest.mark.parametrize("opset", [18, 19, 20])
def test_each_opset_exports_and_matches(opset: int) -> None:
    model = _model({})
    step_graph, _init_graph, err = export_graphs(model, ExportOptions(opset=opset))
    assert err is not None and err <= TOL
    assert {o.domain: o.version for o in step_graph.opset_import}[""] == opset


@pytest.mark.parametrize(
    "name", ["default", "none-ln", "deep-half-ln-bp", "extras-sum-noclip", "n32-encoded-gain", "sqrt-bias-encoded"]
)
def test_export_impl_equal_visit_fast_in_float64(name: str) -> None:
    """``visit_onnx`` and ``average_and_clip_onnx`` against the step's originals, float64."""
    model = _model(CONFIGS[name])
    config = model.config
    params = {k: v.double() for k, v in model.params.items()}
    gen = torch.Generator().manual_seed(3)
    p, e = 2, 3
    sizes = [7, *config.hidden, 4]
    cfg = config.replace(hidden=tuple(sizes[1:-1]))
    st = init_state(cfg, sizes[0], sizes[-1], p, e, generator=gen, params=params, dtype=torch.float64)
    t = torch.full((p, e), 5.0, dtype=torch.float64)
    for k in range(config.n_layers):
        a, b = sizes[k], sizes[k + 1]
        pk = layer_params(params, k, config)
        h = st.h[k] + 0.5 * torch.randn(st.h[k].shape, generator=gen, dtype=torch.float64)
        c = st.c[k] + 0.5 * torch.randn(st.c[k].shape, generator=gen, dtype=torch.float64)
        fwd_in = input_message(torch.randn(p, e, a, generator=gen, dtype=torch.float64), config)
        fwd_in = fwd_in + 0.3 * torch.randn(fwd_in.shape, generator=gen, dtype=torch.float64)
        bwd_in = torch.randn(p, e, b, config.msg_size, generator=gen, dtype=torch.float64)
        extras = extra_inputs(config, k, a, b, t, fwd_in)
        for bwd in (bwd_in, None):
            ref = visit_fast(pk, h, c, fwd_in, bwd, extras, config, True, True)
            for visit in (visit_onnx, visit_onnx_rows):  # rows in blocks: 7 rows in 4 or 8 (one empty) blocks
                got = visit(pk, h, c, fwd_in, bwd, extras, config, True, True)
                for r, g in zip(ref, got, strict=True):
                    assert r is not None and g is not None
                    torch.testing.assert_close(g, r, rtol=0, atol=1e-12)
        ref_avg = average_and_clip(h * 3, c * 3, config)
        for r, g in zip(ref_avg, average_and_clip_onnx(h * 3, c * 3, config), strict=True):
            torch.testing.assert_close(g, r, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", ["default", "sqrt-bias-encoded", "deep-half-ln-bp"])
def test_large_grids_take_the_blocked_branch_with_the_same_numbers(name: str) -> None:
    """Where the states hold >= BLOCKED_FROM_FLOATS floats the graph runs the ticks in blocks of rows.

    Checked with the generic session (the If evaluated per call) and with one whose sizes are fixed, as
    the runtime's (ONNX Runtime folds the If and inlines the blocked branch), against PyTorch.
    """
    model = _model(CONFIGS[name])
    config = model.config
    assert row_blocks(config) > 1
    step_graph, _, _ = export_graphs(model, ExportOptions(verify=False))
    assert [n.op_type for n in step_graph.graph.node][-1] == "If"
    hidden = list(config.hidden)
    for p, e, a, b in ((1, 1, 901, 8), (2, 2, 301, 7)):  # A not a multiple of the blocks
        sizes = [a, *hidden, b]
        cells = sum(x * y for x, y in config.layer_sizes(a, b))
        assert p * e * cells * config.state_size >= BLOCKED_FROM_FLOATS
        # logits pooled over 500+ cells: float32 rounding of about 1e-5 (the exporter's own bound, 1e-4)
        step_parity(model, _session(step_graph), p, e, sizes, steps=3, tol=VERIFY_TOL)
        grids = [x for x, _ in config.layer_sizes(a, b)] + [b]
        dims = {"P": p, "E": e, FEATURES_AXIS: a} | dict(zip(grid_names(config), grids, strict=True))
        fixed = ort.InferenceSession(
            step_graph.SerializeToString(), session_options(1, dims), providers=["CPUExecutionProvider"]
        )
        step_parity(model, fixed, p, e, sizes, steps=3, tol=VERIFY_TOL)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["default", "deep-half-ln-bp", "extras-sum-noclip"])
def test_dynamo_export_matches_torch_for_20_steps(name: str) -> None:
    """The torch.export-based exporter, same checks (slow: it takes tens of seconds per graph)."""
    model = _model(CONFIGS[name])
    step_graph, _, _ = export_graphs(model, ExportOptions(exporter="dynamo"))
    sess = _session(step_graph)
    hidden = list(model.config.hidden)
    for p, e, a, b in ((1, 1, 6, 3), (2, 3, 9, 4)):
        step_parity(model, sess, p, e, [a, *hidden, b], steps=20)
