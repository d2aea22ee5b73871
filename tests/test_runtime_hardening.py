"""Issue 11, inputs and resources: regression tests for the standardiser, predict, sizes, init range,
labels, seeds and threads (the file attacks are in ``test_runtime_hardening_files``)."""

from __future__ import annotations

import json
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

import vsml_runtime
from tests.crafted import edited_copy, export_tiny, meta_of, set_meta
from vsml_runtime import FormatError, Learner, LearnerPool, base, engine, limits
from vsml_runtime import format as fmt

A, B = 6, 3


@pytest.fixture(scope="module")
def onnx_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_tiny(tmp_path_factory.mktemp("hard"))


def _state(learner: Learner | LearnerPool) -> dict[str, np.ndarray]:
    return {k: v for k, v in learner.state_dict().items() if k != "meta"}


def _same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_format_error_is_the_documented_value_error() -> None:
    assert vsml_runtime.FormatError is fmt.FormatError and issubclass(FormatError, ValueError)
    assert "FormatError" in (vsml_runtime.__doc__ or "") and "FormatError" in (vsml_runtime.learner.__doc__ or "")


# -- 1. online standardiser -----------------------------------------------------------


@pytest.mark.parametrize("mode", ["online", "online-scalar"])
@pytest.mark.parametrize(
    "x",
    [np.full(A, 1e200), np.full(A, 1e19, np.float32), np.full(A, np.finfo(np.float64).max), np.full(A, -3e38)],
    ids=["1e200", "f32-1e19", "f64-max", "-3e38"],
)
def test_huge_finite_inputs_never_poison_the_standardiser(onnx_path: Path, tmp_path: Path, mode: str, x) -> None:
    learner = Learner(onnx_path, A, B, standardize=mode)
    with np.errstate(all="raise"):  # no overflow anywhere on the way
        for sign in (1, -1, 1):
            logits = learner.learn(sign * x, 1, return_logits=True)[1]
            assert np.isfinite(logits).all()
    assert np.isfinite(learner.learn(np.ones(A), 0, return_logits=True)[1]).all()
    assert all(np.isfinite(v).all() for v in _state(learner).values())
    learner.save(tmp_path / "s.npz")
    assert _same(_state(Learner.load(tmp_path / "s.npz")), _state(learner))  # its own file loads


