"""The output mixture: the network's prediction mixed online with class-mean experts (docs/model.md §3.5).

Dimension letters as in ``step``: P learners, E examples per step of one
learner, A input features, B classes, Z experts (2, or 3 with the GNB expert).

With ``config.ncm_temperature`` = tau set, the step's output is no longer the
network's logits alone but the log of a mixture of Z experts,

    p_t(b) = sum_k w_t[k] * softmax(logits_k)_b,

where expert 0 is the network (yhat_t, what its own error message is built
from: the network learns exactly as without the mixture) and expert 1 is
nearest-class-mean: -tau * d_t(b), d_t(b) the mean squared distance, over
the A features, between x_t and the running mean of class b, both
standardised with the online standardisation's centre and one scale for all
features (the root of the features' mean variance over the examples alone,
without the prior's unit variance), the class mean shrunk toward the centre
by ``ncm_shrink`` pseudo-examples (an unseen class sits at the centre).

With ``config.gnb_temperature`` = tau_g set, expert 2 is Gaussian naive
Bayes with one within-class variance per feature pooled over the classes
(diagonal linear discriminant analysis): -tau_g * mean_a (x_t - m_b)_a^2 / v_a
+ log((n_b + alpha) / (n + B alpha)), the same shrunk class means m_b, v_a
the pooled within-class variance shrunk toward the features' common spread
by ``gnb_var_prior`` pseudo-examples, alpha = ``gnb_class_prior``. Where
nearest-class-mean ignores which features separate the classes and how
often each class occurs, this expert weighs both: it is the stronger one on
tables with informative features of unequal spread or skewed classes.

With ``config.lda_temperature`` = tau_l set, expert 3 is linear discriminant
analysis with the full pooled within-class covariance: Sigma = (W + nu_l D) /
(m + nu_l), W the pooled within-class scatter of the raw features, D the
diagonal of each feature's own variance (so the expert does not depend on the
features' units), nu_l = ``lda_var_prior``; logits tau_l ((x - c)' v_b -
(m_b - c)' v_b / 2) + the GNB expert's class prior, v_b ~ Sigma^-1 (m_b - c)
the discriminant directions, refined by ``lda_iterations`` steps of
Jacobi-preconditioned conjugate gradients per step from the last step's (a
warm start: Sigma and the means move a little per example). Where the GNB
expert treats the features as independent, this one sees their
correlations: on tables of correlated measurements (sizes, ratios) it is the
stronger one from the first examples.

With ``config.ncm_unseen_penalty`` = kappa set, the three class-mean
experts give each class without a labelled example kappa nats less: left
at the centre, an unseen class is the nearest mean for most inputs, so
without it they guess the classes they know nothing of (on a table whose
minority class comes late, for its first examples). With
``config.ncm_unseen_mirror`` = alpha_u set, such a class does not sit at the
centre but where it balances the labelled examples around the data's mean
(``class_offsets``): on two classes, across the centre from the first
labels, where a linear learner would put it.

The weights w_t are the Bayesian posterior of "expert k is the best
predictor" under fixed share (Herbster & Warmuth 1998): after each labelled
step, w <- w * p_k(y) / sum_j w_j p_j(y) (with ``ncm_unseen_penalty``, an
example whose label is a class unseen before the step counts as p_k(y) = 1
for every expert: none could have predicted it), then w <- (1 - s_t) w + s_t / Z,
which keeps every expert recoverable; s_t = ``ncm_share``, divided by
(1 + t / ``ncm_share_decay``) when that is set, so the weights can settle on
the better expert as the stream goes on. They start uniform.

The state (``VSMLState.ncm``): the class sums of the raw features
[P, E, B, A], the class counts [P, E, B], log w [P, E, Z] and, with the GNB
expert, the pooled within-class sum of squares of each feature [P, E, A];
every example of a learner holds the same copy (the step's E examples are
pooled). With the LDA expert, also the pooled within-class scatter W
[P, A, A] and the directions v [P, A, B], one per learner (no E axis: A x A
per example would be waste).
"""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Sequence

import torch
from torch import Tensor

from .cell import centre_and_var, fan_in
from .config import VSMLConfig

_TINY = 1e-30  # keeps the conjugate-gradient ratios finite once a residual is exactly 0

