"""One VSML time step (reference sections 2-4), written once.

Dimension letters: P learners, E examples per step of one learner, A inputs,
B outputs of a layer, N state, M message, X extra cell inputs, K layers.

``step(params, state, x, y, config)`` is a pure function: it never updates a
tensor in place, uses explicit batched tensor ops only (no vmap), so autograd
can differentiate an unrolled episode and the exporter can trace it.

Several implementations of a layer visit share the schedule (same numbers):

* ``blocked`` exploits the algebra and is differentiable and traceable. The
  message part of the gate pre-activation of cell (a, b) splits into a row
  term fwd_in[a] @ W_f and a column term bwd_in[b] @ W_b, computed on [A] and
  [B] instead of [A, B] and never stored per cell; each gate is its own
  contiguous block (torch.compile fuses a tick into one loop; the exporter
  traces it); without LayerNorm the message heads are linear and commute with
  the reduction over the grid, so they run on [B, N] and [A, N]; only the
  heads whose messages are used are evaluated.
* ``chunked`` is the inference path (no autograd): the same factoring, the
  grid cut into cache-sized chunks, one in-place tanh for all four gates.
* ``fast`` (default) picks ``chunked`` when no gradient is needed and nothing
  is tracing, else ``blocked``.
* ``naive`` is the straightforward vectorised formulation (concatenated
  per-cell input, full gate matmul, both heads on every cell), kept as the
  benchmark baseline and as a second reference.
* ``export`` (``vsml_train.step_export``) is what the exporter traces: the
  blocked algebra arranged for ONNX Runtime (GEMMs instead of inner
  broadcasts and strided reductions), with the batch averaging under an
  ``If (E > 1)``; one V_M only (no population axis).

``IMPLS`` maps each name to its (layer visit, batch averaging) pair; every
impl but ``export`` uses ``average_and_clip``.

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

Impl = Literal["fast", "blocked", "chunked", "naive", "export"]


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


def fan_in(x: Tensor, dim: int) -> Tensor:
    """The size of ``x`` along ``dim`` as a 0-d tensor of x's dtype, kept symbolic under tracing."""
    index = [0] * x.ndim
    index[dim] = slice(None)
    return torch.ones_like(x[tuple(index)]).sum()


def _reduce(x: Tensor, dim: int, config: VSMLConfig) -> Tensor:
    """Pool cell messages over the grid axis ``dim``: mean, sum, or sum / sqrt(fan-in) (``reduction``)."""
    if config.reduction == "mean":
        return x.mean(dim)
    if config.reduction == "sqrt":
        return x.sum(dim) * torch.rsqrt(fan_in(x, dim))
    return x.sum(dim)


def _bias_scale(n: int, h: Tensor, dim: int, config: VSMLConfig) -> float | Tensor:
    """What a head's bias is multiplied by when the head runs after the pooling of n cells."""
    if config.reduction == "mean":
        return 1.0
    if config.reduction == "sqrt":
        return torch.sqrt(fan_in(h, dim))
    return float(n)


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


def _is_tracing() -> bool:
    """True while torch.compile, torch.export or the ONNX exporter is tracing."""
    return bool(torch.jit.is_tracing() or torch.compiler.is_compiling())


def _gate_blocks(p: Params, config: VSMLConfig) -> dict[str, dict[str, Tensor]]:
    """Per-gate slices of V_M (no index tensors): gate -> {f, b, x, h, bias}.

    f [M, N], b [M, N], x [X, N], h [N, N] row blocks of w_gates; bias [N]
    with the fixed offset added; each with a leading [P] axis when V_M has one.
    """
    n = config.state_size
    rows = _split_rows(p, config)
    bias = _gate_bias(p, config)
    out = {}
    for j, gate in enumerate("igfo"):
        sl = slice(j * n, (j + 1) * n)
        out[gate] = {k: v[..., sl] for k, v in rows.items()} | {"bias": bias[..., sl]}
    return out


def _input_terms(
    w: dict[str, Tensor],
    fwd_in: Tensor,
    bwd_in: Tensor | None,
    extras: tuple[Tensor | None, Tensor | None],
) -> tuple[Tensor, Tensor]:
    """The message part of one gate block's pre-activation, split by grid axis.

    Returns the row term [P, E, A, K] (fwd_in[a] @ W_f + row extras) and the
    column term [P|1, E|1, B|1, K] (bias + bwd_in[b] @ W_b + column extras),
    K the block's width. Cell (a, b) gets row[a] + col[b].
    """
    row = _mm(fwd_in, w["f"])
    col = w["bias"]
    col = col.reshape(1, 1, 1, -1) if col.dim() == 1 else col.reshape(col.shape[0], 1, 1, -1)
    if bwd_in is not None:
        col = col + _mm(bwd_in, w["b"])
    row_x, col_x = extras
    xr = 0
    if row_x is not None:
        xr = row_x.shape[-1]
        rx = row_x @ w["x"][..., :xr, :]  # [A, K] or [P, A, K]
        row = row + (rx.unsqueeze(1) if rx.dim() == 3 else rx)
    if col_x is not None:
        col = col + _mm(col_x, w["x"][..., xr:, :])
    return row, col