def test_ordinary_inputs_standardise_as_before(onnx_path: Path) -> None:
    """The clip at RAW_LIMIT changes nothing for inputs below it (same numbers as float64 Chan updates)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((30, A)).astype(np.float32) * 1e5 + 3e5
    learner = Learner(onnx_path, A, B, standardize="online")
    learner.learn_stream(x, rng.integers(0, B, 30))
    sd = learner.state_dict()
    np.testing.assert_allclose(sd["standardizer.mean"][0], x.astype(np.float64).mean(0), rtol=1e-12)
    np.testing.assert_allclose(sd["standardizer.m2"][0] / 30, x.astype(np.float64).var(0), rtol=1e-9)


# -- 2. predict(x[n, A]) --------------------------------------------------------------


@pytest.mark.parametrize("rows_per_call", [1, 5, None], ids=["row-by-row", "chunks-of-5", "default"])
def test_predict_many_rows_in_bounded_tiles(onnx_path: Path, monkeypatch: pytest.MonkeyPatch, rows_per_call) -> None:
    learner = Learner(onnx_path, A, B, standardize="online")
    per_row = 4 * learner._engine.state_numbers
    tile_bytes = (
        base.PREDICT_TILE_BYTES if rows_per_call is None else per_row * (1 + limits.WORKING_FACTOR) * rows_per_call
    )
    monkeypatch.setattr(base, "PREDICT_TILE_BYTES", tile_bytes)
    monkeypatch.setattr(base, "PREDICT_TILE_ROW_BYTES", 1 << 30)
    rng = np.random.default_rng(1)
    learner.learn_stream(rng.standard_normal((5, A)), rng.integers(0, B, 5))
    x = rng.standard_normal((37, A))
    biggest: list[int] = []
    run = learner._engine.run_explicit

    def spy(state, x32, y):  # the tiled state handed to ONNX Runtime per call
        biggest.append(sum(v.nbytes for v in state.values()))
        return run(state, x32, y)

    monkeypatch.setattr(learner._engine, "run_explicit", spy)
    before = _state(learner)
    preds, logits = learner.predict(x, return_logits=True)
    assert _same(before, _state(learner)) and preds.shape == (37,) and logits.shape == (37, B)
    if rows_per_call == 1:
        assert not biggest  # one row at a time through the bound buffers: no state copies at all
    else:
        assert biggest and max(biggest) <= tile_bytes // (1 + limits.WORKING_FACTOR)
    if rows_per_call == 5:
        assert len(biggest) == 8  # ceil(37 / 5) calls
    singles = np.stack([learner.predict(row, return_logits=True)[1] for row in x])
    np.testing.assert_allclose(logits, singles, rtol=1e-5, atol=1e-6)


def test_predict_thousands_of_rows_costs_linear_time_and_no_state_copies(monkeypatch: pytest.MonkeyPatch) -> None:
    learner = Learner.pretrained(784, 10)
    monkeypatch.setattr(base, "PREDICT_TILE_BYTES", 1)  # force the row-by-row path of big learners
    x = np.zeros((200, 784), np.float32)
    t0 = time.perf_counter()
    learner.predict(x[:20])
    t_small = time.perf_counter() - t0
    tracemalloc.start()
    t0 = time.perf_counter()
    learner.predict(x)
    t_big = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 4 << 20  # numpy allocations: not a copy of the 2 MiB state per row
    assert t_big < 30 * t_small + 1.0  # linear, with room for a noisy shared machine


# -- 4. sizes and memory ----------------------------------------------------------------


def test_sizes_beyond_the_memory_limit_are_refused_up_front(onnx_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="memory limit"):
        Learner(onnx_path, 10**6, 10)
    with pytest.raises(ValueError, match="memory limit"):
        LearnerPool(onnx_path, 1000, 784, 10, memory_limit=64 << 20)
    assert time.perf_counter() - t0 < 5  # refused before anything was allocated
    with pytest.raises(ValueError, match="memory_limit"):
        Learner(onnx_path, A, B, memory_limit=1000)
    Learner(onnx_path, A, B, memory_limit=1 << 30)
    monkeypatch.setenv(limits.ENV_MEMORY_LIMIT, "1K")
    with pytest.raises(ValueError, match="VSML_MEMORY_LIMIT"):
        Learner(onnx_path, A, B)
    Learner(onnx_path, A, B, memory_limit=1 << 30)  # the argument beats the environment
    monkeypatch.setenv(limits.ENV_MEMORY_LIMIT, "lots")
    with pytest.raises(ValueError, match="VSML_MEMORY_LIMIT"):
        Learner(onnx_path, A, B)
    assert limits.parse_bytes("8G") == 8 << 30 and limits.parse_bytes("512MiB") == 512 << 20
    for bad in (0, -1, 1.5, True, "1G"):
        with pytest.raises(ValueError, match="memory_limit"):
            Learner(onnx_path, A, B, memory_limit=bad)


def test_state_file_claiming_huge_sizes_is_refused_before_building(onnx_path: Path, tmp_path: Path) -> None:
    learner = Learner(onnx_path, A, B)
    d = learner.state_dict()
    meta = json.loads(str(d["meta"]))
    meta["n_features"] = 10**6
    d["meta"] = np.array(json.dumps(meta))
    np.savez(tmp_path / "liar.npz", **d)
    assert (tmp_path / "liar.npz").stat().st_size < 64 << 10
    tracemalloc.start()
    with pytest.raises(FormatError, match=r"entries|declares"):
        Learner.load(tmp_path / "liar.npz")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 8 << 20


def test_zip_bomb_state_is_not_inflated(onnx_path: Path, tmp_path: Path) -> None:
    import zipfile

    learner = Learner(onnx_path, A, B)
    learner.save(tmp_path / "s.npz")
    bomb = tmp_path / "bomb.npz"
    with zipfile.ZipFile(tmp_path / "s.npz") as src, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == "state.h_0.npy":
                data = data + bytes(200 << 20)  # 200 MiB of zeros: a few hundred KiB deflated
            dst.writestr(info.filename, data)
    assert bomb.stat().st_size < 2 << 20
    tracemalloc.start()
    with pytest.raises(FormatError, match="declares"):
        Learner.load(bomb)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 16 << 20


# -- 6. init range ---------------------------------------------------------------------


@pytest.mark.parametrize("low, high", [(2.0, -2.0), (2.0, 2.0), (5.0, 5.0001), (-2.0, float("inf")), (8.0, 9.0)])
def test_crafted_init_range_is_refused_not_hung(onnx_path: Path, tmp_path: Path, low: float, high: float) -> None:
    def edit(graph) -> None:
        spec = json.loads(meta_of(graph)[fmt.K_INIT])
        spec["low"], spec["high"] = low, high
        set_meta(graph, fmt.K_INIT, json.dumps(spec))

    crafted = edited_copy(onnx_path, tmp_path / "crafted.onnx", edit)
    t0 = time.perf_counter()
    with pytest.raises(FormatError, match="init noise range"):
        Learner(crafted, A, B)
    assert time.perf_counter() - t0 < 5


def test_truncated_normal_sampler_is_bounded() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(FormatError):
        engine.truncated_normal(rng, (1000,), 1.0, -1.0)
    t0 = time.perf_counter()
    with pytest.raises(FormatError, match="too narrow"):
        engine.truncated_normal(rng, (1000,), 6.0, 6.0 + 1e-9)
    assert time.perf_counter() - t0 < 5
    z = engine.truncated_normal(rng, (10_000,), -2.0, 2.0)
    assert np.abs(z).max() <= 2.0


# -- 9. labels and seeds -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("y", "error", "match"),
    [
        (np.uint64(2**64 - 1), ValueError, "labels"),
        (np.uint8(200), ValueError, "labels"),
        (None, TypeError, "y"),
        (True, TypeError, "labels"),
        (1.0, TypeError, "labels"),
        (np.array([1]), ValueError, "shape"),
    ],
    ids=["uint64-max", "uint8-200", "None", "bool", "float", "array"],
)
def test_bad_labels_are_rejected(onnx_path: Path, y, error: type, match: str) -> None:
    learner = Learner(onnx_path, A, B)
    pool = LearnerPool(onnx_path, 2, A, B)
    before, pool_before = _state(learner), _state(pool)
    with pytest.raises(error, match=match):
        learner.learn(np.ones(A), y)
    scalar = y is None or np.ndim(y) == 0
    with pytest.raises(error):
        pool.learn(np.ones((2, A)), None if y is None else ([y, y] if scalar else np.ones((2, 1), np.int64)))
    with pytest.raises(error):
        learner.learn_stream(
            np.ones((1, A)), None if y is None else (np.array([y]) if scalar else np.ones((1, 1), np.int64))
        )
    assert _same(before, _state(learner)) and _same(pool_before, _state(pool))
    assert isinstance(learner.learn(np.ones(A), np.uint64(2)), int)  # unsigned labels in range are fine


@pytest.mark.parametrize(
    ("seed", "error"),
    [(1.9, TypeError), ("3", TypeError), (True, TypeError), (None, TypeError), (2**64, ValueError), (-1, ValueError)],
)
def test_bad_seeds_are_rejected_naming_the_argument(onnx_path: Path, seed, error: type) -> None:
    with pytest.raises(error, match="seed"):
        Learner(onnx_path, A, B, seed=seed)
    with pytest.raises(error, match="seed"):
        LearnerPool(onnx_path, 2, A, B, seed=seed)
    learner = Learner(onnx_path, A, B, seed=4)
    before = _state(learner)
    if seed is not None:  # reset(seed=None): back to the constructor's seed
        with pytest.raises(error, match="seed"):
            learner.reset(seed=seed)
    pool = LearnerPool(onnx_path, 2, A, B)
    with pytest.raises(error, match="seed"):
        pool.reset(seeds=[0, seed])
    assert _same(before, _state(learner))
    with pytest.raises(ValueError, match="seed"):
        LearnerPool(onnx_path, 3, A, B, seed=2**63 - 2)  # seed + i overflows
    assert Learner(onnx_path, A, B, seed=np.int32(3)).state_dict()["seeds"][0] == 3


# -- 11. threads --------------------------------------------------------------------------


@pytest.mark.parametrize("threads", [0, -1, 4096, limits.max_threads() + 1, 1.5, True, "2"])
def test_threads_are_bounded(onnx_path: Path, threads) -> None:
    with pytest.raises(ValueError, match="threads"):
        Learner(onnx_path, A, B, threads=threads)
    with pytest.raises(ValueError, match="threads"):
        LearnerPool(onnx_path, 2, A, B, threads=threads)


def test_threads_within_the_bound_work(onnx_path: Path) -> None:
    assert limits.max_threads() >= limits.MAX_THREADS
    learner = Learner(onnx_path, A, B, threads=np.int64(2))
    assert learner.learn(np.ones(A), 0) in range(B)


def test_pool_subsets_run_in_chunks_like_the_whole_pool(onnx_path: Path) -> None:
    """learners=[...] steps at most ``chunk`` learners per ONNX Runtime call (bounded working memory)."""
    rng = np.random.default_rng(5)
    x, y = rng.standard_normal((4, A)), rng.integers(0, B, 4)
    one = LearnerPool(onnx_path, 5, A, B, chunk=1)
    whole = LearnerPool(onnx_path, 5, A, B, chunk=5)
    calls: list[int] = []
    run = one._engine.run_explicit
    one._engine.run_explicit = lambda s, xx, yy: (calls.append(len(xx)), run(s, xx, yy))[1]  # type: ignore[method-assign]
    a = one.learn(x, y, learners=[4, 0, 2, 1], return_logits=True)[1]
    b = whole.learn(x, y, learners=[4, 0, 2, 1], return_logits=True)[1]
    assert calls == [1, 1, 1, 1]
    np.testing.assert_allclose(a, b, atol=1e-6)
    np.testing.assert_allclose(_state(one)["state.c_0"], _state(whole)["state.c_0"], atol=1e-6)
    assert one.steps.tolist() == [1, 1, 1, 0, 1]
