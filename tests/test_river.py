"""vsml_runtime.river.VSMLClassifier: River's own estimator checks, progressive validation on a real stream."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest

river = pytest.importorskip("river")

from river import checks, datasets, evaluate, linear_model, metrics, preprocessing  # noqa: E402

from vsml_runtime import Learner  # noqa: E402
from vsml_runtime.river import VSMLClassifier  # noqa: E402

# seen when written (River 0.26.1): VSML 85.8%, River's LogisticRegression 89.3%; majority class 56%
PHISHING_BOUND = 0.80


def _river_checks() -> list[object]:
    model = VSMLClassifier(**next(iter(VSMLClassifier._unit_test_params())))
    return list(checks.yield_checks(model))


@pytest.mark.parametrize("check", _river_checks(), ids=lambda c: c.__name__)
def test_river_estimator_checks(check) -> None:  # type: ignore[no-untyped-def]
    check(VSMLClassifier(**next(iter(VSMLClassifier._unit_test_params()))))


def test_progressive_val_score_on_phishing_next_to_logistic_regression() -> None:
    # Phishing ships inside the river package (1,250 examples, 9 numeric features): offline
    vsml = evaluate.progressive_val_score(
        datasets.Phishing(), preprocessing.StandardScaler() | VSMLClassifier(), metrics.Accuracy()
    )
    logreg = evaluate.progressive_val_score(
        datasets.Phishing(), preprocessing.StandardScaler() | linear_model.LogisticRegression(), metrics.Accuracy()
    )
    print(f"progressive accuracy on Phishing: VSML {vsml.get():.4f}, LogisticRegression {logreg.get():.4f}")
    assert vsml.get() > PHISHING_BOUND
    assert logreg.get() > 0.85  # the stream and the protocol are the usual ones


def test_dict_features_map_to_the_learner_in_a_fixed_order() -> None:
    clf = VSMLClassifier(n_classes=3, seed=2)
    assert clf.predict_proba_one({"b": 1.0, "a": 2.0}) == {} and clf.predict_one({"a": 1.0}) is None
    stream = [({"b": 1.0, "a": 2.0}, "x"), ({"a": -1.0, "b": 0.5}, "y"), ({"a": 0.3, "b": -2.0, "c": 9.0}, "z")]
    plain = Learner.pretrained(2, 3, seed=2, device="cpu")
    for x, y in stream:
        clf.learn_one(x, y)
        plain.learn(np.array([x["a"], x["b"]]), "xyz".index(y))  # sorted keys; "c" came later: ignored
    assert clf.feature_names == ["a", "b"]
    proba = clf.predict_proba_one({"b": 0.5})  # "a" missing: 0
    assert np.allclose(list(proba.values()), plain.predict_proba(np.array([0.0, 0.5])))
    assert list(proba) == ["x", "y", "z"] and np.isclose(sum(proba.values()), 1.0)
    assert clf.predict_one({"b": 0.5}) == max(proba, key=proba.get)


def test_classes_and_values_errors_name_the_fix() -> None:
    clf = VSMLClassifier(n_classes=2)
    clf.learn_one({"a": 1.0}, "x")
    clf.learn_one({"a": 2.0}, "y")
    with pytest.raises(ValueError, match="pass a larger n_classes"):
        clf.learn_one({"a": 3.0}, "z")
    with pytest.raises(ValueError, match="not among classes"):
        VSMLClassifier(classes=[True, False]).learn_one({"a": 1.0}, "maybe")
    with pytest.raises(TypeError, match="OneHotEncoder"):
        clf.learn_one({"a": "red"}, "x")


def test_pickle_deepcopy_and_clone() -> None:
    model = preprocessing.StandardScaler() | VSMLClassifier(seed=1)
    for x, y in datasets.Phishing().take(50):
        model.learn_one(x, y)
    x_new, _ = next(iter(datasets.Phishing()))
    for other in (pickle.loads(pickle.dumps(model)), copy.deepcopy(model)):
        assert other.predict_proba_one(x_new) == model.predict_proba_one(x_new)
    fresh = model.clone()
    assert fresh["VSMLClassifier"].learner is None and fresh["VSMLClassifier"].seed == 1