# (ncm_sum [P, E, B, A], ncm_count [P, E, B], mix_logw [P, E, Z]), with the GNB expert
# ncm_within [P, E, A], and with the LDA expert lda_scatter [P, A, A] and lda_dir [P, A, B]
NCMState = tuple[Tensor, ...]


def lda_runs(config: VSMLConfig, n_features: int) -> bool:
    """Whether the LDA expert runs on inputs of ``n_features``: with ``lda_temperature``, up to ``lda_max_features``.

    Where it does not, its state is empty (A_lda = 0 in ``lda_scatter`` [P, A_lda, A_lda] and ``lda_dir``
    [P, A_lda, B]); ``vsml_runtime.format.StateSpec.resolve`` computes A_lda from the limit in the model's metadata.
    """
    if config.lda_temperature is None:
        return False
    limit = config.lda_max_features
    return limit is None or (limit > 0 and bool(n_features <= limit))


def initial_ncm(x_mean: Tensor, classes: Tensor, config: VSMLConfig) -> NCMState:
    """The empty mixture state: x_mean [P, E, A] and any [P, E, B] tensor give the shapes (traceable).

    The weights start uniform over the experts that run at this size: log(1 / Z') for the first Z'
    (``mix_logw`` keeps Z entries; an expert that does not run, the LDA expert above its size limit,
    holds an unused 0).
    """
    sums = torch.zeros_like(classes).unsqueeze(-1) * x_mean.unsqueeze(2)  # [P, E, B, A]
    counts = torch.zeros_like(classes)
    zero = torch.zeros_like(classes[..., 0])  # [P, E]
    runs = lda_runs(config, x_mean.shape[-1])
    active = config.n_experts - int(config.lda_temperature is not None and not runs)
    logw = [zero + math.log(1 / active)] * active + [zero] * (config.n_experts - active)
    out = (sums, counts, torch.stack(logw, dim=-1))
    if config.gnb_temperature is None:
        return out
    out = (*out, torch.zeros_like(x_mean))
    if config.lda_temperature is None:
        return out
    x0 = torch.zeros_like(x_mean[:, 0] if runs else x_mean[:, 0, :0])  # [P, A_lda] (no slice to trace when A_lda = A)
    return (*out, x0.unsqueeze(-1) * x0.unsqueeze(-2), x0.unsqueeze(-1) * counts[:, 0].unsqueeze(-2))


def _centre_and_own_var(
    x: Tensor, x_mean: Tensor, x_sq: Tensor, t: Tensor, config: VSMLConfig
) -> tuple[Tensor, Tensor]:
    """The centre c of docs/model.md §3.4 and each feature's variance over the examples alone, [P, E, A] each.

    Args:
        x: [P, E, A] raw features of this step (before its labels).
        x_mean, x_sq: [P, E, A] the online standardisation's moments counting this step's examples.
        t: [P, E] the steps before this one.
    Returns:
        (c, max(x_sq - q / (n + q) - x_mean^2, 0)): the variance without the prior's unit variance
        (there to keep rare features from blowing up, which the experts' own scales do not need).
    """
    n = (t + 1) * fan_in(x, 1)
    centre, _ = centre_and_var(x_mean, x_sq, n, config)
    prior = (config.online_norm_prior / (n + config.online_norm_prior)).unsqueeze(-1)  # [P, E, 1]
    return centre, torch.clamp(x_sq - prior - x_mean * x_mean, min=0.0)


def class_offsets(x_mean: Tensor, centre: Tensor, ncm: NCMState, config: VSMLConfig) -> Tensor:
    """u [P, E, B, A]: each class's mean about the centre c, shrunk toward it by ``ncm_shrink`` pseudo-examples.

    u_b = (S_b - n_b c) / (n_b + k), k = ``ncm_shrink``: a class without a labelled example sits at the centre. With
    ``ncm_unseen_mirror`` = alpha_u it sits at the labelled examples' mirror instead: the centre
    c_q = x_mean (the online standardisation's mean, its q prior pseudo-examples at 0) is the mean of
    every class's examples, so the unseen classes, alpha_u pseudo-examples each, balance the labelled
    ones: m_U = c_q - (S - m c_q) / (k_u alpha_u), S the sum of the m labelled examples and k_u the
    classes without one (docs/model.md §3.5). On two classes after one label x_1 that is about -x_1:
    an input on the other side of the centre is nearer the unseen class.

    Args:
        x_mean, centre: [P, E, A] the online standardisation's mean and the centre c.
        ncm: the mixture's state (class sums [P, E, B, A] and counts [P, E, B]).
    """
    sums, counts = ncm[0], ncm[1]
    n_c = counts.unsqueeze(-1)  # [P, E, B, 1]
    u = (sums - n_c * centre.unsqueeze(2)) / (n_c + config.ncm_shrink)
    alpha = config.ncm_unseen_mirror
    if alpha is None:
        return u
    unseen = (counts == 0).to(u.dtype)  # [P, E, B]
    k_u = unseen.sum(-1, keepdim=True)  # [P, E, 1]; when 0 no class takes the mirror, the divisor only stays finite
    deviation = sums.sum(2) - counts.sum(-1, keepdim=True) * x_mean  # [P, E, A]: S - m c_q
    mirror = x_mean - centre - deviation / torch.clamp(k_u * alpha, min=alpha)  # [P, E, A]: m_U - c
    return u + unseen.unsqueeze(-1) * mirror.unsqueeze(2)


