"""The shared cell algebra of a VSML layer (docs/model.md §2 and §4).

Dimension letters (docs/model.md §8): P learners, E examples
per step of one learner, A inputs, B outputs of a layer, N state, M message,
X extra cell inputs, K layers, J the width of a gate block (N, or 4N for all four).

Everything every layer visit (``visits``, ``visit_onnx``) shares: the V_M of
one layer, the split of ``w_gates`` into its row and gate blocks with the
fixed gate offsets, the extra cell inputs, the message part of the gate
pre-activations split into a row term [A] and a column term [B], the message
heads with their reduction over the grid, the messages at the network's
boundary (input, logits, error) and the stabilisers (batch averaging,
clipping). Pure functions of explicit tensors; nothing is updated in place.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from .config import VSMLConfig
from .params import Params, base_ndim

VisitFn = Callable[..., tuple[Tensor, Tensor, Tensor | None, Tensor | None]]
AverageFn = Callable[[Tensor, Tensor, VSMLConfig], tuple[Tensor, Tensor]]

# ---------------------------------------------------------------------------
# small tensor helpers


def mm(x: Tensor, w: Tensor) -> Tensor:
    """x [P, ..., I] @ w: w is [I, J] (shared) or [P, I, J] (per learner)."""
    if w.dim() == 2:
        return x @ w
    p = x.shape[0]
    shape = x.shape
    out = torch.bmm(x.reshape(p, -1, shape[-1]), w)
    return out.reshape(*shape[:-1], w.shape[-1])


def bcast(v: Tensor, ndim: int) -> Tensor:
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
    index: list[int | slice] = [0] * x.ndim
    index[dim] = slice(None)
    return torch.ones_like(x[tuple(index)]).sum()


def reduce_grid(x: Tensor, dim: int, config: VSMLConfig) -> Tensor:
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


def layer_norm(m: Tensor, g: Tensor, b: Tensor) -> Tensor:
    """LayerNorm over the last (message) axis with gain g and bias b."""
    mu = m.mean(-1, keepdim=True)
    var = (m - mu).pow(2).mean(-1, keepdim=True)
    out = (m - mu) * torch.rsqrt(var + 1e-5)
    return out * bcast(g, m.dim()) + bcast(b, m.dim())


def split_rows(p: Params, config: VSMLConfig) -> dict[str, Tensor]:
    """Split w_gates [U + N, 4N] into its row blocks (fwd, bwd, extras, h)."""
    m, x = config.msg_size, config.n_extra_inputs
    w = p["w_gates"]
    return {
        "f": w[..., :m, :],
        "b": w[..., m : 2 * m, :],
        "x": w[..., 2 * m : 2 * m + x, :],
        "h": w[..., 2 * m + x :, :],
    }


def gate_bias(p: Params, config: VSMLConfig) -> Tensor:
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


def extra_inputs(
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


def is_tracing() -> bool:
    """True while torch.compile, torch.export or the ONNX exporter is tracing."""
    return bool(torch.jit.is_tracing() or torch.compiler.is_compiling())


def gate_blocks(p: Params, config: VSMLConfig) -> dict[str, dict[str, Tensor]]:
    """Per-gate slices of V_M (no index tensors): gate -> {f, b, x, h, bias}.

    f [M, N], b [M, N], x [X, N], h [N, N] row blocks of w_gates; bias [N]
    with the fixed offset added; each with a leading [P] axis when V_M has one.
    """
    n = config.state_size
    rows = split_rows(p, config)
    bias = gate_bias(p, config)
    out = {}
    for j, gate in enumerate("igfo"):
        sl = slice(j * n, (j + 1) * n)
        out[gate] = {k: v[..., sl] for k, v in rows.items()} | {"bias": bias[..., sl]}
    return out


def input_terms(
    w: dict[str, Tensor],
    fwd_in: Tensor,
    bwd_in: Tensor | None,
    extras: tuple[Tensor | None, Tensor | None],
) -> tuple[Tensor, Tensor]:
    """The message part of one gate block's pre-activation, split by grid axis.

    Returns the row term [P, E, A, J] (fwd_in[a] @ W_f + row extras) and the
    column term [P|1, E|1, B|1, J] (bias + bwd_in[b] @ W_b + column extras),
    J the block's width. Cell (a, b) gets row[a] + col[b].
    """
    row = mm(fwd_in, w["f"])
    col = w["bias"]
    col = col.reshape(1, 1, 1, -1) if col.dim() == 1 else col.reshape(col.shape[0], 1, 1, -1)
    if bwd_in is not None:
        col = col + mm(bwd_in, w["b"])
    row_x, col_x = extras
    xr = 0
    if row_x is not None:
        xr = row_x.shape[-1]
        rx = row_x @ w["x"][..., :xr, :]  # [A, J] or [P, A, J]
        row = row + (rx.unsqueeze(1) if rx.dim() == 3 else rx)
    if col_x is not None:
        col = col + mm(col_x, w["x"][..., xr:, :])
    return row, col


def heads(
    p: Params, h: Tensor, config: VSMLConfig, want_fwd: bool, want_bwd: bool
) -> tuple[Tensor | None, Tensor | None]:
    """Outgoing messages of a layer from h [P, E, A, B, N]: fwd [P, E, B, M], bwd [P, E, A, M].

    Without LayerNorm the heads are linear and commute with the reduction, so
    they run on the reduced [P, E, B, N] / [P, E, A, N]; with it, per cell.
    """
    fwd_out = bwd_out = None
    if config.layer_norm:
        if want_fwd:
            m = mm(h, p["w_fwd"]) + bcast(p["b_fwd"], 5)
            fwd_out = reduce_grid(layer_norm(m, p["ln_fwd_g"], p["ln_fwd_b"]), 2, config)
        if want_bwd:
            m = mm(h, p["w_bwd"]) + bcast(p["b_bwd"], 5)
            bwd_out = reduce_grid(layer_norm(m, p["ln_bwd_g"], p["ln_bwd_b"]), 3, config)
    else:
        a, b = h.shape[2], h.shape[3]
        if want_fwd:
            scale = _bias_scale(a, h, 2, config)
            fwd_out = mm(reduce_grid(h, 2, config), p["w_fwd"]) + bcast(p["b_fwd"], 4) * scale
        if want_bwd:
            scale = _bias_scale(b, h, 3, config)
            bwd_out = mm(reduce_grid(h, 3, config), p["w_bwd"]) + bcast(p["b_bwd"], 4) * scale
    return fwd_out, bwd_out


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


def error_message(logits: Tensor, y: Tensor, config: VSMLConfig, t: Tensor | None = None) -> Tensor:
    """Last layer's backward message [e_b, l_b, 0, ...]: [P, E, B] x2 -> [P, E, B, M].

    e = (softmax(logits) - y) * (sum of y) * s(t): examples whose y is all-zero
    (no label) get a zero error; s(t) = error_scale * (1 + t / tau) ** -power
    with ``error_decay_steps`` = tau (t [P, E], the steps before this one), else
    error_scale. l = y when feed_label, else 0.
    """
    has_label = y.sum(-1, keepdim=True)
    e = (torch.softmax(logits, dim=-1) - y) * has_label
    if config.error_scale != 1.0:
        e = e * config.error_scale
    if config.error_decay_steps is not None:
        assert t is not None, "error_decay_steps needs the step count in the state"
        e = e * torch.pow(1 + t / config.error_decay_steps, -config.error_decay_power).unsqueeze(-1)
    lab = y if config.feed_label else torch.zeros_like(y)
    return F.pad(torch.stack([e, lab], dim=-1), (0, config.msg_size - 2))


def online_standardize(
    x: Tensor, x_mean: Tensor, x_sq: Tensor, t: Tensor, config: VSMLConfig
) -> tuple[Tensor, Tensor, Tensor]:
    """Standardise each input feature by its running moments (``online_norm``, docs/model.md §3.4).

    Args:
        x: [P, E, A] this step's inputs (the features only, before any bias input).
        x_mean, x_sq: [P, E, A] running mean and second moment over the examples
            before this step (every example of a learner holds the same copy).
        t: [P, E] steps before this one.
    Returns:
        (standardised x [P, E, A], x_mean', x_sq'), the moments now counting this
        step's E examples: with the prior's q pseudo-examples of mean 0 and second
        moment 1 and n = (t + 1) E examples seen, m' = m + E / (n + q) * (mean_E(x) - m),
        i.e. the exact running averages of (q prior examples, every x so far).
        x_hat = (x - c') / sqrt(max(sq' - mean'^2, 0) + online_norm_eps), where the
        centre c' = mean' (n + q) / (n + q_c) = sum(x) / (n + q_c) with
        q_c = ``online_norm_center_prior`` (c' = mean' when it is None).
    """
    e = fan_in(x, 1)
    n = (t + 1) * e  # [P, E] examples seen, this step's included
    w = (e / (n + config.online_norm_prior)).unsqueeze(-1)  # [P, E, 1]
    mean = x_mean + w * (x.mean(1, keepdim=True) - x_mean)
    sq = x_sq + w * ((x * x).mean(1, keepdim=True) - x_sq)
    centre, var = centre_and_var(mean, sq, n, config)
    return (x - centre) * torch.rsqrt(var + config.online_norm_eps), mean, sq


def centre_and_var(mean: Tensor, sq: Tensor, n: Tensor, config: VSMLConfig) -> tuple[Tensor, Tensor]:
    """The centre c' and the variance of ``online_standardize`` from its moments.

    Args:
        mean, sq: [P, E, A] the running moments counting n examples (with the prior's q).
        n: [P, E] the examples they count.
    Returns:
        (c' [P, E, A], var = max(sq - mean^2, 0) [P, E, A]).
    """
    var = torch.clamp(sq - mean * mean, min=0.0)
    if config.online_norm_center_prior is None:
        return mean, var
    q = config.online_norm_prior
    return mean * ((n + q) / (n + config.online_norm_center_prior)).unsqueeze(-1), var


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
