"""Synthetic task families: shapes, labels, reproducibility, registry."""

from __future__ import annotations

import numpy as np
import pytest

from vsml_train.data.synthetic import LinearTask, NonlinearTask, SumSignTask, TabularTask, make_family

FAMILIES = [LinearTask(12, 5), NonlinearTask(12, 5, n_hidden=8), SumSignTask(12)]


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: type(f).__name__)
def test_shapes_dtypes_and_label_range(family):
    x, y = family.sample(300, np.random.default_rng(0))
    assert x.dtype == np.float32 and x.shape == (300, 12)
    assert y.dtype == np.int64 and y.shape == (300,)
    assert y.min() >= 0 and y.max() < family.n_classes
    assert abs(float(x.std()) - 1.0) < 0.1


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: type(f).__name__)
def test_same_seed_same_task_different_seed_different(family):
    x1, y1 = family.sample(200, np.random.default_rng(7))
    x2, y2 = family.sample(200, np.random.default_rng(7))
    x3, _ = family.sample(200, np.random.default_rng(8))
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)
    assert not np.array_equal(x1, x3)


@pytest.mark.parametrize("family", FAMILIES[:2], ids=lambda f: type(f).__name__)
def test_every_class_occurs_and_teachers_differ(family):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2000, 12), dtype=np.float32)
    first, second = family.draw(rng), family.draw(rng)
    y1, y2 = first.label_fn(x), second.label_fn(x)
    assert np.bincount(y1, minlength=5).min() > 0
    assert (y1 != y2).mean() > 0.3  # a fresh teacher is a different task


def test_linear_teacher_is_scale_invariant_nonlinear_is_not():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((500, 12), dtype=np.float32)
    linear = LinearTask(12, 5).draw(rng)
    np.testing.assert_array_equal(linear.label_fn(x), linear.label_fn(10 * x))
    nonlinear = NonlinearTask(12, 5, n_hidden=8).draw(rng)
    assert (nonlinear.label_fn(0.1 * x) != nonlinear.label_fn(10 * x)).any()


def test_sum_sign_labels():
    x, y = SumSignTask(6, x_std=2.0).sample(400, np.random.default_rng(3))
    np.testing.assert_array_equal(y, (x.sum(axis=1) > 0).astype(np.int64))
    assert 0.35 < y.mean() < 0.65 and abs(float(x.std()) - 2.0) < 0.2


def test_make_family_and_validation():
    assert make_family("linear", 4, 3) == LinearTask(4, 3)
    assert make_family("Sum_Sign", 4) == SumSignTask(4)
    assert make_family("nonlinear", 4, 3, n_hidden=5).n_hidden == 5
    with pytest.raises(ValueError, match="known: linear, nonlinear, sum-sign"):
        make_family("quadratic", 4, 3)
    with pytest.raises(ValueError, match="needs n_classes"):
        make_family("linear", 4)
    with pytest.raises(ValueError, match="binary"):
        make_family("sum-sign", 4, 3)
    with pytest.raises(TypeError):
        make_family("linear", 4, 3, width=2)
    with pytest.raises(ValueError, match="n_classes must be >= 2"):
        LinearTask(4, 1)
    with pytest.raises(ValueError, match="n_features must be >= 1"):
        NonlinearTask(0, 3)


def test_tabular_tables_are_z_scored_heavy_tailed_sparse_and_imbalanced() -> None:
    """The family's tables look like the suite's: z-scored features with outliers, rare indicators, skewed priors."""
    fam = TabularTask(40, 2)
    shares, extremes, indicator_tables = [], [], 0
    for i in range(20):
        teacher = fam.draw(np.random.default_rng(i))
        x, y = teacher.sample(2000, np.random.default_rng(100 + i))
        assert x.dtype == np.float32 and x.shape == (2000, 40) and y.dtype == np.int64
        np.testing.assert_allclose(x.mean(0), 0, atol=0.35)  # population moments: close, not exact
        shares.append(y.mean())
        extremes.append(float(np.abs(x).max()))
        indicator_tables += int((teacher.kinds == 3).any())
        for col in np.flatnonzero(teacher.kinds == 3):  # a z-scored 0/1 indicator keeps two values
            assert np.unique(x[:, col]).size <= 2
    assert min(shares) < 0.15 or max(shares) > 0.85  # some tables are very imbalanced
    assert 0.2 < float(np.median(shares)) < 0.8
    assert max(extremes) > 10  # heavy tails / rare indicators give outliers after z-scoring
    assert indicator_tables >= 15


def test_tabular_draws_are_reproducible_and_multiclass_labels_cover_the_range() -> None:
    fam = make_family("tabular", 12, 7)
    x1, y1 = fam.sample(500, np.random.default_rng(3))
    x2, y2 = fam.sample(500, np.random.default_rng(3))
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)
    assert y1.min() >= 0 and y1.max() < 7 and np.unique(y1).size >= 3


@pytest.mark.parametrize(
    "bad", [{"kinds": (1.0, 0.0, 0.0)}, {"kinds": (0.0, 0.0, 0.0, 0.0)}, {"df": 2.0}, {"relevant": 0.0}, {"noise": 1.0}]
)
def test_tabular_rejects_bad_options(bad: dict) -> None:
    with pytest.raises(ValueError, match="TabularTask"):
        TabularTask(8, 3, **bad)