def _class_distances(
    x: Tensor, centre: Tensor, own_var: Tensor, offsets: Tensor, config: VSMLConfig
) -> tuple[Tensor, Tensor]:
    """The squared standardised differences to every class mean, and the features' spread.

    Args:
        x: [P, E, A] raw features of this step (before its labels).
        centre, own_var: [P, E, A] from ``_centre_and_own_var``.
        offsets: [P, E, B, A] the class means about the centre, ``class_offsets``.
    Returns:
        (sq [P, E, B, A] = ((x - c) g - u_b g)^2, s2 [P, E, 1]): s2 the features' mean variance over
        the examples alone, g = 1 / sqrt(s2 + eps).
    """
    spread = own_var.mean(-1, keepdim=True)
    scale = torch.rsqrt(spread + config.online_norm_eps)  # [P, E, 1]
    z = (x - centre) * scale  # [P, E, A]
    return (z.unsqueeze(2) - offsets * scale.unsqueeze(2)).pow(2), spread


def expert_logits(
    x: Tensor, x_mean: Tensor, x_sq: Tensor, t: Tensor, ncm: NCMState, config: VSMLConfig
) -> tuple[list[Tensor], Tensor | None]:
    """The logits [P, E, B] of the Z - 1 experts beside the network, in the order of ``mix_logw``.

    Arguments as ``_centre_and_own_var``, and the mixture's state. NCM: -tau * mean_a sq. GNB (with
    ``gnb_temperature``): with v_a = (W_a + nu s2) / (m + nu) + eps, W [P, E, A] the pooled
    within-class sum of squares and m the labelled examples so far, -tau_g * mean_a (x - m_b)_a^2 / v_a
    = -tau_g * mean_a sq_a (s2 + eps) / v_a, plus the log of the class frequencies with alpha
    pseudo-examples each. LDA (with ``lda_temperature``): ``_lda_logits``. With ``ncm_unseen_penalty``
    = kappa, each expert's logit of a class without a labelled example is kappa lower. Also returns the LDA
    expert's refined directions [P, A, B] for ``ncm_update`` (None without it).
    """
    assert config.ncm_temperature is not None
    centre, own_var = _centre_and_own_var(x, x_mean, x_sq, t, config)
    offsets = class_offsets(x_mean, centre, ncm, config)
    sq, spread = _class_distances(x, centre, own_var, offsets, config)
    out = [-config.ncm_temperature * sq.mean(-1)]
    directions = None
    if config.gnb_temperature is not None:
        _, counts, _, within = ncm[:4]
        seen = counts.sum(-1, keepdim=True)  # [P, E, 1] labelled examples
        nu, alpha = config.gnb_var_prior, config.gnb_class_prior
        var = (within + nu * spread) / (seen + nu) + config.online_norm_eps  # [P, E, A]
        d = (sq * ((spread + config.online_norm_eps) / var).unsqueeze(2)).mean(-1)  # [P, E, B]
        prior = torch.log((counts + alpha) / (seen + counts.shape[-1] * alpha))
        out.append(-config.gnb_temperature * d + prior)
        if lda_runs(config, x.shape[-1]):
            lda, directions = _lda_logits(x, centre, own_var, offsets, ncm, config)
            out.append(lda + prior)
    if config.ncm_unseen_penalty is not None:
        unseen = (ncm[1] == 0).to(x.dtype)  # [P, E, B]: classes without a labelled example
        out = [logits - config.ncm_unseen_penalty * unseen for logits in out]
    return out, directions


