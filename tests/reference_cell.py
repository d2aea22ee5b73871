"""A direct, obviously correct per-cell VSML step, written from the reference text.

Loops over learners p, examples e, cells (a, b); every sub-RNN is an explicit
LSTM on u_ab = [fwd_in[a], bwd_in[b], extras] and h_ab. It shares nothing with
``vsml_train.model.step`` but the config, the state container and the V_M layout, so
it checks the fast and naive steps. Tiny sizes only.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from vsml_train.model.config import VSMLConfig
from vsml_train.model.params import Params
from vsml_train.model.state import VSMLState


def _pget(params: Params, name: str, p: int, k: int, config: VSMLConfig, pop: bool) -> Tensor:
    t = params[name]
    if pop:
        t = t[p]
    if not config.shared_params:
        t = t[k]
    return t


def _lstm(w: Tensor, bias: Tensor, u: Tensor, h: Tensor, c: Tensor, config: VSMLConfig) -> tuple[Tensor, Tensor]:
    n = config.state_size
    z = torch.cat([u, h]) @ w + bias
    i, g, f, o = z[:n], z[n : 2 * n], z[2 * n : 3 * n], z[3 * n :]
    i = torch.sigmoid(i + config.input_gate_offset)
    f = torch.sigmoid(f + config.forget_gate_offset)
    c = f * c + i * torch.tanh(g)
    h = torch.sigmoid(o) * torch.tanh(c)
    return h, c


def _head(h: Tensor, w: Tensor, b: Tensor, g: Tensor | None, beta: Tensor | None) -> Tensor:
    m = h @ w + b
    if g is not None:
        mu = m.mean()
        var = ((m - mu) ** 2).mean()
        m = (m - mu) / torch.sqrt(var + 1e-5) * g + beta
    return m


def reference_step(
    params: Params, state: VSMLState, x: Tensor, y: Tensor, config: VSMLConfig
) -> tuple[VSMLState, Tensor]:
    """Same contract as ``vsml_train.model.step.step``; x [P, E, A], y [P, E, B] one-hot."""
    pop = params["b_gates"].dim() == (1 if config.shared_params else 2) + 1
    P, E, _ = x.shape
    K = config.n_layers
    M, N = config.msg_size, config.state_size
    # per-cell states as nested python lists of [N] tensors: h[k][p][e][a][b]
    h = [[[[[state.h[k][p, e, a, b] for b in range(state.h[k].shape[3])] for a in range(state.h[k].shape[2])]
           for e in range(E)] for p in range(P)] for k in range(K)]  # fmt: skip
    c = [[[[[state.c[k][p, e, a, b] for b in range(state.c[k].shape[3])] for a in range(state.c[k].shape[2])]
           for e in range(E)] for p in range(P)] for k in range(K)]  # fmt: skip
    sizes = [(state.h[k].shape[2], state.h[k].shape[3]) for k in range(K)]
    new_bwd = [[[None] * E for _ in range(P)] for _ in range(K)]
    logits = torch.zeros(P, E, sizes[-1][1], dtype=x.dtype)

    def extras(k: int, a: int, b: int, p: int, e: int) -> list[Tensor]:
        A, B = sizes[k]
        out = []
        if config.coord_inputs:
            out += [torch.tensor([a / max(A - 1, 1)], dtype=x.dtype), torch.tensor([b / max(B - 1, 1)], dtype=x.dtype)]
        if config.time_input:
            out.append((torch.log1p(state.t[p, e]) / 10).reshape(1))
        if config.layer_input:
            out.append(torch.tensor([k / K], dtype=x.dtype))
        return out

    def visit(k: int, p: int, e: int, fwd_in: list[Tensor], bwd_in: list[Tensor]) -> tuple[list, list]:
        """Micro ticks of every cell of layer k; returns (fwd_out[b], bwd_out[a])."""
        A, B = sizes[k]
        w = _pget(params, "w_gates", p, k, config, pop)
        bias = _pget(params, "b_gates", p, k, config, pop)
        for a in range(A):
            for b in range(B):
                u = torch.cat([fwd_in[a], bwd_in[b], *extras(k, a, b, p, e)])
                hh, cc = h[k][p][e][a][b], c[k][p][e][a][b]
                for _ in range(config.micro_ticks):
                    hh, cc = _lstm(w, bias, u, hh, cc, config)
                h[k][p][e][a][b], c[k][p][e][a][b] = hh, cc
        ln = config.layer_norm

        def g(n: str) -> Tensor | None:
            return _pget(params, n, p, k, config, pop) if ln else None

        wf, bf = _pget(params, "w_fwd", p, k, config, pop), _pget(params, "b_fwd", p, k, config, pop)
        wb, bb = _pget(params, "w_bwd", p, k, config, pop), _pget(params, "b_bwd", p, k, config, pop)
        divide = {"mean": lambda n: n, "sqrt": lambda n: n**0.5, "sum": lambda n: 1}[config.reduction]

        def red(xs: list[Tensor]) -> Tensor:
            return sum(xs) / divide(len(xs))

        fwd_out = [
            red([_head(h[k][p][e][a][b], wf, bf, g("ln_fwd_g"), g("ln_fwd_b")) for a in range(A)]) for b in range(B)
        ]
        bwd_out = [
            red([_head(h[k][p][e][a][b], wb, bb, g("ln_bwd_g"), g("ln_bwd_b")) for b in range(B)]) for a in range(A)
        ]
        return fwd_out, bwd_out

    def err_msg(lg: Tensor, yy: Tensor, p: int, e_i: int) -> list[Tensor]:
        e = (torch.softmax(lg, 0) - yy) * yy.sum() * config.error_scale
        if config.error_decay_steps is not None:
            e = e * (1.0 + float(state.t[p, e_i]) / config.error_decay_steps) ** (-config.error_decay_power)
        lab = yy if config.feed_label else torch.zeros_like(yy)
        return [torch.cat([e[b : b + 1], lab[b : b + 1], torch.zeros(M - 2, dtype=x.dtype)]) for b in range(len(yy))]

    zero = torch.zeros(M, dtype=x.dtype)
    norm = None
    x_raw = x.clone()
    if config.online_norm:  # feature by feature: the running moments over (q prior examples, every x so far)
        x_new, mean_new, sq_new = x.clone(), state.norm[0].clone(), state.norm[1].clone()
        q = config.online_norm_prior
        for p in range(P):
            for e in range(E):
                n_seen = float(state.t[p, e]) * E  # examples before this step
                for a in range(x.shape[2]):
                    mean = (float(state.norm[0][p, e, a]) * (n_seen + q) + float(x[p, :, a].sum())) / (n_seen + E + q)
                    sq = (float(state.norm[1][p, e, a]) * (n_seen + q) + float((x[p, :, a] ** 2).sum())) / (
                        n_seen + E + q
                    )
                    mean_new[p, e, a], sq_new[p, e, a] = mean, sq
                    sd = math.sqrt(max(sq - mean * mean, 0.0) + config.online_norm_eps)
                    qc = q if config.online_norm_center_prior is None else config.online_norm_center_prior
                    centre = mean * (n_seen + E + q) / (n_seen + E + qc)
                    x_new[p, e, a] = (x[p, e, a] - centre) / sd
        x, norm = x_new, (mean_new, sq_new)
    for p in range(P):
        for e in range(E):
            fwd = [torch.cat([x[p, e, a : a + 1], torch.zeros(M - 1, dtype=x.dtype)]) for a in range(x.shape[2])]
            if config.bias_input is not None:  # the constant input, appended as input A
                fwd.append(
                    torch.cat([torch.tensor([config.bias_input], dtype=x.dtype), torch.zeros(M - 1, dtype=x.dtype)])
                )
            fwd_ins = []
            for k in range(K):
                B = sizes[k][1]
                bwd_in = [zero] * B if config.backward_pass else [state.bwd[k][p, e, b] for b in range(B)]
                fwd_ins.append(fwd)
                fwd_out, bwd_out = visit(k, p, e, fwd, bwd_in)
                if k > 0 and not config.backward_pass:
                    new_bwd[k - 1][p][e] = torch.stack(bwd_out)
                fwd = fwd_out
            bound = config.tanh_bound
            lg = torch.stack([bound * torch.tanh(config.output_gain * m[config.output_channel] / bound) for m in fwd])
            logits[p, e] = lg
            err = err_msg(lg, y[p, e], p, e)
            if config.backward_pass:
                bwd = err
                for k in reversed(range(K)):
                    _, bwd = visit(k, p, e, fwd_ins[k], bwd)
            else:
                new_bwd[K - 1][p][e] = torch.stack(err)
    # batch averaging over examples, then clipping
    hs, cs = [], []
    for k in range(K):
        A, B = sizes[k]
        hk = torch.stack([torch.stack([torch.stack([torch.stack(h[k][p][e][a]) for a in range(A)]) for e in range(E)])
                          for p in range(P)])  # fmt: skip
        ck = torch.stack([torch.stack([torch.stack([torch.stack(c[k][p][e][a]) for a in range(A)]) for e in range(E)])
                          for p in range(P)])  # fmt: skip
        if config.batch_average != "none" and E > 1:
            units = N if config.batch_average == "full" else N // 2
            mask = torch.zeros(N, dtype=torch.bool)
            mask[:units] = True
            hk = torch.where(mask, hk.mean(1, keepdim=True), hk)
            ck = torch.where(mask, ck.mean(1, keepdim=True), ck)
        if config.clip is not None:
            hk = hk.clamp(-config.clip, config.clip)
            ck = ck.clamp(-config.clip, config.clip)
        hs.append(hk)
        cs.append(ck)
    bwd_t: tuple[Tensor, ...] = ()
    if not config.backward_pass:
        bwd_t = tuple(torch.stack([torch.stack(new_bwd[k][p]) for p in range(P)]) for k in range(K))
    t = None if state.t is None else state.t + 1
    ncm = None
    if config.ncm_temperature is not None:
        assert norm is not None and state.t is not None and state.ncm is not None
        logits, ncm = reference_mixture(config, x_raw, y, logits, norm, state.t, state.ncm)
    return VSMLState(h=tuple(hs), c=tuple(cs), bwd=bwd_t, t=t, norm=norm, ncm=ncm), logits


def reference_mixture(
    config: VSMLConfig,
    x: Tensor,
    y: Tensor,
    net: Tensor,
    norm: tuple[Tensor, Tensor],
    t: Tensor,
    ncm: tuple[Tensor, ...],
) -> tuple[Tensor, tuple[Tensor, ...]]:
    """The output mixture (docs/model.md §3.5), one scalar at a time: x [P, E, A] raw, y one-hot, net the logits.

    The GNB expert's within-class sum of squares (and the LDA expert's scatter) is recomputed here
    the plain way, from each class's examples' deviations, by keeping the step's examples and the
    class means apart; the LDA expert's directions are the exact solution of Sigma v = u (Gaussian
    elimination), which the step's conjugate gradients reach with ``lda_iterations`` > A.
    """
    P, E, A = x.shape
    B = net.shape[-1]
    tau, share = config.ncm_temperature, config.ncm_share
    gnb = config.gnb_temperature is not None
    q = config.online_norm_prior
    qc = q if config.online_norm_center_prior is None else config.online_norm_center_prior
    sums, counts, logw = (v.clone() for v in ncm[:3])
    within = ncm[3].clone() if gnb else None
    lda = config.lda_temperature is not None
    scatter, direc = (ncm[4].clone(), ncm[5].clone()) if lda else (None, None)
    z = 2 + gnb + lda
    out = net.clone()
    for p in range(P):
        ll = [0.0] * z
        if lda:
            assert direc is not None
            # one learner, one expert: from the first example's moments and step count (in a run every
            # example of a learner holds the same ones)
            u, v, c0 = _lda_directions(
                config, sums[p, 0], counts[p, 0], ncm[4][p], norm[0][p, 0], norm[1][p, 0], t[p, 0], E
            )
            for a in range(A):
                for b in range(B):
                    direc[p, a, b] = v[a][b]
        for e in range(E):
            n = (float(t[p, e]) + 1) * E
            mean, sq = norm[0][p, e], norm[1][p, e]
            centre = [float(mean[a]) * (n + q) / (n + qc) for a in range(A)]
            spread = sum(max(float(sq[a]) - q / (n + q) - float(mean[a]) ** 2, 0.0) for a in range(A)) / A
            g = 1.0 / math.sqrt(spread + config.online_norm_eps)
            d, d_gnb, prior = [], [], []
            seen = sum(float(counts[p, e, b]) for b in range(B))
            for b in range(B):
                nb = float(counts[p, e, b])
                proto = [_offset(config, sums[p, e], counts[p, e], mean, centre, b, a) for a in range(A)]
                d.append(sum(((float(x[p, e, a]) - centre[a]) * g - proto[a] * g) ** 2 for a in range(A)) / A)
                if gnb:
                    var = [
                        (float(within[p, e, a]) + config.gnb_var_prior * spread) / (seen + config.gnb_var_prior)
                        + config.online_norm_eps
                        for a in range(A)
                    ]
                    d_gnb.append(sum((float(x[p, e, a]) - centre[a] - proto[a]) ** 2 / var[a] for a in range(A)) / A)
                    alpha = config.gnb_class_prior
                    prior.append(math.log((nb + alpha) / (seen + B * alpha)))
            # ncm_unseen_penalty: kappa nats off each class-mean expert's logit of a class with no label yet
            kappa_u = config.ncm_unseen_penalty
            pen = [kappa_u if kappa_u is not None and float(counts[p, e, b]) == 0 else 0.0 for b in range(B)]
            lps = [
                torch.log_softmax(net[p, e] * config.ncm_net_scale, 0),
                torch.log_softmax(torch.tensor([-tau * d[b] - pen[b] for b in range(B)], dtype=net.dtype), 0),
            ]
            if gnb:
                g_logits = [-config.gnb_temperature * d_gnb[b] + prior[b] - pen[b] for b in range(B)]
                lps.append(torch.log_softmax(torch.tensor(g_logits, dtype=net.dtype), 0))
            if lda:
                assert config.lda_temperature is not None
                l_logits = [
                    config.lda_temperature
                    * sum(((float(x[p, e, a]) - c0[a]) - 0.5 * u[a][b]) * v[a][b] for a in range(A))
                    + prior[b]
                    - pen[b]
                    for b in range(B)
                ]
                lps.append(torch.log_softmax(torch.tensor(l_logits, dtype=net.dtype), 0))
            w = torch.softmax(logw[p, e], 0)
            out[p, e] = torch.log(sum(w[k] * torch.exp(lps[k]) for k in range(z)))
            for b in range(B):
                # with ncm_unseen_penalty, the label of a class unseen before the step judges no expert
                judged = config.ncm_unseen_penalty is None or float(counts[p, e, b]) > 0
                if float(y[p, e, b]) > 0 and judged:
                    for k in range(z):
                        ll[k] += float(lps[k][b])
        labelled = float(y[p].sum()) > 0
        s_t = share
        if config.ncm_share_decay is not None:
            s_t = share / (1 + float(t[p, 0]) / config.ncm_share_decay)
        if gnb:  # the pooled within-class sum of squares, by the definition: over each class's old and new examples
            assert within is not None
            for b in range(B):
                new = [e for e in range(E) if float(y[p, e, b]) > 0]
                nb = float(counts[p, 0, b])
                if not new:
                    continue
                for a in range(A):
                    old_mean = float(sums[p, 0, b, a]) / nb if nb > 0 else 0.0
                    vals = [float(x[p, e, a]) for e in new]
                    all_mean = (old_mean * nb + sum(vals)) / (nb + len(vals))
                    # sum of squares around the merged mean, minus the old part around the old mean:
                    # nb (old_mean - all_mean)^2 + sum over new (v - all_mean)^2
                    extra = nb * (old_mean - all_mean) ** 2 + sum((v - all_mean) ** 2 for v in vals)
                    for e in range(E):
                        within[p, e, a] += extra
                if lda:  # the same, with products of two features
                    assert scatter is not None
                    old = [float(sums[p, 0, b, a]) / nb if nb > 0 else 0.0 for a in range(A)]
                    mid = [(old[a] * nb + sum(float(x[p, e, a]) for e in new)) / (nb + len(new)) for a in range(A)]
                    for i in range(A):
                        for j in range(A):
                            scatter[p, i, j] += nb * (old[i] - mid[i]) * (old[j] - mid[j]) + sum(
                                (float(x[p, e, i]) - mid[i]) * (float(x[p, e, j]) - mid[j]) for e in new
                            )
        for e in range(E):
            w = torch.softmax(logw[p, e] + torch.tensor(ll, dtype=logw.dtype), 0)
            if labelled:
                w = (1 - s_t) * w + s_t / z
            logw[p, e] = torch.log(w)
            for b in range(B):
                counts[p, e, b] += float(y[p, :, b].sum())
                for a in range(A):
                    sums[p, e, b, a] += float((y[p, :, b] * x[p, :, a]).sum())
    if lda:
        assert within is not None and scatter is not None and direc is not None
        return out, (sums, counts, logw, within, scatter, direc)
    if gnb:
        assert within is not None
        return out, (sums, counts, logw, within)
    return out, (sums, counts, logw)


def _lda_directions(
    config: VSMLConfig, sums: Tensor, counts: Tensor, scatter: Tensor, mean: Tensor, sq: Tensor, t: Tensor, e: int
) -> tuple[list[list[float]], list[list[float]], list[float]]:
    """u [A][B], the shrunk class means about the centre, v solving Sigma v = u exactly, the centre (one learner).

    Sigma = (W + nu_l D) / (m + nu_l), D the features' own variances (without the prior) + eps.
    """
    b_n, a_n = sums.shape
    q = config.online_norm_prior
    qc = q if config.online_norm_center_prior is None else config.online_norm_center_prior
    n = (float(t) + 1) * e
    centre = [float(mean[a]) * (n + q) / (n + qc) for a in range(a_n)]
    dvar = [max(float(sq[a]) - float(mean[a]) ** 2 - q / (n + q), 0.0) + config.online_norm_eps for a in range(a_n)]
    seen, nu = float(counts.sum()), config.lda_var_prior
    sigma = [
        [(float(scatter[i, j]) + (nu * dvar[i] if i == j else 0.0)) / (seen + nu) for j in range(a_n)]
        for i in range(a_n)
    ]
    u = [[_offset(config, sums, counts, mean, centre, b, a) for b in range(b_n)] for a in range(a_n)]
    return u, _solve(sigma, u), centre


def _offset(
    config: VSMLConfig, sums: Tensor, counts: Tensor, mean: Tensor, centre: list[float], b: int, a: int
) -> float:
    """Class b's mean about the centre, feature a (sums [B, A], counts [B], mean [A] the online moments' mean).

    Shrunk toward the centre by ``ncm_shrink`` pseudo-examples; with ``ncm_unseen_mirror`` = alpha_u, a class
    without a label sits where the unseen classes, alpha_u pseudo-examples each, balance the labelled examples
    around the mean: mean - (sum of the labelled examples - their number * mean) / (unseen classes * alpha_u).
    """
    nb = float(counts[b])
    if nb > 0 or config.ncm_unseen_mirror is None:
        return (float(sums[b, a]) - nb * centre[a]) / (nb + config.ncm_shrink)
    classes = range(len(counts))
    unseen = sum(1 for j in classes if float(counts[j]) == 0)
    labelled = sum(float(counts[j]) for j in classes)
    total = sum(float(sums[j, a]) for j in classes)
    m = float(mean[a])
    return m - centre[a] - (total - labelled * m) / (unseen * config.ncm_unseen_mirror)


def _solve(m: list[list[float]], rhs: list[list[float]]) -> list[list[float]]:
    """m^-1 rhs by Gaussian elimination with partial pivoting (m square, rhs a list of rows)."""
    k = len(m)
    aug = [list(m[i]) + list(rhs[i]) for i in range(k)]
    for col in range(k):
        piv = max(range(col, k), key=lambda r: abs(aug[r][col]))
        aug[col], aug[piv] = aug[piv], aug[col]
        for r in range(k):
            if r != col:
                f = aug[r][col] / aug[col][col]
                aug[r] = [vr - f * vc for vr, vc in zip(aug[r], aug[col], strict=True)]
    return [[v / aug[i][i] for v in aug[i][k:]] for i in range(k)]