def _heads(
    p: Params, h: Tensor, config: VSMLConfig, want_fwd: bool, want_bwd: bool
) -> tuple[Tensor | None, Tensor | None]:
    """Outgoing messages of a layer from h [P, E, A, B, N]: fwd [P, E, B, M], bwd [P, E, A, M].

    Without LayerNorm the heads are linear and commute with the reduction, so
    they run on the reduced [P, E, B, N] / [P, E, A, N]; with it, per cell.
    """
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
            scale = _bias_scale(a, h, 2, config)
            fwd_out = _mm(_reduce(h, 2, config), p["w_fwd"]) + _bcast(p["b_fwd"], 4) * scale
        if want_bwd:
            scale = _bias_scale(b, h, 3, config)
            bwd_out = _mm(_reduce(h, 3, config), p["w_bwd"]) + _bcast(p["b_bwd"], 4) * scale
    return fwd_out, bwd_out


def visit_blocked(
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
    """Micro ticks of one layer, gate block by gate block (differentiable, traceable).

    Each gate's pre-activation is h @ W_h[gate] + row[a] + col[b]: the message
    terms stay as [A] and [B] broadcasts and are never stored per cell, and
    every gate is its own contiguous [P, E, A, B, N] tensor (no slicing of the
    last axis), so torch.compile fuses a tick into one loop and ONNX Runtime
    runs it without strided kernels.

    Args:
        p: this layer's V_M (base shapes or [P, *base]).
        h, c: [P, E, A, B, N].
        fwd_in: [P, E, A, M] incoming forward messages.
        bwd_in: [P, E, B, M] incoming backward messages, or None for zeros.
        extras: (row [A, Xr] or None, column [P, E, B, Xc] or None).
    Returns:
        h, c [P, E, A, B, N]; fwd_out [P, E, B, M] or None; bwd_out [P, E, A, M] or None.
    """
    blocks = _gate_blocks(p, config)
    terms = {}
    for gate, w in blocks.items():
        row, col = _input_terms(w, fwd_in, bwd_in, extras)
        terms[gate] = (row.unsqueeze(3), col.unsqueeze(2))  # [P, E, A, 1, N], [P|1, E|1, 1, B|1, N]
    for _ in range(config.micro_ticks):
        pre = {gate: _mm(h, w["h"]) + terms[gate][0] + terms[gate][1] for gate, w in blocks.items()}
        i, f, o = torch.sigmoid(pre["i"]), torch.sigmoid(pre["f"]), torch.sigmoid(pre["o"])
        c = f * c + i * torch.tanh(pre["g"])
        h = o * torch.tanh(c)
    return (h, c, *_heads(p, h, config, want_fwd, want_bwd))


# cells per chunk of the inference path: one chunk's gate tensor stays in L2
CHUNK_CELLS = 4096


@torch.no_grad()
def visit_chunked(
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
    """Inference-only layer visit (no autograd): cache-sized chunks, one tanh per tick.

    Same signature and numbers as ``visit_blocked``. The grid is cut into
    chunks of about ``CHUNK_CELLS`` cells whose gate tensors stay in cache;
    sigmoid(x) = (1 + tanh(x / 2)) / 2 with the halving folded into the i, f,
    o weights, so one in-place tanh covers all four gates of a chunk.
    """
    if h.shape[0] > 1 and p["w_gates"].dim() == base_ndim("w_gates") + 1:
        # per-learner V_M: one learner at a time (each has its own weights)
        outs = []
        for k in range(h.shape[0]):
            pk = {name: t[k] for name, t in p.items()}
            ex = (extras[0], None if extras[1] is None else extras[1][k : k + 1])
            bk = None if bwd_in is None else bwd_in[k : k + 1]
            outs.append(visit_chunked(pk, h[k : k + 1], c[k : k + 1], fwd_in[k : k + 1], bk, ex, config, want_fwd,
                                      want_bwd))  # fmt: skip
        return tuple(None if o[0] is None else torch.cat(o) for o in zip(*outs, strict=True))  # type: ignore[return-value]
    if p["w_gates"].dim() == base_ndim("w_gates") + 1:
        p = {name: t[0] for name, t in p.items()}
    n = config.state_size
    pp, e, a, b = h.shape[:4]
    g = pp * e
    blocks = _gate_blocks(p, config)
    order = "ifog"  # sigmoid gates first, then g; sigmoid gates pre-scaled by 1/2
    scale = [0.5, 0.5, 0.5, 1.0]
    w = {k: torch.cat([blocks[gate][k] * sc for gate, sc in zip(order, scale, strict=True)], -1) for k in blocks["i"]}
    row, col = _input_terms(w, fwd_in, bwd_in, extras)
    row = row.expand(pp, e, a, 4 * n).reshape(g * a, 4 * n)  # [G*A, 4N]
    col = col.expand(pp, e, b, 4 * n).reshape(g, b, 4 * n)  # [G, B, 4N]
    wh = w["h"]  # [N, 4N]
    hf, cf = h.reshape(g * a, b, n), c.reshape(g * a, b, n)
    h_out, c_out = torch.empty_like(hf), torch.empty_like(cf)
    rows_per_chunk = max(1, CHUNK_CELLS // b)
    for r0 in range(0, g * a, rows_per_chunk):
        r1 = min(g * a, r0 + rows_per_chunk)
        cells = (r1 - r0) * b
        g0, g1 = r0 // a, (r1 - 1) // a
        colc = col[g0 : g0 + 1] if g0 == g1 else col[torch.arange(r0, r1) // a]
        z_in = (row[r0:r1].unsqueeze(1) + colc).reshape(cells, 4 * n)
        hh, cc = hf[r0:r1].reshape(cells, n), cf[r0:r1].reshape(cells, n)
        for _ in range(config.micro_ticks):
            t = torch.addmm(z_in, hh, wh).tanh_()
            ti, tf, to, tg = t[:, :n], t[:, n : 2 * n], t[:, 2 * n : 3 * n], t[:, 3 * n :]
            # f*c + i*g with f = (1 + tf)/2, i = (1 + ti)/2
            cc = (cc + tg).addcmul_(tf, cc).addcmul_(ti, tg).mul_(0.5)
            th = torch.tanh(cc)
            hh = th.addcmul(to, th).mul_(0.5)  # o * tanh(c), o = (1 + to)/2
        h_out[r0:r1] = hh.view(r1 - r0, b, n)
        c_out[r0:r1] = cc.view(r1 - r0, b, n)
    h, c = h_out.reshape(pp, e, a, b, n), c_out.reshape(pp, e, a, b, n)
    return (h, c, *_heads(p, h, config, want_fwd, want_bwd))


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
    """The fastest exact visit for the context (same signature and numbers as the others).

    ``visit_chunked`` when nothing needs gradients and nobody is tracing
    (evaluation, ES, CMA-ES), ``visit_blocked`` otherwise (backprop,
    torch.compile, export).
    """
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (h, c, fwd_in, bwd_in, *p.values())
    )
    # a population with its own V_M per learner is chunked learner by learner: worth it only
    # when one learner's grid is large (measured: P=64, A=64 x B=10 ran 1.6-2.5x faster blocked,
    # A=784 1.4x faster chunked)
    per_learner = p["w_gates"].dim() == base_ndim("w_gates") + 1 and h.shape[0] > 1
    small_grid = h.shape[2] * h.shape[3] < CHUNK_CELLS // 2
    if needs_grad or _is_tracing() or (per_learner and small_grid):
        return visit_blocked(p, h, c, fwd_in, bwd_in, extras, config, want_fwd, want_bwd)
    return visit_chunked(p, h, c, fwd_in, bwd_in, extras, config, want_fwd, want_bwd)


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


# ---------------------------------------------------------------------------
# messages at the network's boundary


def input_message(x: Tensor, config: VSMLConfig) -> Tensor:
    """First layer's forward message [x_a, 0, ..., 0]: x [P, E, A] -> [P, E, A', M].

    A' = A + 1 with ``bias_input``: the constant is appended as input A.
    """
    if config.bias_input is not None:
        x = F.pad(x, (0, 1), value=float(config.bias_input))
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


AverageFn = Callable[[Tensor, Tensor, VSMLConfig], tuple[Tensor, Tensor]]

# after every helper it uses is defined: step_export imports them from this module
from .step_export import average_and_clip_export, visit_export  # noqa: E402

IMPLS: dict[str, tuple[VisitFn, AverageFn]] = {
    "fast": (visit_fast, average_and_clip),
    "blocked": (visit_blocked, average_and_clip),
    "chunked": (visit_chunked, average_and_clip),
    "naive": (visit_naive, average_and_clip),
    "export": (visit_export, average_and_clip_export),
}


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
        impl: a key of ``IMPLS`` (same numbers; see the module docstring).
    Returns:
        (state at t+1, logits y_hat_t [P, E, B]).
    """
    visit, average = IMPLS[impl]
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
        hs[k], cs[k] = average(hs[k], cs[k], config)
    new_state = VSMLState(h=tuple(hs), c=tuple(cs), bwd=tuple(new_bwd), t=None if t is None else t + 1)
    return new_state, logits
