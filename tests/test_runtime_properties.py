"""Property-based tests (Hypothesis) of the runtime's input contract and file readers.

Every generated case either works as documented or raises the documented
exception, and then changes nothing:

* ``learn`` / ``predict`` / ``learn_stream`` / pool calls with random shapes,
  dtypes, values, labels and learner indices: valid per an independent
  oracle -> works (finite logits, steps counted); invalid -> ``TypeError``
  or ``ValueError`` with the state bit-identical;
* random truncations and bit flips of state files (``Learner.load``) and of
  both model files (``Learner(...)``), and random damage to a
  ``state_dict``: loads, or raises ``FormatError``; files and the learner's
  state untouched.

Example counts are modest (the fast suite runs on 2 cores); set
``VSML_HYPOTHESIS_EXAMPLES`` to scale them and draw fresh random cases
(e.g. 3000 for a long run); by default the cases are derandomised (the same
in every run).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.crafted import export_tiny
from vsml_runtime import FormatError, Learner, LearnerPool
from vsml_runtime import format as fmt

A, B, P = 5, 3, 3
N_EXAMPLES = int(os.environ.get("VSML_HYPOTHESIS_EXAMPLES", "100"))
DERANDOMIZE = "VSML_HYPOTHESIS_EXAMPLES" not in os.environ  # fixed cases in CI; fresh ones in a long run


def _settings(scale: float = 1.0) -> settings:
    return settings(
        max_examples=max(5, int(N_EXAMPLES * scale)),
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
        derandomize=DERANDOMIZE,
        database=None,
    )


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_tiny(tmp_path_factory.mktemp("prop"))


def _snapshot(learner: Learner | LearnerPool) -> dict[str, np.ndarray]:
    return {k: v for k, v in learner.state_dict().items() if k != "meta"}


def _same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------------
# strategies and the oracle

DTYPES = ["float16", "float32", "float64", "int8", "int32", "int64", "uint8", "uint64", "bool", "complex64", "U2", "O"]
VALUES = st.one_of(
    st.floats(-10, 10),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, 1e300, -1e300, 3e38, 1e19, -1e200, 65504.0, 70000.0]),
    st.integers(-300, 300),
)


@st.composite
def arrays(draw: st.DrawFn, good_shape: tuple[int, ...]) -> np.ndarray | Any:
    """Mostly arrays of the right shape, sometimes wrong shapes, dtypes, values or plain Python objects."""
    shape = draw(
        st.one_of(
            st.just(good_shape),
            st.just(good_shape),
            st.lists(st.integers(0, 7), min_size=0, max_size=3).map(tuple),
        )
    )
    dtype = draw(st.sampled_from(["float64", "float64", "float32", *DTYPES]))
    n = int(np.prod(shape)) if shape else 1
    vals = draw(st.lists(VALUES, min_size=n, max_size=n))
    if draw(st.integers(0, 20)) == 0:
        return draw(st.sampled_from([None, "abc", [[1, 2], [3]], {"x": 1}]))
    with np.errstate(all="ignore"):
        try:
            return np.array(vals, dtype=object).astype(dtype).reshape(shape)
        except (ValueError, TypeError, OverflowError):
            return np.zeros(shape)


LABEL = st.one_of(
    st.integers(-1, B - 1),
    st.integers(-5, B + 3),
    st.sampled_from([np.uint64(2**64 - 1), np.int8(-1), np.uint8(1), 1.0, True, None, "1", 2**70]),
)


@st.composite
def labels(draw: st.DrawFn, good_shape: tuple[int, ...]) -> Any:
    if good_shape == ():
        return draw(LABEL)
    if draw(st.integers(0, 9)) == 0:
        return draw(LABEL)  # a scalar where an array is due
    shape = draw(st.one_of(st.just(good_shape), st.lists(st.integers(0, 4), max_size=2).map(tuple)))
    dtype = draw(st.sampled_from(["int64", "int64", "int32", "uint8", "uint64", "float64", "bool"]))
    n = int(np.prod(shape)) if shape else 1
    vals = draw(st.lists(st.integers(-2, B + 1), min_size=n, max_size=n))
    with np.errstate(all="ignore"):
        return np.array(vals).astype(dtype).reshape(shape)


def valid_x(x: Any, shape: tuple[int, ...]) -> bool:
    if not isinstance(x, np.ndarray):
        return False
    return x.dtype.kind in "fiu" and x.shape == shape and bool(np.isfinite(x.astype(np.float64)).all())


def valid_y(y: Any, shape: tuple[int, ...]) -> bool:
    if shape == () and isinstance(y, int | np.integer) and not isinstance(y, bool | np.bool_):
        return -1 <= int(y) < B
    if y is None or isinstance(y, bool | str | float):
        return False
    arr = np.asarray(y)
    if arr.dtype.kind not in "iu" or arr.shape != shape:
        return False
    vals = [int(v) for v in arr.ravel()]
    return all(-1 <= v < B for v in vals)


def _call(fn: Any, valid: bool, before: dict[str, np.ndarray], after: Any) -> Any:
    """Run ``fn``: it must succeed when ``valid``, else raise TypeError / ValueError leaving ``before``."""
    try:
        out = fn()
    except (TypeError, ValueError) as exc:
        assert not valid, f"valid input rejected: {exc}"
        assert _same(before, after()), "a rejected call changed the state"
        return None
    assert valid, "invalid input accepted"
    return out


# ---------------------------------------------------------------------------
# the input contract


@pytest.fixture(scope="module")
def learners(model: Path) -> dict[str, Any]:
    return {
        "single": Learner(model, A, B, standardize="online"),
        "scalar": Learner(model, A, B, standardize="online-scalar"),
        "batch": Learner(model, A, B, examples_per_step=2),
        "pool": LearnerPool(model, P, A, B, standardize="online"),
    }


@_settings()
@given(data=st.data())
def test_learn_and_predict_follow_the_contract(learners: dict[str, Any], data: st.DataObject) -> None:
    learner = learners[data.draw(st.sampled_from(["single", "scalar", "batch"]))]
    e = learner.examples_per_step
    shape = (A,) if e == 1 else (e, A)
    x = data.draw(arrays(shape))
    y = data.draw(labels(() if e == 1 else (e,)))
    before, steps = _snapshot(learner), learner.steps
    ok = valid_x(x, shape) and valid_y(y, () if e == 1 else (e,))
    out = _call(lambda: learner.learn(x, y, return_logits=True), ok, before, lambda: _snapshot(learner))
    if out is not None:
        assert learner.steps == steps + 1 and np.isfinite(out[1]).all()
        assert all(np.isfinite(v).all() for v in _snapshot(learner).values())
    before = _snapshot(learner)
    n = data.draw(st.integers(1, 4))
    xp = data.draw(arrays(shape if e > 1 or data.draw(st.booleans()) else (n, A)))
    good = valid_x(xp, shape) or (e == 1 and isinstance(xp, np.ndarray) and xp.ndim == 2 and valid_x(xp, (len(xp), A)))
    good = good and not (isinstance(xp, np.ndarray) and xp.ndim == 2 and e == 1 and len(xp) == 0)
    out = _call(lambda: learner.predict(xp, return_logits=True), good, before, lambda: _snapshot(learner))
    assert _same(before, _snapshot(learner))  # predict never changes the state
    if out is not None:
        assert np.isfinite(out[1]).all()


@_settings(0.5)
@given(data=st.data())
def test_learn_stream_validates_everything_first(learners: dict[str, Any], data: st.DataObject) -> None:
    learner = learners["single"]
    t = data.draw(st.integers(0, 4))
    xs = data.draw(arrays((t, A)))
    ys = data.draw(labels((t,)))
    before, steps = _snapshot(learner), learner.steps
    ok = valid_x(xs, (t, A)) and isinstance(ys, np.ndarray) and valid_y(ys, (t,))
    out = _call(lambda: learner.learn_stream(xs, ys), ok, before, lambda: _snapshot(learner))
    if out is not None:
        assert learner.steps == steps + t and out.shape == (t,)


ROWS = st.one_of(
    st.none(),
    st.lists(st.integers(-1, P), min_size=0, max_size=P + 1).map(lambda v: np.array(v, np.int64)),
    st.sampled_from([[True, False], [0.0, 1.0], "0", [[0, 1]], np.array([1], np.uint8), 1]),
)


def valid_rows(rows: Any) -> int | None:
    """The number of learners a ``learners=`` argument selects, or None if it is invalid."""
    if rows is None:
        return P
    arr = np.asarray(rows)
    if arr.dtype.kind not in "iu" or arr.ndim != 1 or arr.size == 0:
        return None
    vals = arr.astype(np.int64)
    if vals.min() < 0 or vals.max() >= P or len(set(vals.tolist())) != len(vals):
        return None
    return len(vals)


@_settings()
@given(data=st.data())
def test_pool_calls_follow_the_contract(learners: dict[str, Any], data: st.DataObject) -> None:
    pool = learners["pool"]
    rows = data.draw(ROWS)
    p = valid_rows(rows)
    k = p if p is not None else 2
    x = data.draw(arrays((k, A)))
    y = data.draw(labels((k,)))
    before, steps = _snapshot(pool), pool.steps
    ok = p is not None and valid_x(x, (k, A)) and valid_y(y, (k,)) and not np.isscalar(y)
    out = _call(lambda: pool.learn(x, y, learners=rows, return_logits=True), ok, before, lambda: _snapshot(pool))
    if out is not None:
        idx = np.arange(P) if rows is None else np.asarray(rows)
        assert (pool.steps[idx] == steps[idx] + 1).all() and np.isfinite(out[1]).all()
        others = np.setdiff1d(np.arange(P), idx)
        assert (pool.steps[others] == steps[others]).all()
    before = _snapshot(pool)
    ok = p is not None and valid_x(x, (k, A))
    _call(lambda: pool.predict(x, learners=rows), ok, before, lambda: _snapshot(pool))
    assert _same(before, _snapshot(pool))


# ---------------------------------------------------------------------------
# the file readers


@pytest.fixture(scope="module")
def saved(model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("prop-files")
    learner = Learner(model, A, B, standardize="online", seed=3)
    rng = np.random.default_rng(0)
    learner.learn_stream(rng.standard_normal((6, A)), rng.integers(0, B, 6))
    learner.save(folder / "user.npz")
    pool = LearnerPool(model, P, A, B)
    pool.save(folder / "pool.npz")
    return {"folder": folder, "learner": learner, "state": _snapshot(learner)}


def _damage(data: bytes, draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["truncate", "flip", "flip", "flips", "splice"]))
    if kind == "truncate":
        return data[: draw(st.integers(0, len(data) - 1))]
    buf = bytearray(data)
    if kind == "splice":
        at = draw(st.integers(0, len(data) - 1))
        junk = draw(st.binary(min_size=1, max_size=16))
        return bytes(buf[:at] + junk + buf[at + len(junk) :])
    for _ in range(1 if kind == "flip" else draw(st.integers(2, 8))):
        buf[draw(st.integers(0, len(buf) - 1))] ^= 1 << draw(st.integers(0, 7))
    return bytes(buf)


@_settings(2)
@given(data=st.data())
def test_damaged_state_files_load_or_raise_format_error(saved: dict[str, Any], data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(["user.npz", "pool.npz"]))
    original = (saved["folder"] / name).read_bytes()
    damaged = _damage(original, data.draw)
    path = saved["folder"] / f"damaged-{name}"
    path.write_bytes(damaged)
    cls = Learner if name == "user.npz" else LearnerPool
    try:
        loaded = cls.load(path)
    except FormatError:
        loaded = None
    assert path.read_bytes() == damaged and (saved["folder"] / name).read_bytes() == original
    if loaded is not None:  # a flip nobody reads (zip padding, a meta detail): a valid learner anyway
        assert all(np.isfinite(v).all() for v in _snapshot(loaded).values() if v.dtype.kind == "f")


@_settings(0.5)
@given(data=st.data())
def test_damaged_model_files_load_or_raise_format_error(model: Path, tmp_path_factory, data: st.DataObject) -> None:
    folder = tmp_path_factory.mktemp("prop-model", numbered=True)
    step, init = folder / "m.onnx", folder / "m.init.onnx"
    shutil.copyfile(model, step)
    shutil.copyfile(fmt.init_path_for(model), init)
    which = data.draw(st.sampled_from([step, init]))
    original = which.read_bytes()
    damaged = _damage(original, data.draw)
    which.write_bytes(damaged)
    try:
        learner = Learner(step, A, B)
        assert np.isfinite(learner.learn(np.ones(A), 0, return_logits=True)[1]).all()
    except FormatError:
        pass
    assert which.read_bytes() == damaged
    shutil.rmtree(folder)


@_settings()
@given(data=st.data())
def test_damaged_state_dicts_are_refused_and_change_nothing(saved: dict[str, Any], data: st.DataObject) -> None:
    learner: Learner = saved["learner"]
    d = learner.state_dict()
    key = data.draw(st.sampled_from(sorted(d)))
    how = data.draw(st.sampled_from(["nan", "shape", "dtype", "drop", "negative", "string", "meta"]))
    v = d[key]
    if how == "nan" and v.dtype.kind == "f" and v.size:
        v = v.copy()
        v.flat[data.draw(st.integers(0, v.size - 1))] = np.nan
    elif how == "shape":
        v = np.concatenate([v.reshape(-1), v.reshape(-1)[:1]]) if v.size else np.zeros(3)
    elif how == "dtype":
        v = v.astype(np.complex64) if v.dtype.kind != "U" else np.array(b"x")
    elif how == "negative" and v.dtype.kind in "iuf":
        v = -np.abs(v) - 1
    elif how == "string":
        v = np.array("oops")
    elif how == "meta":
        key, v = "meta", np.array(data.draw(st.sampled_from(["{}", "[]", "null", "{bad", '{"format": 1}'])))
    if how == "drop":
        del d[key]
    else:
        d[key] = v
    original = learner.state_dict()
    before = _snapshot(learner)
    try:
        learner.load_state_dict(d)
    except FormatError:
        assert _same(before, _snapshot(learner))
        return
    # accepted: still a valid state (e.g. negated LSTM state or standardiser mean); restore the original
    assert all(np.isfinite(v).all() for v in _snapshot(learner).values() if v.dtype.kind == "f")
    assert (learner.state_dict()["steps"] >= 0).all() and (learner.state_dict()["standardizer.m2"] >= 0).all()
    learner.load_state_dict(original)