def _lda_logits(
    x: Tensor, centre: Tensor, own_var: Tensor, offsets: Tensor, ncm: NCMState, config: VSMLConfig
) -> tuple[Tensor, Tensor]:
    """The LDA expert's logits without the class prior [P, E, B], and its refined directions v [P, A, B].

    Sigma = (W + nu_l D) / (m + nu_l), D = diag(own_var_a + eps) the features' own variance (without the
    online standardisation's prior; every example holds the same, the first's is used), W [P, A, A] the
    pooled within-class scatter, m the labelled examples; u_b = m_b - c [P, A, B] the shrunk class means
    about the centre c (``class_offsets``, the first example's: every example holds the same). v starts
    from the last step's directions and takes ``lda_iterations`` steps of conjugate gradients on
    Sigma v = u, preconditioned by Sigma's diagonal, every class its own step sizes (Hestenes & Stiefel
    1952). Logits tau_l ((x - c)' v_b - u_b' v_b / 2): LDA's discriminant, whose terms common to all
    classes are dropped (they cancel in the softmax).
    """
    counts, scatter, v = ncm[1][:, 0], ncm[4], ncm[5]  # [P, B], [P, A, A], [P, A, B]
    centre = centre[:, 0]  # [P, A]: every example holds the same moments
    d = own_var[:, 0] + config.online_norm_eps  # [P, A]
    u = offsets[:, 0].transpose(1, 2)  # [P, A, B]
    nu = config.lda_var_prior
    scale = (counts.sum(-1, keepdim=True) + nu).unsqueeze(-1)  # [P, 1, 1]: m + nu

    def sigma(p: Tensor) -> Tensor:  # Sigma p for p [P, A, B]
        return (scatter @ p + nu * d.unsqueeze(-1) * p) / scale

    diag = ((ncm[3][:, 0] + nu * d) / scale.squeeze(-1)).unsqueeze(-1)  # [P, A, 1]: W's diagonal is the GNB's within
    r = u - sigma(v)
    z = r / diag
    p = z
    rz = (r * z).sum(1, keepdim=True)  # [P, 1, B]
    for _ in range(config.lda_iterations):
        q = sigma(p)
        alpha = rz / ((p * q).sum(1, keepdim=True) + _TINY)
        v = v + alpha * p
        r = r - alpha * q
        z = r / diag
        rz_new = (r * z).sum(1, keepdim=True)
        p = z + rz_new / (rz + _TINY) * p
        rz = rz_new
    lin = (x - centre.unsqueeze(1)) @ v  # [P, E, B]
    quad = 0.5 * (u * v).sum(1).unsqueeze(1)  # [P, 1, B]
    return config.lda_temperature * (lin - quad), v


def _first(logw: Tensor, z: int) -> Tensor:
    """The first z entries of ``mix_logw`` [P, E, Z] (no slice to trace when that is all of them)."""
    return logw if z == logw.shape[-1] else logw[..., :z]


def mix(net_logits: Tensor, experts: Sequence[Tensor], logw: Tensor) -> tuple[Tensor, tuple[Tensor, ...]]:
    """log p [P, E, B] and the experts' log-probabilities ([P, E, B] each, the network's first).

    logw: [P, E, Z] the weights' logs; only the first 1 + len(experts) are read (the experts that run).
    """
    lps = (torch.log_softmax(net_logits, -1), *(torch.log_softmax(e, -1) for e in experts))
    lw = torch.log_softmax(_first(logw, len(lps)), -1)
    terms = [lw[..., k : k + 1] + lp for k, lp in enumerate(lps)]
    top = functools.reduce(torch.maximum, terms)  # log sum exp, written out (traces to plain ONNX ops)
    total = functools.reduce(operator.add, [torch.exp(term - top) for term in terms])
    return top + torch.log(total), lps


