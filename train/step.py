"""One VSML time step (reference sections 2-4), written once.

Dimension letters: P learners, E examples per step of one learner, A inputs,
B outputs of a layer, N state, M message, X extra cell inputs, K layers.

``step(params, state, x, y, config)`` is a pure function: it never updates a
tensor in place, uses explicit batched tensor ops only (no vmap), so autograd
can differentiate an unrolled episode and the exporter can trace it.

Two implementations of a layer visit share the schedule:

* ``fast`` (default) exploits the algebra. The message part of the gate
  pre-activation of cell (a, b) splits into a row term fwd_in[a] @ W_f and a
  column term bwd_in[b] @ W_b, computed on [A] and [B] instead of [A, B];
  without LayerNorm the message heads are linear and commute with the
  reduction over the grid, so they run on [B, N] and [A, N]; the gates are
  permuted to (i, f, o, g) so one sigmoid and one tanh cover them; only the
  heads whose messages are used are evaluated.
* ``naive`` is the straightforward vectorised formulation (concatenated
  per-cell input, full gate matmul, both heads on every cell), kept as the
  benchmark baseline and as a second reference.

Timing (test-then-train): at step t the network receives x_t and the error
message of its previous prediction (stored in ``state.bwd``), outputs logits
y_hat_t, and only then is y_t used, to build the error message for step t+1
(or, with ``backward_pass``, for a second tick in reverse layer order in the
same step). ``y`` may be all-zero for an example without a label: its error
message is then zero.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from .config import VSMLConfig
from .params import Params, base_ndim
from .state import VSMLState

Impl = Literal["fast", "naive"]


# ---------------------------------------------------------------------------
# small tensor helpers


def _mm(x: Tensor, w: Tensor) -> Tensor:
    """x [P, ..., I] @ w: w is [I, J] (shared) or [P, I, J] (per learner)."""
    if w.dim() == 2:
        return x @ w
    p = x.shape[0]
    shape = x.shape
    out = torch.bmm(x.reshape(p, -1, shape[-1]), w)
    return out.reshape(*shape[:-1], w.shape[-1])


def _bcast(v: Tensor, ndim: int) -> Tensor:
    """A [J] or [P, J] parameter vector shaped to broadcast against [P, ..., J]."""
    if v.dim() == 1:
        return v
    return v.reshape(v.shape[0], *([1] * (ndim - 2)), v.shape[-1])


def layer_params(params: Params, k: int, config: VSMLConfig) -> Params:
    """The V_M tensors used by layer k: base shape or [P, *base]."""
    if config.shared_params:
        return params
    out = {}
    for name, t in params.items():
        has_pop = t.dim() == base_ndim(name) + 2
        out[name] = t[:, k] if has_pop else t[k]
    return out


def _reduce(x: Tensor, dim: int, config: VSMLConfig) -> Tensor:
    return x.mean(dim) if config.reduction == "mean" else x.sum(dim)


def _layer_norm(m: Tensor, g: Tensor, b: Tensor) -> Tensor:
    """LayerNorm over the last (message) axis with gain g and bias b."""
    mu = m.mean(-1, keepdim=True)
    var = (m - mu).pow(2).mean(-1, keepdim=True)
    out = (m - mu) * torch.rsqrt(var + 1e-5)
    return out * _bcast(g, m.dim()) + _bcast(b, m.dim())


def _split_rows(p: Params, config: VSMLConfig) -> dict[str, Tensor]:
    """Split w_gates [U + N, 4N] into its row blocks (fwd, bwd, extras, h)."""
    m, x = config.msg_size, config.n_extra_inputs
    w = p["w_gates"]
    return {
        "f": w[..., :m, :],
        "b": w[..., m : 2 * m, :],
        "x": w[..., 2 * m : 2 * m + x, :],
        "h": w[..., 2 * m + x :, :],
    }


def _gate_bias(p: Params, config: VSMLConfig) -> Tensor:
    """b_gates with the fixed offsets added to the i and f gates: [4N] or [P, 4N]."""
    n = config.state_size
    offs = torch.zeros(4 * n, dtype=p["b_gates"].dtype, device=p["b_gates"].device)
    offs = torch.cat(
        [
            torch.full((n,), config.input_gate_offset, dtype=offs.dtype, device=offs.device),
            torch.zeros(n, dtype=offs.dtype, device=offs.device),
            torch.full((n,), config.forget_gate_offset, dtype=offs.dtype, device=offs.device),
            torch.zeros(n, dtype=offs.dtype, device=offs.device),
        ]
    )
    return p["b_gates"] + offs


def _extras(
    config: VSMLConfig, k: int, a: int, b: int, t: Tensor | None, like: Tensor
) -> tuple[Tensor | None, Tensor | None]:
    """Extra cell inputs split into a row part [A, Xr] and a column part [P, E, B, Xc].

    Row part: a / (A - 1) if coord_inputs. Column part: b / (B - 1) if
    coord_inputs, log1p(t) / 10 if time_input, k / K if layer_input.
    """
    row = None
    cols: list[Tensor] = []
    p, e = like.shape[0], like.shape[1]
    if config.coord_inputs:
        row = (torch.arange(a, dtype=like.dtype, device=like.device) / max(a - 1, 1)).unsqueeze(-1)
        cb = torch.arange(b, dtype=like.dtype, device=like.device) / max(b - 1, 1)
        cols.append(cb.reshape(1, 1, b, 1).expand(p, e, b, 1))
    if config.time_input:
        assert t is not None
        cols.append((torch.log1p(t) / 10).reshape(p, e, 1, 1).expand(p, e, b, 1))
    if config.layer_input:
        lk = torch.full((p, e, b, 1), k / config.n_layers, dtype=like.dtype, device=like.device)
        cols.append(lk)
    col = torch.cat(cols, dim=-1) if cols else None
    return row, col


# ---------------------------------------------------------------------------
# one layer visit: micro ticks on fixed incoming messages, then message heads

VisitFn = Callable[..., tuple[Tensor, Tensor, Tensor | None, Tensor | None]]


def visit_fast(
    p: Params,
    h: Tensor,
    c: Tensor,
    fwd_in: Tensor,
    bwd_in: Tensor | None,
    extras: tuple[Tensor | None, Tensor | None],
    config: VSMLConfig,
    want_fwd: bool,
    want_bwd: bool,
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """Run the micro ticks of one layer, factored (see module docstring).

    Args:
        p: this layer's V_M (base shapes or [P, *base]).
        h, c: [P, E, A, B, N].
        fwd_in: [P, E, A, M] incoming forward messages.
        bwd_in: [P, E, B, M] incoming backward messages, or None for zeros.
        extras: (row [A, Xr] or None, column [P, E, B, Xc] or None).
    Returns:
        h, c [P, E, A, B, N]; fwd_out [P, E, B, M] or None; bwd_out [P, E, A, M] or None.
    """
    n = config.state_size
    w = _split_rows(p, config)
    # permute gate columns (i, g, f, o) -> (i, f, o, g): one sigmoid + one tanh
    perm = torch.cat([torch.arange(0, n), torch.arange(2 * n, 4 * n), torch.arange(n, 2 * n)]).to(h.device)
    bias = _gate_bias(p, config)[..., perm]
    pp, e, b = h.shape[0], h.shape[1], h.shape[3]
    row = _mm(fwd_in, w["f"][..., perm])  # [P, E, A, 4N]
    col = _bcast(bias, 4)  # [4N] or [P, 1, 1, 4N]
    if bwd_in is not None:
        col = col + _mm(bwd_in, w["b"][..., perm])  # [P, E, B, 4N]
    wx = w["x"][..., perm]
    row_x, col_x = extras
    xr = 0
    if row_x is not None:
        xr = row_x.shape[-1]
        rx = row_x @ wx[..., :xr, :]  # [A, 4N] or [P, A, 4N]
        row = row + (rx.unsqueeze(1) if rx.dim() == 3 else rx)
    if col_x is not None:
        col = col + _mm(col_x, wx[..., xr:, :])
    col = col.expand(pp, e, b, 4 * n)
    z_in = row.unsqueeze(3) + col.unsqueeze(2)  # [P, E, A, B, 4N]
    w_h = w["h"][..., perm]
    for _ in range(config.micro_ticks):
        z = z_in + _mm(h, w_h)
        s = torch.sigmoid(z[..., : 3 * n])
        g = torch.tanh(z[..., 3 * n :])
        c = s[..., n : 2 * n] * c + s[..., :n] * g
        h = s[..., 2 * n :] * torch.tanh(c)
    fwd_out = bwd_out = None
    if config.layer_norm:
        if want_fwd:
            m = _mm(h, p["w_fwd"]) + _bcast(p["b_fwd"], 5)
            fwd_out = _reduce(_layer_norm(m, p["ln_fwd_g"], p["ln_fwd_b"]), 2, config)
        if want_bwd:
            m = _mm(h, p["w_bwd"]) + _bcast(p["b_bwd"], 5)
            bwd_out = _reduce(_layer_norm(m, p["ln_bwd_g"], p["ln_bwd_b"]), 3, config)
    else:
        a, b = h.shape[2], h.shape[3]
        if want_fwd:
            scale = 1.0 if config.reduction == "mean" else float(a)
            fwd_out = _mm(_reduce(h, 2, config), p["w_fwd"]) + _bcast(p["b_fwd"], 4) * scale
        if want_bwd:
            scale = 1.0 if config.reduction == "mean" else float(b)
            bwd_out = _mm(_reduce(h, 3, config), p["w_bwd"]) + _bcast(p["b_bwd"], 4) * scale
    return h, c, fwd_out, bwd_out


def visit_naive(
    p: Params,
    h: Tensor,
    c: Tensor,
    fwd_in: Tensor,
    bwd_in: Tensor | None,
    extras: tuple[Tensor | None, Tensor | None],
    config: VSMLConfig,
    want_fwd: bool,
    want_bwd: bool,
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """Straightforward vectorised layer visit (same signature as ``visit_fast``).

    Builds u_ab = [fwd_in[a], bwd_in[b], extras] for every cell, one gate
    matmul on [u, h], both heads on every cell, then the reduction.
    """
    n = config.state_size
    pp, e, a, b = h.shape[:4]
    if bwd_in is None:
        bwd_in = torch.zeros(pp, e, b, config.msg_size, dtype=h.dtype, device=h.device)
    parts = [fwd_in.unsqueeze(3).expand(pp, e, a, b, -1), bwd_in.unsqueeze(2).expand(pp, e, a, b, -1)]
    row_x, col_x = extras
    if row_x is not None:
        parts.append(row_x.reshape(1, 1, a, 1, -1).expand(pp, e, a, b, -1))
    if col_x is not None:
        parts.append(col_x.unsqueeze(2).expand(pp, e, a, b, -1))
    u = torch.cat(parts, dim=-1)
    bias = _bcast(_gate_bias(p, config), 5)
    for _ in range(config.micro_ticks):
        z = _mm(torch.cat([u, h], dim=-1), p["w_gates"]) + bias
        i, g, f, o = z.split(n, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
    mf = _mm(h, p["w_fwd"]) + _bcast(p["b_fwd"], 5)
    mb = _mm(h, p["w_bwd"]) + _bcast(p["b_bwd"], 5)
    if config.layer_norm:
        mf = _layer_norm(mf, p["ln_fwd_g"], p["ln_fwd_b"])
        mb = _layer_norm(mb, p["ln_bwd_g"], p["ln_bwd_b"])
    fwd_out = _reduce(mf, 2, config) if want_fwd else None
    bwd_out = _reduce(mb, 3, config) if want_bwd else None
    return h, c, fwd_out, bwd_out


VISITS: dict[str, VisitFn] = {"fast": visit_fast, "naive": visit_naive}


# ---------------------------------------------------------------------------
# messages at the network's boundary


def input_message(x: Tensor, config: VSMLConfig) -> Tensor:
    """First layer's forward message [x_a, 0, ..., 0]: x [P, E, A] -> [P, E, A, M]."""
    return F.pad(x.unsqueeze(-1), (0, config.msg_size - 1))


