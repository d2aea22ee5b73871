"""The mirrored mean of an unseen class in the output mixture (``ncm_unseen_mirror``, docs/model.md §3.5).

The per-cell oracle (tests/test_step.py, config "unseen_mirror") and the
exported-graph parity (tests/test_export_parity.py, config "lda-mixture")
cover the step math, tests/test_mixture_unseen.py its config checks; here:
what the option promises. An unseen class's mean balances the labelled
examples around the data's mean, the classes with a label keep theirs, and
on two classes after one label an input across the centre is the unseen
class for every class-mean expert, by a wider margin than with the unseen
class at the centre.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.test_mixture import _expert
from tests.test_mixture_unseen import PENALISED
from vsml_train.model import mixture
from vsml_train.model.config import VSMLConfig

DT = torch.float64
ALPHA = 2.0
MIRRORED = PENALISED.replace(ncm_unseen_mirror=ALPHA)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**16), a=st.integers(1, 6), b=st.integers(2, 6), data=st.data())
def test_the_unseen_classes_balance_the_labelled_examples(seed: int, a: int, b: int, data: st.DataObject) -> None:
    """sum_b n_b (m_b - c_q) + k_u alpha_u (m_U - c_q) = 0 over the labelled classes, m_b their raw means;
    a class with a label keeps its shrunk mean, and without any unseen class nothing changes."""
    gen = torch.Generator().manual_seed(seed)
    counts = torch.tensor(data.draw(st.lists(st.integers(0, 4), min_size=b, max_size=b)), dtype=DT).reshape(1, 1, b)
    sums = torch.randn(1, 1, b, a, generator=gen, dtype=DT) * 3 * counts.unsqueeze(-1)
    x_mean = torch.randn(1, 1, a, generator=gen, dtype=DT)
    centre = x_mean * 1.5 + 0.25
    ncm = (sums, counts)
    plain = mixture.class_offsets(x_mean, centre, ncm, PENALISED)
    mirrored = mixture.class_offsets(x_mean, centre, ncm, MIRRORED)
    unseen = counts[0, 0] == 0
    torch.testing.assert_close(mirrored[0, 0, ~unseen], plain[0, 0, ~unseen], rtol=0, atol=0)
    if not bool(unseen.any()):
        return
    m_u = mirrored[0, 0, unseen] + centre[0, 0]  # [k_u, A]: every unseen class at the same point
    torch.testing.assert_close(m_u, m_u[:1].expand_as(m_u), rtol=0, atol=1e-12)
    labelled = (sums[0, 0] - counts[0, 0].unsqueeze(-1) * x_mean[0, 0]).sum(0)  # sum_b n_b (m_b - c_q)
    balance = labelled + int(unseen.sum()) * ALPHA * (m_u[0] - x_mean[0, 0])
    torch.testing.assert_close(balance, torch.zeros_like(balance), rtol=0, atol=1e-9)


@pytest.mark.parametrize("which", [0, 1, 2])
def test_after_one_label_an_input_across_the_centre_is_the_unseen_class(which: int) -> None:
    """Two classes, one label of class 0 at v: at -v the expert (NCM, GNB, LDA) names class 1, and by a wider
    margin than with the unseen class at the centre; at v it names class 0, as it does without the option."""
    v = torch.tensor([1.5, -0.5, 2.0, 0.7, -1.2, 1.0], dtype=DT).reshape(1, 1, 1, 6)
    y = torch.zeros(2, 1, 1, dtype=torch.long)

    def margin(config: VSMLConfig, second: torch.Tensor) -> float:  # logit of class 1 minus class 0 at step 2
        logits = _expert(config, torch.cat([v, second]), y, 2, which)[-1].flatten()
        return float(logits[1] - logits[0])

    assert margin(MIRRORED, -v) > max(margin(PENALISED, -v), 0.0)
    assert margin(MIRRORED, v) < 0 and margin(PENALISED, v) < 0
