"""The unseen-class penalty of the output mixture (``ncm_unseen_penalty``, docs/model.md §3.5).

The config checks here cover the mirror too (``ncm_unseen_mirror``, tests/test_mixture_mirror.py).

The per-cell oracle (tests/test_step.py, config "unseen_penalty") and the
exported-graph parity (tests/test_export_parity.py, config "lda-mixture")
cover the step math; here: what the option promises. The class-mean experts'
logits of a class without a labelled example are exactly kappa lower, the
first label of a class moves the weights by the share alone, the network
learns as without the option, and the mixture is still a distribution that
can name a class no expert has seen yet (through the network).
"""

from __future__ import annotations

import math

import pytest
import torch

from tests.test_mixture import CONFIG, _expert, _stream
from vsml_train.model.config import VSMLConfig
from vsml_train.model.episode import labels_to_onehot, run_episode
from vsml_train.model.params import init_params

DT = torch.float64
# test_mixture's NCM config with the GNB and LDA experts and a decaying share (learner 11's mixture)
BASE = CONFIG.replace(gnb_temperature=2.0, lda_temperature=0.5, ncm_share_decay=30.0)
KAPPA = 7.0
PENALISED = BASE.replace(ncm_unseen_penalty=KAPPA)


def _stream_from_class_0(seed: int, steps: int, a: int, b: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``test_mixture._stream`` (one learner, one example per step) with its first 3 labels set to class 0."""
    x, y = _stream(seed, steps, a, b)
    y[:3] = 0
    return x, y


@pytest.mark.parametrize("option", ["ncm_unseen_penalty", "ncm_unseen_mirror"])
@pytest.mark.parametrize("bad", ["needs", "zero", "negative", "nan", "inf"])
def test_config_rejects_a_bad_unseen_class_option(option: str, bad: str) -> None:
    """The penalty and the mirror (tests/test_mixture_mirror.py): finite and > 0, and only with the mixture."""
    other = "ncm_unseen_mirror" if option == "ncm_unseen_penalty" else "ncm_unseen_penalty"
    value = {"zero": 0.0, "negative": -1.0, "nan": math.nan, "inf": math.inf}
    changes = (
        {"ncm_temperature": None, "gnb_temperature": None, "lda_temperature": None, other: None}
        if bad == "needs"
        else {option: value[bad]}
    )
    message = f"{option} needs ncm_temperature" if bad == "needs" else f"{option} must be"
    with pytest.raises(ValueError, match=message):
        PENALISED.replace(**{"ncm_unseen_mirror": 2.0, **changes})


@pytest.mark.parametrize("seen", [0, 1, 3])
def test_unseen_classes_lose_exactly_kappa_in_every_class_mean_expert(seen: int) -> None:
    """After labels of class 0 only (or none), every expert's logits of the unseen classes are kappa lower."""
    x, y = _stream_from_class_0(0, seen + 1, 4, 3)
    # each expert's logits for x[-1] after the labels y[:-1] (NCM, GNB, LDA)
    plain = [_expert(BASE, x, y, 3, which)[-1] for which in range(3)]
    penalised = [_expert(PENALISED, x, y, 3, which)[-1] for which in range(3)]
    unseen = torch.tensor([0.0, 1.0, 1.0] if seen else [1.0, 1.0, 1.0], dtype=DT)
    for p_k, q_k in zip(plain, penalised, strict=True):
        torch.testing.assert_close(p_k - q_k, KAPPA * unseen.expand_as(p_k), rtol=0, atol=1e-12)


def _weights_around_a_new_class(config: VSMLConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The mixture's 4 weights [1, 1, 4] before and after step 3, whose label (class 2) is new to the stream."""
    b = 3
    x, y = _stream_from_class_0(1, 4, 3, b)
    y[3] = 2
    params = init_params(PENALISED, 0, dtype=DT)  # config changes leave V_M's shapes as they are
    before = run_episode(params, config, x[:3], y[:3], b, seed=0)
    after = run_episode(params, config, x[3:], y[3:], b, seed=0, state=before.state)
    assert before.state.ncm is not None and after.state.ncm is not None
    return before.state.ncm[2].exp()[..., :4], after.state.ncm[2].exp()[..., :4]


def test_the_first_label_of_a_class_moves_the_weights_by_the_share_alone() -> None:
    """A label of a class no expert has seen: w <- (1 - s) w + s / Z, whatever the experts predicted."""
    s = PENALISED.ncm_share / (1 + 3 / PENALISED.ncm_share_decay)
    w0, w1 = _weights_around_a_new_class(PENALISED)
    torch.testing.assert_close(w1, (1 - s) * w0 + s / 4, rtol=0, atol=1e-12)
    # without the option, the same label judges the experts: the weights move by more than the share
    w0, w1 = _weights_around_a_new_class(BASE)
    assert (w1 - ((1 - s) * w0 + s / 4)).abs().max() > 1e-3


def test_the_network_learns_as_without_the_penalty_and_the_output_is_a_distribution() -> None:
    a, b, steps = 5, 4, 12
    x, y = _stream_from_class_0(2, steps, a, b)
    params = init_params(PENALISED, 0, dtype=DT)
    with_it = run_episode(params, PENALISED, x, y, b, seed=0)
    without = run_episode(params, BASE, x, y, b, seed=0)
    for k in range(PENALISED.n_layers):
        torch.testing.assert_close(with_it.state.h[k], without.state.h[k], rtol=0, atol=0)
        torch.testing.assert_close(with_it.state.c[k], without.state.c[k], rtol=0, atol=0)
    torch.testing.assert_close(with_it.logits.exp().sum(-1), torch.ones(steps, 1, 1, dtype=DT))
    assert (with_it.logits - without.logits).abs().max() > 1e-3
    # an unseen class keeps the network's share of the mass: the mixture never rules it out
    first = labels_to_onehot(y, b, DT)[:3].sum((0, 1, 2)) == 0  # classes not among the first 3 labels
    assert bool(first.any()) and float(with_it.logits[3, 0, 0][first].exp().min()) > 1e-6