def read_logits(fwd_out: Tensor, config: VSMLConfig) -> Tensor:
    """Soft-bounded logits from the last forward message: [P, E, B, M] -> [P, E, B]."""
    bound = config.tanh_bound
    return bound * torch.tanh(config.output_gain * fwd_out[..., config.output_channel] / bound)


def error_message(logits: Tensor, y: Tensor, config: VSMLConfig) -> Tensor:
    """Last layer's backward message [e_b, l_b, 0, ...]: [P, E, B] x2 -> [P, E, B, M].

    e = (softmax(logits) - y) * (sum of y): examples whose y is all-zero (no
    label) get a zero error; l = y when feed_label, else 0.
    """
    has_label = y.sum(-1, keepdim=True)
    e = (torch.softmax(logits, dim=-1) - y) * has_label
    lab = y if config.feed_label else torch.zeros_like(y)
    return F.pad(torch.stack([e, lab], dim=-1), (0, config.msg_size - 2))


# ---------------------------------------------------------------------------
# stabilisers


def average_and_clip(h: Tensor, c: Tensor, config: VSMLConfig) -> tuple[Tensor, Tensor]:
    """Batch averaging over the E axis (none/full/half), then clipping to [-clip, clip]."""
    if config.batch_average != "none" and h.shape[1] > 1:
        k = h.shape[-1] if config.batch_average == "full" else h.shape[-1] // 2
        h = _average_units(h, k)
        c = _average_units(c, k)
    if config.clip is not None:
        h = h.clamp(-config.clip, config.clip)
        c = c.clamp(-config.clip, config.clip)
    return h, c


