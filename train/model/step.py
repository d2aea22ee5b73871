"""One VSML time step: the schedule of layer visits (docs/model.md §3).

Dimension letters (docs/model.md §8): P learners, E examples per step of one
learner, A inputs, B outputs of a layer, N state, M message, K layers.

``step(params, state, x, y, config)`` is a pure function: it never updates a
tensor in place, uses explicit batched tensor ops only (no vmap), so autograd
can differentiate an unrolled episode and the exporter can trace it. It is
written once; what differs between implementations is only the layer visit
and the batch averaging, chosen by ``impl``:

* ``fast`` (default), ``blocked``, ``chunked``, ``naive``: the visits of
  ``vsml_train.model.visits`` with ``cell.average_and_clip``;
* ``fused``: ``vsml_train.model.visit_fused``, the micro ticks in a compiled C
  loop (no autograd; falls back to ``fast`` where the kernel cannot run);
* ``onnx``: ``vsml_train.model.visit_onnx``, the same numbers arranged for
  ONNX Runtime (what the exporter traces), with the batch averaging under an
  ``If (E > 1)``; one V_M only (no population axis); ``onnx-rows``: the same
  with the micro ticks in blocks of rows (cache-sized on large grids).

Timing (test-then-train): at step t the network receives x_t and the error
message of its previous prediction (stored in ``state.bwd``), outputs logits
y_hat_t, and only then is y_t used, to build the error message for step t+1
(or, with ``backward_pass``, for a second tick in reverse layer order in the
same step). ``y`` may be all-zero for an example without a label: its error
message is then zero.
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor

from .cell import (
    AverageFn,
    VisitFn,
    average_and_clip,
    error_message,
    extra_inputs,
    input_message,
    layer_params,
    online_standardize,
    read_logits,
)
from .config import VSMLConfig
from .mixture import expert_logits, mix, ncm_update
from .params import Params
from .state import VSMLState
from .visit_fused import fused_schedule, visit_fused
from .visit_onnx import average_and_clip_onnx, visit_onnx, visit_onnx_rows
from .visits import visit_blocked, visit_chunked, visit_fast, visit_naive

Impl = Literal["fast", "fused", "blocked", "chunked", "naive", "onnx", "onnx-rows"]

IMPLS: dict[str, tuple[VisitFn, AverageFn]] = {
    "fast": (visit_fast, average_and_clip),
    "fused": (visit_fused, average_and_clip),
    "blocked": (visit_blocked, average_and_clip),
    "chunked": (visit_chunked, average_and_clip),
    "naive": (visit_naive, average_and_clip),
    "onnx": (visit_onnx, average_and_clip_onnx),
    "onnx-rows": (visit_onnx_rows, average_and_clip_onnx),
}


def step(
    params: Params,
    state: VSMLState,
    x: Tensor,
    y: Tensor,
    config: VSMLConfig,
    impl: Impl = "fast",
) -> tuple[VSMLState, Tensor]:
    """One time step of the whole network.

    Args:
        params: V_M (base shapes, or [P, *base] for a population).
        state: the state at time t (see ``vsml_train.model.state``).
        x: [P, E, A] inputs x_t.
        y: [P, E, B] one-hot labels y_t (all-zero rows = no label). The
            logits never depend on y.
        config: the model configuration.
        impl: a key of ``IMPLS`` (same numbers; see the module docstring).
    Returns:
        (state at t+1, logits y_hat_t [P, E, B]); with ``ncm_temperature`` the
        output is the NCM mixture's log-probabilities (docs/model.md §3.5),
        while the error message is still built from y_hat_t.
    """
    visit, average = IMPLS[impl]
    last_visit = visit  # each layer's last visit of the step (impl "fused" clips in it)
    if impl == "fused":
        last_visit, average = fused_schedule(config, x.shape[1])
    k_layers = config.n_layers
    hs, cs = list(state.h), list(state.c)
    t = state.t
    norm = state.norm
    x_raw = x
    if config.online_norm:
        assert t is not None and norm is not None, "online_norm needs the step count and the moments in the state"
        x, x_mean, x_sq = online_standardize(x, norm[0], norm[1], t, config)
        norm = (x_mean, x_sq)
    fwd_in = input_message(x, config)
    fwd_ins: list[Tensor] = []
    extras = []
    for k in range(k_layers):
        a, b = hs[k].shape[2], hs[k].shape[3]
        extras.append(extra_inputs(config, k, a, b, t, x))
    new_bwd: list[Tensor] = list(state.bwd)
    # forward tick: layers 1..K in order
    for k in range(k_layers):
        p = layer_params(params, k, config)
        bwd_in = None if config.backward_pass else state.bwd[k]
        want_bwd = (not config.backward_pass) and k > 0
        fwd_visit = visit if config.backward_pass else last_visit
        hs[k], cs[k], fwd_out, bwd_out = fwd_visit(p, hs[k], cs[k], fwd_in, bwd_in, extras[k], config, True, want_bwd)
        fwd_ins.append(fwd_in)
        if want_bwd:
            assert bwd_out is not None
            new_bwd[k - 1] = bwd_out
        assert fwd_out is not None
        fwd_in = fwd_out
    logits = read_logits(fwd_in, config)
    err = error_message(logits, y, config, t)  # the network learns from its own prediction
    ncm = state.ncm
    if ncm is not None:  # the output: the NCM mixture's log-probabilities (docs/model.md §3.5)
        assert norm is not None and t is not None
        net = logits if config.ncm_net_scale == 1.0 else logits * config.ncm_net_scale  # the network expert
        experts, directions = expert_logits(x_raw, norm[0], norm[1], t, ncm, config)
        logits, lp = mix(net, experts, ncm[2])
        ncm = ncm_update(x_raw, y, lp, ncm, t, config, directions)
    if config.backward_pass:
        # backward tick: layers K..1 on (x_t, e_t); errors reach every layer now
        bwd_in = err
        for k in reversed(range(k_layers)):
            p = layer_params(params, k, config)
            hs[k], cs[k], _, bwd_out = last_visit(p, hs[k], cs[k], fwd_ins[k], bwd_in, extras[k], config, False, k > 0)
            if k > 0:
                assert bwd_out is not None
                bwd_in = bwd_out
    else:
        new_bwd[k_layers - 1] = err
    for k in range(k_layers):
        hs[k], cs[k] = average(hs[k], cs[k], config)
    t_next = None if t is None else t + 1
    new_state = VSMLState(h=tuple(hs), c=tuple(cs), bwd=tuple(new_bwd), t=t_next, norm=norm, ncm=ncm)
    return new_state, logits
