"""The layer visits: micro ticks of one layer on fixed incoming messages, then its heads.

docs/model.md §2 (the factoring at its end). Dimension letters as in
``cell``. Every visit has the same signature and gives the same numbers (held
to the per-cell reference in ``tests/test_step.py``):

* ``visit_blocked`` exploits the algebra and is differentiable and traceable.
  The message part of the gate pre-activation of cell (a, b) splits into a row
  term fwd_in[a] @ W_f and a column term bwd_in[b] @ W_b, computed on [A] and
  [B] instead of [A, B] and never stored per cell; each gate is its own
  contiguous block (torch.compile fuses a tick into one loop); without
  LayerNorm the message heads are linear and commute with the reduction over
  the grid, so they run on [B, N] and [A, N]; only the heads whose messages
  are used are evaluated.
* ``visit_chunked`` is the inference path (no autograd): the same factoring,
  the grid cut into cache-sized chunks, one in-place tanh for all four gates.
* ``visit_fast`` (default) picks ``chunked`` when no gradient is needed and
  nothing is tracing, else ``blocked``.
* ``visit_naive`` is the straightforward vectorised formulation (concatenated
  per-cell input, full gate matmul, both heads on every cell), kept as the
  benchmark baseline and as a second reference.

The ONNX-tuned visit lives in ``visit_onnx``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .cell import bcast, gate_bias, gate_blocks, heads, input_terms, is_tracing, layer_norm, mm, reduce_grid
from .config import VSMLConfig
from .params import Params, base_ndim


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
    blocks = gate_blocks(p, config)
    terms = {}
    for gate, w in blocks.items():
        row, col = input_terms(w, fwd_in, bwd_in, extras)
        terms[gate] = (row.unsqueeze(3), col.unsqueeze(2))  # [P, E, A, 1, N], [P|1, E|1, 1, B|1, N]
    for _ in range(config.micro_ticks):
        pre = {gate: mm(h, w["h"]) + terms[gate][0] + terms[gate][1] for gate, w in blocks.items()}
        i, f, o = torch.sigmoid(pre["i"]), torch.sigmoid(pre["f"]), torch.sigmoid(pre["o"])
        c = f * c + i * torch.tanh(pre["g"])
        h = o * torch.tanh(c)
    return (h, c, *heads(p, h, config, want_fwd, want_bwd))


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
    blocks = gate_blocks(p, config)
    order = "ifog"  # sigmoid gates first, then g; sigmoid gates pre-scaled by 1/2
    scale = [0.5, 0.5, 0.5, 1.0]
    w = {k: torch.cat([blocks[gate][k] * sc for gate, sc in zip(order, scale, strict=True)], -1) for k in blocks["i"]}
    row, col = input_terms(w, fwd_in, bwd_in, extras)
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
    return (h, c, *heads(p, h, config, want_fwd, want_bwd))


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
    if needs_grad or is_tracing() or (per_learner and small_grid):
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
    bias = bcast(gate_bias(p, config), 5)
    for _ in range(config.micro_ticks):
        z = mm(torch.cat([u, h], dim=-1), p["w_gates"]) + bias
        i, g, f, o = z.split(n, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
    mf = mm(h, p["w_fwd"]) + bcast(p["b_fwd"], 5)
    mb = mm(h, p["w_bwd"]) + bcast(p["b_bwd"], 5)
    if config.layer_norm:
        mf = layer_norm(mf, p["ln_fwd_g"], p["ln_fwd_b"])
        mb = layer_norm(mb, p["ln_bwd_g"], p["ln_bwd_b"])
    fwd_out = reduce_grid(mf, 2, config) if want_fwd else None
    bwd_out = reduce_grid(mb, 3, config) if want_bwd else None
    return h, c, fwd_out, bwd_out