def _average_units(s: Tensor, k: int) -> Tensor:
    """Replace units [:k] of s [P, E, A, B, N] by their mean over E."""
    shared = s[..., :k].mean(1, keepdim=True).expand_as(s[..., :k])
    if k == s.shape[-1]:
        return shared
    return torch.cat([shared, s[..., k:]], dim=-1)


# ---------------------------------------------------------------------------
# the step


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
        state: the state at time t (see ``vsml_train.state``).
        x: [P, E, A] inputs x_t.
        y: [P, E, B] one-hot labels y_t (all-zero rows = no label). The
            logits never depend on y.
        config: the model configuration.
        impl: "fast" or "naive" layer visits (same numbers).
    Returns:
        (state at t+1, logits y_hat_t [P, E, B]).
    """
    visit = VISITS[impl]
    k_layers = config.n_layers
    hs, cs = list(state.h), list(state.c)
    t = state.t
    fwd_in = input_message(x, config)
    fwd_ins: list[Tensor] = []
    extras = []
    for k in range(k_layers):
        a, b = hs[k].shape[2], hs[k].shape[3]
        extras.append(_extras(config, k, a, b, t, x))
    new_bwd: list[Tensor] = list(state.bwd)
    # forward tick: layers 1..K in order
    for k in range(k_layers):
        p = layer_params(params, k, config)
        bwd_in = None if config.backward_pass else state.bwd[k]
        want_bwd = (not config.backward_pass) and k > 0
        hs[k], cs[k], fwd_out, bwd_out = visit(p, hs[k], cs[k], fwd_in, bwd_in, extras[k], config, True, want_bwd)
        fwd_ins.append(fwd_in)
        if want_bwd:
            assert bwd_out is not None
            new_bwd[k - 1] = bwd_out
        assert fwd_out is not None
        fwd_in = fwd_out
    logits = read_logits(fwd_in, config)
    err = error_message(logits, y, config)
    if config.backward_pass:
        # backward tick: layers K..1 on (x_t, e_t); errors reach every layer now
        bwd_in = err
        for k in reversed(range(k_layers)):
            p = layer_params(params, k, config)
            hs[k], cs[k], _, bwd_out = visit(p, hs[k], cs[k], fwd_ins[k], bwd_in, extras[k], config, False, k > 0)
            if k > 0:
                assert bwd_out is not None
                bwd_in = bwd_out
    else:
        new_bwd[k_layers - 1] = err
    for k in range(k_layers):
        hs[k], cs[k] = average_and_clip(hs[k], cs[k], config)
    new_state = VSMLState(h=tuple(hs), c=tuple(cs), bwd=tuple(new_bwd), t=None if t is None else t + 1)
    return new_state, logits
