"""Prequential metrics on hand-made logits (exact values), intervals and the shots-seen curve."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from vsml_train.evaluation.metrics import (
    Estimate,
    accuracy_by_shots,
    online_curves,
    paired_difference,
    shots_seen,
    step_correct,
    step_loss,
    summarize,
    t_critical,
)


def _one_hot_logits(pred: np.ndarray, n_classes: int, scale: float = 10.0) -> np.ndarray:
    """Logits [T, S, B] that predict ``pred`` [T, S]."""
    return np.eye(n_classes)[pred] * scale


# T = 5 steps, S = 2 streams, B = 3 classes
LABELS = np.array([[0, 1], [1, 1], [2, 0], [0, 2], [1, 1]])
PRED = np.array([[1, 1], [1, 0], [2, 0], [0, 0], [1, 1]])
# correct:        [0, 1], [1, 0], [1, 1], [1, 0], [1, 1]


def test_step_scores_exact() -> None:
    correct = step_correct(_one_hot_logits(PRED, 3), LABELS)
    np.testing.assert_array_equal(correct, [[0, 1], [1, 0], [1, 1], [1, 0], [1, 1]])
    # uniform logits: every loss is log B
    np.testing.assert_allclose(step_loss(np.zeros((5, 2, 3)), LABELS), np.full((5, 2), math.log(3)))
    # logits (0, log 2, log 3) -> p = (1, 2, 3) / 6
    logits = np.log(np.array([1.0, 2.0, 3.0]))[None, None].repeat(3, 0)
    np.testing.assert_allclose(step_loss(logits, np.array([[0], [1], [2]])), -np.log([[1 / 6], [2 / 6], [3 / 6]]))
    # large logits stay finite
    assert np.isfinite(step_loss(np.array([[[1e4, -1e4]]]), np.array([[1]]))).all()


def test_summary_exact_values() -> None:
    s = summarize(_one_hot_logits(PRED, 3), LABELS, first_steps=2, last_steps=3)
    assert (s.n_steps, s.n_streams, s.first_steps, s.last_steps) == (5, 2, 2, 3)
    assert s.accuracy.values == (4 / 5, 3 / 5)
    assert s.accuracy.mean == pytest.approx(0.7)
    assert s.first_accuracy.values == (0.5, 0.5)
    assert s.last_accuracy.values == pytest.approx((1.0, 2 / 3))
    assert s.first_accuracy.half_width == 0.0  # identical streams: zero-width interval
    loss = step_loss(_one_hot_logits(PRED, 3), LABELS)
    assert s.final_loss.values == pytest.approx(tuple(loss[-3:].mean(0)))
    assert s.loss.mean == pytest.approx(loss.mean())


def test_summary_windows_are_cut_to_the_stream() -> None:
    s = summarize(_one_hot_logits(PRED, 3), LABELS)  # defaults 100 / 200 > T = 5
    assert (s.first_steps, s.last_steps) == (5, 5)
    assert s.first_accuracy.mean == s.last_accuracy.mean == s.accuracy.mean


def test_curves_exact() -> None:
    c = online_curves(_one_hot_logits(PRED, 3), LABELS)
    np.testing.assert_allclose(c.accuracy, [0.5, 0.5, 1.0, 0.5, 1.0])
    assert c.loss.shape == (5,)
    assert json.loads(json.dumps(c.to_dict()))["accuracy"] == [0.5, 0.5, 1.0, 0.5, 1.0]


@pytest.mark.parametrize(("df", "expected"), [(1, 12.7062), (2, 4.3027), (3, 3.1824), (7, 2.3646), (31, 2.0395)])
def test_t_critical_matches_tables(df: int, expected: float) -> None:
    assert t_critical(0.95, df) == pytest.approx(expected, abs=1e-4)


def test_t_critical_limits() -> None:
    assert t_critical(0.95, 100_000) == pytest.approx(1.95996, abs=1e-4)  # the normal quantile
    assert t_critical(0.99, 4) == pytest.approx(4.6041, abs=1e-4)
    assert math.isnan(t_critical(0.95, 0))
    with pytest.raises(ValueError):
        t_critical(1.0, 3)


def test_interval_width() -> None:
    values = np.array([0.7, 0.8, 0.9, 0.75])
    e = Estimate.of(values)
    sd = values.std(ddof=1)
    assert e.sem == pytest.approx(sd / 2)
    assert e.half_width == pytest.approx(t_critical(0.95, 3) * sd / 2)
    assert (e.low, e.high) == pytest.approx((e.mean - e.half_width, e.mean + e.half_width))
    # the same spread over more streams: a narrower interval
    rng = np.random.default_rng(0)
    widths = [Estimate.of(rng.normal(0.8, 0.05, n)).half_width for n in (4, 16, 64, 256)]
    assert widths == sorted(widths, reverse=True)
    # a higher level: a wider interval
    assert Estimate.of(values, level=0.99).half_width > e.half_width


def test_one_stream_interval_is_undefined() -> None:
    e = Estimate.of(np.array([0.8]))
    assert e.mean == 0.8 and e.n == 1
    assert math.isnan(e.sem) and math.isnan(e.half_width) and math.isnan(e.low)
    d = e.to_dict()
    assert d["sem"] is None and d["ci_low"] is None and d["ci_high"] is None
    s = summarize(_one_hot_logits(PRED[:, :1], 3), LABELS[:, :1])
    json.dumps(s.to_dict(), allow_nan=False)  # strict JSON: nan became None
    assert "±" not in s.brief()


def test_summary_to_dict_is_json() -> None:
    s = summarize(_one_hot_logits(PRED, 3), LABELS)
    d = json.loads(json.dumps(s.to_dict(), allow_nan=False))
    assert d["accuracy"]["mean"] == pytest.approx(0.7)
    assert d["accuracy"]["per_stream"] == [0.8, 0.6]
    assert set(d) == {
        "n_steps",
        "n_streams",
        "first_steps",
        "last_steps",
        "accuracy",
        "first_accuracy",
        "last_accuracy",
        "loss",
        "final_loss",
    }


def test_shots_seen_hand_made() -> None:
    labels = np.array([[0, 2], [1, 2], [0, 2], [0, 1], [2, 2], [1, 0]])
    np.testing.assert_array_equal(shots_seen(labels), [[0, 0], [0, 1], [1, 2], [2, 0], [0, 3], [1, 0]])


def test_accuracy_by_shots_hand_made() -> None:
    labels = np.array([[0], [1], [0], [0], [1], [0]])  # shots: 0 0 1 2 1 3
    pred = np.array([[2], [0], [0], [1], [1], [0]])  # right:  0 0 1 0 1 1
    curve = accuracy_by_shots(_one_hot_logits(pred, 3), labels)
    np.testing.assert_array_equal(curve.shots, [0, 1, 2, 3])
    np.testing.assert_array_equal(curve.count, [2, 2, 1, 1])
    np.testing.assert_allclose(curve.accuracy, [0.0, 1.0, 0.0, 1.0])
    cut = accuracy_by_shots(_one_hot_logits(pred, 3), labels, max_shots=1)
    np.testing.assert_array_equal(cut.count, [2, 2])
    wide = accuracy_by_shots(_one_hot_logits(pred, 3), labels, max_shots=5)
    assert wide.count[-1] == 0 and math.isnan(wide.accuracy[-1])
    json.dumps(curve.to_dict())


def test_accuracy_by_shots_pools_streams() -> None:
    labels = np.array([[0, 1], [0, 1]])  # shots 0 then 1 in both streams
    pred = np.array([[1, 1], [0, 0]])  # right: (0, 1), (1, 0)
    curve = accuracy_by_shots(_one_hot_logits(pred, 2), labels)
    np.testing.assert_allclose(curve.accuracy, [0.5, 0.5])
    np.testing.assert_array_equal(curve.count, [2, 2])


def test_paired_difference() -> None:
    a = Estimate.of(np.array([0.80, 0.70, 0.90]))
    b = Estimate.of(np.array([0.75, 0.65, 0.85]))
    d = paired_difference(a, b)
    assert d.mean == pytest.approx(0.05)
    assert d.half_width == pytest.approx(0.0, abs=1e-12)  # the stream difficulty cancels
    with pytest.raises(ValueError):
        paired_difference(a, Estimate.of(np.array([0.1, 0.2])))


def test_bad_inputs_are_rejected() -> None:
    with pytest.raises(ValueError, match=r"logits \[T, S, B\]"):
        summarize(np.zeros((5, 2)), LABELS)
    with pytest.raises(ValueError, match="must lie in"):
        summarize(np.zeros((5, 2, 3)), LABELS + 1)
    with pytest.raises(ValueError, match="integers"):
        summarize(np.zeros((5, 2, 3)), LABELS.astype(float))
    with pytest.raises(ValueError):
        summarize(np.zeros((5, 2, 3)), LABELS, first_steps=0)
    with pytest.raises(ValueError):
        Estimate(())
