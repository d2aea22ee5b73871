"""The ONNX-tuned layer visit and batch averaging (docs/model.md §2 and §4).

Dimension letters: P learners, E examples per step of one learner, A inputs,
B outputs of a layer, N state, M message, X extra cell inputs, C = P*E*A*B cells.

``step(..., impl="onnx")`` selects both (``vsml_train.model.step.IMPLS``);
the exporter traces that call. Same numbers as ``visit_fast`` and
``average_and_clip``, arranged for ONNX Runtime on CPU, where every op is one
pass over memory and broadcasting along the innermost axis is very slow:

* the gates are computed block by block (i, f, o, g each as its own
  contiguous [P, E, A, B, N] tensor), so nothing slices the last axis;
* the message part of the gate input is built without inner broadcasting and
  without an Add pass: ``[fwd_in, 1] @ [tile(W_f); col]`` gives row[a] +
  col[b] laid out [P, E, A, B * N] directly (one batched GEMM per gate);
* ``visit_onnx_rows`` (``impl="onnx-rows"``) runs the micro ticks in
  ``row_blocks`` blocks of rows, one after the other, so that a block's gates
  and states stay in L2 (on large grids: at 784 x 10, N = 32, the step's
  element-wise passes ran 2-5x slower per byte out of cache); the exporter
  picks it by the size of the state (``vsml_export.switch``);
* the reductions over the grid are matrix products (ones-vector for the mean
  over A, a B-times tiled head matrix for the mean over B), which ORT runs as
  GEMMs instead of slow strided reductions;
* LayerNorm statistics are products with the all-ones M x M matrix / M and the
  gain is a diagonal matrix, so the only broadcasts are scalars and the Gemm
  bias;
* batch averaging sits under a test E > 1 that both exporters turn into an
  ONNX ``If`` (``torch.cond`` under dynamo / torch.export, a scripted function
  under the TorchScript tracer): with one example per step it costs nothing
  (averaging one example is the identity).

The visit takes a single V_M (no population axis). Tests compare it with the
per-cell reference (``tests/test_step.py``) and with ``visit_fast`` in float64
(``tests/test_export_parity.py``), and the exported graph with ``step``.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable

import torch
from torch import Tensor

from .cell import fan_in, gate_bias, split_rows
from .config import VSMLConfig
from .params import Params

# column blocks of w_gates in its (i, g, f, o) order
_I, _G, _F, _O = 0, 1, 2, 3


def _block(w: Tensor, j: int, n: int) -> Tensor:
    """Gate block j (columns j*N .. (j+1)*N) of a [..., 4N] weight or bias."""
    return w[..., j * n : (j + 1) * n]


def _sum_over_a(x: Tensor) -> Tensor:
    """Sum over A of [P, E, A, B, K] as a product with a ones vector -> [P, E, B, K]."""
    p, e, a, b, k = x.shape
    ones = torch.ones_like(x[0, 0, :, 0, 0]).unsqueeze(0)  # [1, A]
    return (ones @ x.reshape(p * e, a, b * k)).reshape(p, e, b, k)


def _layer_norm_mm(m: Tensor, g: Tensor, b: Tensor) -> Tensor:
    """LayerNorm over the last axis (size M) with matrix products for the statistics.

    m [..., M] -> [..., M]; same formula as ``vsml_train.model.cell.layer_norm``
    (biased variance, eps 1e-5 inside the square root).
    """
    size = m.shape[-1]
    avg = torch.full((size, size), 1.0 / size, dtype=m.dtype, device=m.device)
    d = m - m @ avg
    out = d * torch.rsqrt((d * d) @ avg + 1e-5)
    return out @ (torch.eye(size, dtype=m.dtype, device=m.device) * g) + b  # diag(g): a GEMM, no inner broadcast


def _check_base(p: Params) -> None:
    if p["w_gates"].dim() != 2:
        raise ValueError('impl "onnx" takes one V_M: w_gates must be [U + N, 4N] (no population axis)')


def row_blocks(config: VSMLConfig) -> int:
    """How many blocks of rows ``visit_onnx_rows`` runs the ticks in: N / 4 (at 784 x 10, blocks of ~125 KiB per state).

    Measured on one core (ONNX Runtime, 784 x 10, one learner): N = 16 in 3, 4 or 6 blocks 5 % faster per step,
    in 8 no faster; N = 32 in 4 blocks 9 %, in 8 blocks 14 %, in 16 blocks 8 % (each block is ~30 more nodes):
    at most 8.
    """
    return min(8, max(1, config.state_size // 4))


def _ticks(
    rows_in: Tensor, rhs: dict[int, Tensor], w_h: dict[int, Tensor], h: Tensor, c: Tensor, config: VSMLConfig
) -> tuple[Tensor, Tensor]:
    """The micro ticks of a block of rows: rows_in [P, E, R, K], h, c [P, E, R, B, N] -> new h, c."""
    n = config.state_size
    pp, e, b = h.shape[0], h.shape[1], h.shape[3]
    z_in = {j: (rows_in @ r).reshape(-1, n) for j, r in rhs.items()}  # [C, N], C = P*E*R*B cells
    # 2-D [C, N] during the ticks: addmm exports as Gemm(h, W, z_in), which ONNX Runtime fuses with
    # the activation that follows (FusedGemm): one node per gate instead of three
    h2, c2 = h.reshape(-1, n), c.reshape(-1, n)
    for _ in range(config.micro_ticks):
        fc = torch.sigmoid(torch.addmm(z_in[_F], h2, w_h[_F])) * c2
        ig = torch.sigmoid(torch.addmm(z_in[_I], h2, w_h[_I])) * torch.tanh(torch.addmm(z_in[_G], h2, w_h[_G]))
        o_g = torch.sigmoid(torch.addmm(z_in[_O], h2, w_h[_O]))
        c2 = fc + ig
        h2 = o_g * torch.tanh(c2)
    # R as -1: an empty block (R = 0) must not put a literal 0 into the Reshape (ONNX: "copy that axis")
    return h2.reshape(pp, e, -1, b, n), c2.reshape(pp, e, -1, b, n)


def visit_onnx(
    p: Params,
    h: Tensor,
    c: Tensor,
    fwd_in: Tensor,
    bwd_in: Tensor | None,
    extras: tuple[Tensor | None, Tensor | None],
    config: VSMLConfig,
    want_fwd: bool,
    want_bwd: bool,
    blocks: int = 1,
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """One layer visit (signature and results of ``vsml_train.model.visits.visit_fast``).

    Args:
        p: this layer's V_M, base shapes.
        h, c: [P, E, A, B, N].
        fwd_in: [P, E, A, M]; bwd_in: [P, E, B, M] or None (zeros).
        extras: (row [A, Xr] or None, column [P, E, B, Xc] or None).
        blocks: run the micro ticks on this many blocks of rows, one after the other (same numbers).
    Returns:
        h, c [P, E, A, B, N]; fwd_out [P, E, B, M] or None; bwd_out [P, E, A, M] or None.
    """
    _check_base(p)
    n = config.state_size
    pp, e, a, b = h.shape[0], h.shape[1], h.shape[2], h.shape[3]
    w = split_rows(p, config)
    bias = gate_bias(p, config)  # [4N]
    row_x, col_x = extras
    xr = 0 if row_x is None else row_x.shape[-1]
    # the row inputs of a cell, [fwd_in[a], row extras, 1] [P, E, A, K]: the trailing 1 picks up the column
    # term, so that one batched GEMM per gate gives the whole message part row[a] + col[b], no Add pass
    lhs = [fwd_in]
    if row_x is not None:
        lhs.append(row_x.expand(pp, e, a, xr))
    lhs.append(torch.ones_like(fwd_in[..., :1]))
    rows_in = torch.cat(lhs, dim=-1)
    rhs: dict[int, Tensor] = {}
    for j in (_I, _F, _O, _G):
        # the row weights B-times tiled, so that the product is laid out [P, E, A, B*N]
        w_row = [_block(w["f"], j, n).repeat(1, b)]
        if row_x is not None:
            w_row.append(_block(w["x"][:xr], j, n).repeat(1, b))
        col = _block(bias, j, n).expand(pp, e, b, n)
        if bwd_in is not None:
            col = col + bwd_in @ _block(w["b"], j, n)
        if col_x is not None:
            col = col + col_x @ _block(w["x"][xr:], j, n)
        rhs[j] = torch.cat([torch.cat(w_row).expand(pp, e, -1, b * n), col.reshape(pp, e, 1, b * n)], dim=2)
    w_h = {j: _block(w["h"], j, n) for j in (_I, _F, _O, _G)}
    if blocks == 1:
        h, c = _ticks(rows_in, rhs, w_h, h, c, config)
    else:
        # the ticks of one block of rows after the other, so that a block's gates and states stay in the cache
        # (on grids of fewer than `blocks` rows the last blocks are empty)
        size = (a + blocks - 1) // blocks
        hs, cs = [], []
        for k in range(blocks):
            lo, hi = k * size, (k + 1) * size
            hk, ck = _ticks(rows_in[:, :, lo:hi], rhs, w_h, h[:, :, lo:hi], c[:, :, lo:hi], config)
            hs.append(hk)
            cs.append(ck)
        h, c = torch.cat(hs, dim=2), torch.cat(cs, dim=2)
    fwd_out = bwd_out = None
    if config.layer_norm:
        if want_fwd:
            m = _layer_norm_mm(h @ p["w_fwd"] + p["b_fwd"], p["ln_fwd_g"], p["ln_fwd_b"])  # [P, E, A, B, M]
            fwd_out = _sum_over_a(m)
            if config.reduction == "mean":
                fwd_out = fwd_out / a
            elif config.reduction == "sqrt":
                fwd_out = fwd_out * torch.rsqrt(fan_in(h, 2))
        if want_bwd:
            m = _layer_norm_mm(h @ p["w_bwd"] + p["b_bwd"], p["ln_bwd_g"], p["ln_bwd_b"])
            mm = m.shape[-1]
            eye = torch.eye(mm, dtype=m.dtype, device=m.device).repeat(b, 1)  # [B*M, M]: sum over B
            bwd_out = m.reshape(pp, e, a, b * mm) @ eye
            if config.reduction == "mean":
                bwd_out = bwd_out / b
            elif config.reduction == "sqrt":
                bwd_out = bwd_out * torch.rsqrt(fan_in(h, 3))
    else:
        # heads are linear: reduce the states first, then apply the head
        if want_fwd:
            hs = _sum_over_a(h)  # [P, E, B, N]
            if config.reduction == "mean":
                fwd_out = (hs / a) @ p["w_fwd"] + p["b_fwd"]
            elif config.reduction == "sqrt":
                n_a = fan_in(h, 2)
                fwd_out = (hs * torch.rsqrt(n_a)) @ p["w_fwd"] + p["b_fwd"] * torch.sqrt(n_a)
            else:
                fwd_out = hs @ p["w_fwd"] + p["b_fwd"] * a
        if want_bwd:
            head = p["w_bwd"].repeat(b, 1)  # [B*N, M]: sum over B fused into the head
            hb = h.reshape(pp, e, a, b * n) @ head
            if config.reduction == "mean":
                bwd_out = hb / b + p["b_bwd"]
            elif config.reduction == "sqrt":
                n_b = fan_in(h, 3)
                bwd_out = hb * torch.rsqrt(n_b) + p["b_bwd"] * torch.sqrt(n_b)
            else:
                bwd_out = hb + p["b_bwd"] * b
    return h, c, fwd_out, bwd_out


def visit_onnx_rows(
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
    """``visit_onnx`` with the micro ticks in ``row_blocks(config)`` blocks of rows: for large grids.

    Each block adds about 30 nodes, so ONNX Runtime runs small grids faster unblocked; the exporter
    traces both visits and lets the graph pick one by the size of the state (``vsml_export.trace``).
    """
    return visit_onnx(p, h, c, fwd_in, bwd_in, extras, config, want_fwd, want_bwd, row_blocks(config))


def _mean_over_e(s: Tensor) -> Tensor:
    """Mean over E of s [P, E, A, B, K], as a GEMM with a ones vector -> [P, E, A, B, K] (broadcast back)."""
    p, e = s.shape[0], s.shape[1]
    ones = torch.ones_like(s[0, :, 0, 0, 0]).unsqueeze(0)  # [1, E]
    mean = (ones @ s.reshape(p, e, -1)) / e  # [P, 1, A*B*K]
    return mean.reshape(p, 1, s.shape[2], s.shape[3], s.shape[4]).expand_as(s)


def _average_all(h: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """ "full" averaging: every unit of h and c [P, E, A, B, N] replaced by its mean over E."""
    return _mean_over_e(h), _mean_over_e(c)


def _average_first(h: Tensor, c: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """ "half" averaging: units [:k] replaced by their mean over E, the rest kept."""
    h = torch.cat([_mean_over_e(h[..., :k]), h[..., k:]], dim=-1)
    c = torch.cat([_mean_over_e(c[..., :k]), c[..., k:]], dim=-1)
    return h, c


# Scripted so that the TorchScript tracer emits ONE ONNX If on E > 1, with no
# other control flow inside (ONNX Runtime's If inlining fails on nested Ifs).
def _average_all_if_batched(h: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    if h.shape[1] > 1:
        return _average_all(h, c)
    return h, c


def _average_first_if_batched(h: Tensor, c: Tensor, k: int) -> tuple[Tensor, Tensor]:
    if h.shape[1] > 1:
        return _average_first(h, c, k)
    return h, c


@functools.cache
def _scripted() -> tuple[Callable[..., tuple[Tensor, Tensor]], Callable[..., tuple[Tensor, Tensor]]]:
    """The two functions above, scripted on first use (only the TorchScript tracer needs them)."""
    with warnings.catch_warnings():  # torch.jit.script is deprecated, but it is how the TorchScript tracer gets an If
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.script(_average_all_if_batched), torch.jit.script(_average_first_if_batched)


def average_and_clip_onnx(h: Tensor, c: Tensor, config: VSMLConfig) -> tuple[Tensor, Tensor]:
    """``vsml_train.model.cell.average_and_clip`` with the averaging under an ``If (E > 1)``.

    The dynamo exporter sees ``torch.cond``, the TorchScript one a scripted
    function; both become an ONNX ``If``, so one example per step skips the
    averaging (which is the identity there).
    """
    if config.batch_average != "none":
        full = config.batch_average == "full"
        k = h.shape[-1] // 2

        def average(h: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
            return _average_all(h, c) if full else _average_first(h, c, k)

        if torch.compiler.is_compiling():  # dynamo, torch.compile, torch.export (strict or not)

            def keep(h: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
                return h.clone(), c.clone()

            def average_dense(h: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
                # torch.cond needs both branches' outputs laid out alike; "full" averaging expands (stride 0)
                h, c = average(h, c)
                return h.contiguous(), c.contiguous()

            h, c = torch.cond(h.shape[1] > 1, average_dense, keep, (h, c))
        elif torch.jit.is_tracing():
            scripted_all, scripted_first = _scripted()
            h, c = scripted_all(h, c) if full else scripted_first(h, c, k)
        elif h.shape[1] > 1:
            h, c = average(h, c)
    if config.clip is not None:
        h = h.clamp(-config.clip, config.clip)
        c = c.clamp(-config.clip, config.clip)
    return h, c


__all__ = ["average_and_clip_onnx", "row_blocks", "visit_onnx", "visit_onnx_rows"]
