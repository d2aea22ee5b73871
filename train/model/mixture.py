"""The NCM mixture: the network's prediction mixed online with a nearest-class-mean expert (docs/model.md §3.5).

Dimension letters as in ``step``: P learners, E examples per step of one
learner, A input features, B classes, Z = 2 experts.

With ``config.ncm_temperature`` = tau set, the step's output is no longer the
network's logits alone but the log of a two-expert mixture,

    p_t(b) = w_t * softmax(yhat_t)_b + (1 - w_t) * softmax(-tau * d_t)_b,

where yhat_t are the network's logits (what its own error message is built
from: the network learns exactly as without the mixture) and d_t(b) the mean
squared distance, over the A features, between x_t and the running mean of
class b, both standardised with the online standardisation's centre and one
scale for all features (the root of the features' mean variance over the
examples alone, without the prior's unit variance), the class mean shrunk
toward the centre by ``ncm_shrink`` pseudo-examples (an unseen class sits at
the centre). The weight w_t is the Bayesian posterior of "the
network is the better predictor" under fixed share (Herbster & Warmuth 1998):
after each labelled step, w <- w p_net(y) / (w p_net(y) + (1 - w) p_ncm(y)),
then w <- (1 - s) w + s / 2 with s = ``ncm_share``, which keeps either expert
recoverable. It starts at 1/2. Nearest-class-mean is the few-shot learner the
network trails on its first examples (model card, "Learner 9"); the
mixture follows whichever of the two predicts the stream better so far.

The state (``VSMLState.ncm``): the class sums of the raw features
[P, E, B, A], the class counts [P, E, B] and log(w, 1 - w) [P, E, Z]; every
example of a learner holds the same copy (the step's E examples are pooled).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .cell import centre_and_var, fan_in
from .config import VSMLConfig

NCMState = tuple[Tensor, Tensor, Tensor]


def initial_ncm(x_mean: Tensor, classes: Tensor) -> NCMState:
    """The empty NCM state: x_mean [P, E, A] and any [P, E, B] tensor give the shapes (traceable)."""
    sums = torch.zeros_like(classes).unsqueeze(-1) * x_mean.unsqueeze(2)  # [P, E, B, A]
    counts = torch.zeros_like(classes)
    zero = torch.zeros_like(classes[..., 0])  # [P, E]
    logw = torch.stack([zero, zero], dim=-1) + math.log(0.5)
    return sums, counts, logw


def ncm_logits(x: Tensor, x_mean: Tensor, x_sq: Tensor, t: Tensor, ncm: NCMState, config: VSMLConfig) -> Tensor:
    """The NCM expert's logits -tau * d [P, E, B] for x [P, E, A] (raw features) before its label.

    x_mean, x_sq: [P, E, A] the online standardisation's moments counting this
    step's examples; t: [P, E] the steps before this one.
    """
    assert config.ncm_temperature is not None
    sums, counts, _ = ncm
    n = (t + 1) * fan_in(x, 1)
    centre, _ = centre_and_var(x_mean, x_sq, n, config)
    # one scale for every feature from the examples' own spread: the prior's unit variance (there to
    # keep rare features from blowing up, which a scale shared by all features does not need) left out
    prior = (config.online_norm_prior / (n + config.online_norm_prior)).unsqueeze(-1)  # [P, E, 1]
    spread = torch.clamp(x_sq - prior - x_mean * x_mean, min=0.0).mean(-1, keepdim=True)
    scale = torch.rsqrt(spread + config.online_norm_eps)  # [P, E, 1]
    z = (x - centre) * scale  # [P, E, A]
    n_c = counts.unsqueeze(-1)  # [P, E, B, 1]
    zc = (sums - n_c * centre.unsqueeze(2)) * scale.unsqueeze(2) / (n_c + config.ncm_shrink)  # [P, E, B, A]
    return -config.ncm_temperature * (z.unsqueeze(2) - zc).pow(2).mean(-1)


def mix(net_logits: Tensor, expert_logits: Tensor, logw: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """log p [P, E, B] and the two experts' log-probabilities ([P, E, B] each) for log(w, 1 - w) [P, E, Z]."""
    lp_net, lp_ncm = torch.log_softmax(net_logits, -1), torch.log_softmax(expert_logits, -1)
    lw = torch.log_softmax(logw, -1)
    a, b = lw[..., :1] + lp_net, lw[..., 1:] + lp_ncm
    top = torch.maximum(a, b)  # log(e^a + e^b), written out (traces to plain ONNX ops)
    return top + torch.log(torch.exp(a - top) + torch.exp(b - top)), (lp_net, lp_ncm)


def ncm_update(x: Tensor, y: Tensor, lp: tuple[Tensor, Tensor], ncm: NCMState, config: VSMLConfig) -> NCMState:
    """The NCM state after the step's labels y [P, E, B] (all-zero rows: no label).

    x: [P, E, A] raw features; lp: the experts' log-probabilities [P, E, B] from ``mix``.
    """
    sums, counts, logw = ncm
    sums = sums + (y.unsqueeze(-1) * x.unsqueeze(2)).sum(1, keepdim=True)  # [P, 1, B, A] to every example
    counts = counts + y.sum(1, keepdim=True)
    ll = torch.stack([(lp[0] * y).sum(-1), (lp[1] * y).sum(-1)], -1).sum(1, keepdim=True)  # [P, 1, Z]: log p_k(y)
    w = torch.softmax(logw + ll, -1)
    labelled = (y.sum((1, 2)) > 0).to(w.dtype).reshape(-1, 1, 1)  # [P, 1, 1]: share only after a label
    w = w + labelled * config.ncm_share * (0.5 - w)
    return sums, counts, torch.log(w).expand_as(logw)
