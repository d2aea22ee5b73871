"""A River classifier around ``Learner``: ``learn_one`` / ``predict_proba_one`` over dict features.

    pip install "vsml[cpu,river]"

    from river import datasets, evaluate, metrics, preprocessing
    from vsml_runtime.river import VSMLClassifier

    model = preprocessing.StandardScaler() | VSMLClassifier()
    evaluate.progressive_val_score(datasets.Phishing(), model, metrics.Accuracy())

Features: a ``Learner`` has a fixed number of inputs, so the classifier fixes
its feature list when it is built: ``features=`` if given, else the keys of
the first example it sees, sorted (so the order of a dict's keys never
matters). Then, as River's linear models treat a sparse dict: a missing
feature is 0, and a feature outside the list is ignored (the learner cannot
grow). Values must be numbers: encode categories first (e.g.
``preprocessing.OneHotEncoder``).

Classes: ``classes=`` if given (fixed order), else labels get class indices
in order of first appearance, at most ``n_classes`` of them (a ValueError
names the fix when more appear). ``predict_proba_one`` gives the
probabilities of the labels seen so far (softmax over their logits); before
any label it returns ``{}``, as River's classifiers do.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np
from river import base

from .inputs import Standardize
from .learner import Learner, pretrained_path
from .sessions import Device

__all__ = ["VSMLClassifier"]


class VSMLClassifier(base.Classifier):
    """An online VSML learner as a River classifier (no torch, no gradients).

    Parameters
    ----------
    model
        The step graph written by ``vsml-export`` (``model.onnx``); None = the
        shipped pretrained learner.
    n_classes
        Most classes the stream may hold (ignored when ``classes`` is given).
    classes
        The labels, in a fixed order (optional).
    features
        The feature names, in a fixed order (optional; default: the first
        example's keys, sorted).
    seed
        Seed of the learner's initial state.
    standardize
        As ``Learner``: False when the features arrive standardised (e.g.
        after ``preprocessing.StandardScaler``), "online" to keep running
        per-feature statistics in the learner.
    device
        "cpu", "cuda" or "auto".
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | None = None,
        n_classes: int = 10,
        classes: Sequence[Hashable] | None = None,
        features: Sequence[Hashable] | None = None,
        seed: int = 0,
        standardize: Standardize = False,
        device: Device = "cpu",
    ) -> None:
        self.model = model
        self.n_classes = n_classes
        self.classes = classes
        self.features = features
        self.seed = seed
        self.standardize = standardize
        self.device = device
        self.learner: Learner | None = None
        self._labels: dict[Hashable, int] = {}
        self._names: list[Hashable] = []  # labels by class index
        if classes is not None:
            self._labels = {c: i for i, c in enumerate(classes)}
            self._names = list(classes)
        self._keys: list[Hashable] | None = None  # the last dict's key order and its positions
        self._pos = np.zeros(0, np.int64)
        self._known = np.zeros(0, bool)

    @property
    def _multiclass(self) -> bool:
        return True

    @property
    def feature_names(self) -> list[Hashable]:
        """The fixed feature order (empty until the learner is built)."""
        return [] if self.learner is None else list(self._feature_list)

    # -- features and labels -------------------------------------------------

    def _build(self, x: dict[Hashable, Any]) -> Learner:
        names = list(self.features) if self.features is not None else sorted(x, key=lambda k: (str(k), repr(k)))
        if not names:
            raise ValueError("VSMLClassifier needs at least one feature; the first example has none")
        self._feature_list = names
        self._index = {k: i for i, k in enumerate(names)}
        n = len(self._names) if self.classes is not None else int(self.n_classes)
        if n < 2:
            raise ValueError(f"VSMLClassifier needs at least 2 classes, got {n}")
        path = pretrained_path() if self.model is None else self.model
        self.learner = Learner(
            path, len(names), n, seed=int(self.seed), device=self.device, standardize=self.standardize
        )
        return self.learner

    def _vector(self, x: dict[Hashable, Any]) -> np.ndarray:
        """x -> [A] float64 in the fixed order: missing features 0, unknown ones ignored."""
        keys = list(x)
        if keys != self._keys:  # a new key order: recompute where each key goes (cached for the next dict)
            pos = np.array([self._index.get(k, -1) for k in keys], np.int64)
            self._keys, self._known = keys, pos >= 0
            self._pos = pos[self._known]
        try:
            values = np.fromiter(x.values(), np.float64, len(keys))
        except (TypeError, ValueError) as exc:
            bad = {k: v for k, v in x.items() if not isinstance(v, int | float | np.number)}
            raise TypeError(
                f"VSMLClassifier needs numeric features; got {dict(list(bad.items())[:5])} "
                "(encode categories first, e.g. with river.preprocessing.OneHotEncoder)"
            ) from exc
        out = np.zeros(len(self._feature_list))
        out[self._pos] = values[self._known]
        return out

    def _label(self, y: Hashable) -> int:
        i = self._labels.get(y)
        if i is not None:
            return i
        if self.classes is not None:
            raise ValueError(f"label {y!r} is not among classes={list(self.classes)!r}")
        if len(self._names) >= int(self.n_classes):
            raise ValueError(
                f"label {y!r} is class number {len(self._names) + 1}, but VSMLClassifier(n_classes="
                f"{self.n_classes}) learns at most {self.n_classes}: pass a larger n_classes or classes=[...]"
            )
        self._labels[y] = len(self._names)
        self._names.append(y)
        return self._labels[y]

    # -- River's interface ---------------------------------------------------

    def learn_one(self, x: dict[Hashable, Any], y: Hashable) -> None:
        """Learn from one labelled example (one ``Learner.learn`` step)."""
        learner = self.learner if self.learner is not None else self._build(x)
        vec = self._vector(x)
        learner.learn(vec, self._label(y))

    def predict_proba_one(self, x: dict[Hashable, Any], **kwargs: Any) -> dict[Hashable, float]:
        """{label: probability} over the labels seen so far, from the current state (no learning)."""
        if not self._names:
            return {}
        learner = self.learner if self.learner is not None else self._build(x)
        logits = learner.predict(self._vector(x), return_logits=True)[1][: len(self._names)]
        z = np.exp(logits.astype(np.float64) - logits.max())
        z /= z.sum()
        return dict(zip(self._names, z.tolist(), strict=True))

    @classmethod
    def _unit_test_params(cls) -> Any:
        yield {"n_classes": 8}  # River's checks include a 7-class stream