def _within_update(x: Tensor, y: Tensor, sums: Tensor, counts: Tensor, within: Tensor) -> Tensor:
    """The pooled within-class sum of squares [P, E, A] after the step's labels (Chan et al.'s merge, per class).

    A class b with n_b examples of mean mu_b gaining m_b examples of mean xbar_b and sum of squares
    M2_b around it adds M2_b + n_b m_b / (n_b + m_b) (xbar_b - mu_b)^2; no large sums cancel.
    """
    m = y.sum(1, keepdim=True)  # [P, 1, B]
    xbar = (y.unsqueeze(-1) * x.unsqueeze(2)).sum(1, keepdim=True) / torch.clamp(m, min=1.0).unsqueeze(-1)
    m2 = (y.unsqueeze(-1) * (x.unsqueeze(2) - xbar).pow(2)).sum(1, keepdim=True)  # [P, 1, B, A]
    mu = sums / torch.clamp(counts, min=1.0).unsqueeze(-1)  # [P, E, B, A]
    k = (counts * m / torch.clamp(counts + m, min=1.0)).unsqueeze(-1)  # [P, E, B, 1]
    return within + (m2 + k * (xbar - mu).pow(2)).sum(2)


def _scatter_update(
    x: Tensor, y: Tensor, sums: Tensor, counts: Tensor, new_sums: Tensor, new_counts: Tensor, scatter: Tensor
) -> Tensor:
    """The pooled within-class scatter [P, A, A] after the step's labels, one rank-E product.

    sums, counts / new_sums, new_counts: the class sums [P, E, B, A] and counts [P, E, B] before and
    after the step (``ncm_update``'s). A class with n examples of mean mu gaining examples x_e (new
    mean mu') adds sum_e (x_e - mu')(x_e - mu')' + n (mu' - mu)(mu' - mu)' = sum_e (x_e - mu)(x_e - mu')'
    (Welford's form, merged per class: it is ``_within_update``'s Chan merge written with the two means).
    """
    mu = sums[:, 0] / torch.clamp(counts[:, 0], min=1.0).unsqueeze(-1)  # [P, B, A] (any value when unseen)
    mu_new = new_sums[:, 0] / torch.clamp(new_counts[:, 0], min=1.0).unsqueeze(-1)
    before = (x - y @ mu) * y.sum(-1, keepdim=True)  # [P, E, A]: 0 for an unlabelled example
    return scatter + before.transpose(1, 2) @ (x - y @ mu_new)


def ncm_update(
    x: Tensor,
    y: Tensor,
    lp: Sequence[Tensor],
    ncm: NCMState,
    t: Tensor,
    config: VSMLConfig,
    directions: Tensor | None = None,
) -> NCMState:
    """The mixture state after the step's labels y [P, E, B] (all-zero rows: no label).

    x: [P, E, A] raw features; lp: the experts' log-probabilities [P, E, B] from ``mix``;
    t: [P, E] the steps before this one (for ``ncm_share_decay``); directions: the LDA expert's
    refined v [P, A, B] from ``expert_logits`` (with ``lda_temperature``).
    """
    sums, counts, logw = ncm[0], ncm[1], ncm[2]
    new_sums = sums + (y.unsqueeze(-1) * x.unsqueeze(2)).sum(1, keepdim=True)  # [P, 1, B, A] to every example
    new_counts = counts + y.sum(1, keepdim=True)
    z = len(lp)  # the experts that ran; mix_logw's entries past them stay as they are
    # with ncm_unseen_penalty, the label of a class unseen before the step judges no expert
    y_ll = y if config.ncm_unseen_penalty is None else y * (counts != 0).to(y.dtype)
    ll = torch.stack([(lp_k * y_ll).sum(-1) for lp_k in lp], -1).sum(1, keepdim=True)  # [P, 1, Z']: log p_k(y)
    w = torch.softmax(_first(logw, z) + ll, -1)
    labelled = (y.sum((1, 2)) > 0).to(w.dtype).reshape(-1, 1, 1)  # [P, 1, 1]: share only after a label
    share: Tensor | float = config.ncm_share
    if config.ncm_share_decay is not None:
        share = config.ncm_share / (1 + t[:, :1].unsqueeze(-1) / config.ncm_share_decay)  # [P, 1, 1]
    w = w + labelled * share * (1 / z - w)
    new_logw = torch.log(w).expand_as(_first(logw, z))
    if z < logw.shape[-1]:
        new_logw = torch.cat([new_logw, logw[..., z:]], -1)
    out = (new_sums, new_counts, new_logw)
    if config.gnb_temperature is None:
        return out
    out = (*out, _within_update(x, y, sums, counts, ncm[3]))
    if config.lda_temperature is None:
        return out
    if directions is None:  # the LDA expert does not run at this size: its empty state passes through
        return (*out, ncm[4], ncm[5])
    return (*out, _scatter_update(x, y, sums, counts, new_sums, new_counts, ncm[4]), directions)
