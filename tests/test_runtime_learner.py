"""vsml_runtime.Learner / LearnerPool: API, input checks, persistence, pools, devices, threads."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from vsml_export.exporter import ExportOptions, export_model
from vsml_runtime import Learner, LearnerPool
from vsml_runtime import format as fmt
from vsml_train.model.config import VSMLConfig
from vsml_train.model.model_file import ModelFile, save_model
from vsml_train.model.params import init_params

A, B = 6, 3


def export_tmp(folder: Path, config: VSMLConfig, seed: int = 0, name: str = "model") -> Path:
    """model.pt with random V_M exported to folder/name.onnx (no verification: the parity tests do that)."""
    save_model(folder / f"{name}.pt", ModelFile(config, init_params(config, seed), {}))
    return export_model(folder / f"{name}.pt", folder / f"{name}.onnx", ExportOptions(verify=False)).step_path


@pytest.fixture(scope="module")
def onnx_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_tmp(tmp_path_factory.mktemp("rt"), VSMLConfig())


@pytest.fixture(scope="module")
def other_onnx_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_tmp(tmp_path_factory.mktemp("rt2"), VSMLConfig(), seed=1)


def _stream(n: int, seed: int = 0, a: int = A, b: int = B) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, a)), rng.integers(0, b, n)


def _state(learner: Learner | LearnerPool) -> dict[str, np.ndarray]:
    return {k: v for k, v in learner.state_dict().items() if k != "meta"}


def _same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_learn_returns_prediction_before_label(onnx_path: Path) -> None:
    learner = Learner(onnx_path, A, B, device="cpu")
    assert learner.device == "cpu" and learner.providers == ["CPUExecutionProvider"]
    x, y = _stream(5)
    pred_from_predict = learner.predict(x[0])
    pred = learner.learn(x[0], int(y[0]))
    assert isinstance(pred, int) and pred == pred_from_predict
    first = pred
    pred, logits = learner.learn(x[1], y[1], return_logits=True)
    assert logits.shape == (B,) and logits.dtype == np.float32 and pred == int(np.argmax(logits))
    assert learner.steps == 2
    # the label changes the state, never the prediction of its own step
    twin = Learner(onnx_path, A, B, device="cpu")
    assert twin.learn(x[0], (int(y[0]) + 1) % B) == first
    preds = learner.learn_stream(x, y)
    assert preds.shape == (5,) and preds.dtype == np.int64 and learner.steps == 7


def test_predict_does_not_change_state(onnx_path: Path) -> None:
    learner = Learner(onnx_path, A, B)
    x, y = _stream(10)
    learner.learn_stream(x, y)
    before = _state(learner)
    p1, l1 = learner.predict(x[3], return_logits=True)
    many = learner.predict(x)
    assert _same(before, _state(learner))
    p2, l2 = learner.predict(x[3], return_logits=True)
    assert p1 == p2 and np.array_equal(l1, l2)
    assert many.shape == (10,) and many[3] == p1


def test_same_seed_same_learner_and_reset(onnx_path: Path) -> None:
    a, b, c = (Learner(onnx_path, A, B, seed=s) for s in (7, 7, 8))
    assert _same(_state(a), _state(b)) and not _same(_state(a), _state(c))
    fresh = _state(a)
    x, y = _stream(20)
    assert np.array_equal(a.learn_stream(x, y), b.learn_stream(x, y))
    assert not _same(fresh, _state(a))
    a.reset()
    assert _same(fresh, _state(a)) and a.steps == 0
    a.reset(seed=8)
    c_fresh = _state(c)
    a_state = _state(a)
    assert all(np.array_equal(a_state[k], c_fresh[k]) for k in a_state if k.startswith("state."))


def test_learn_stream_equals_single_steps(onnx_path: Path) -> None:
    x, y = _stream(15, seed=2)
    a, b = Learner(onnx_path, A, B), Learner(onnx_path, A, B)
    pa, la = a.learn_stream(x, y, return_logits=True)
    lb = np.stack([b.learn(xi, int(yi), return_logits=True)[1] for xi, yi in zip(x, y, strict=True)])
    assert np.array_equal(la, lb) and np.array_equal(pa, lb.argmax(-1))


BAD_INPUTS = [
    ("x wrong length", lambda x, y: (x[:-1], y), ValueError),
    ("x 3-d", lambda x, y: (x[None, None], y), ValueError),
    ("x strings", lambda x, y: (np.array(["a"] * A), y), TypeError),
    ("x bool", lambda x, y: (x > 0, y), TypeError),
    ("x complex", lambda x, y: (x.astype(complex), y), TypeError),
    ("x object", lambda x, y: (np.array([None] * A), y), TypeError),
    ("x NaN", lambda x, y: (np.where(np.arange(A) == 2, np.nan, x), y), ValueError),
    ("x inf", lambda x, y: (np.where(np.arange(A) == 0, -np.inf, x), y), ValueError),
    ("y too big", lambda x, y: (x, B), ValueError),
    ("y below -1", lambda x, y: (x, -2), ValueError),
    ("y float", lambda x, y: (x, 1.0), TypeError),
    ("y string", lambda x, y: (x, "1"), TypeError),
    ("y array for one example", lambda x, y: (x, np.array([1, 2])), ValueError),
]


@pytest.mark.parametrize(("what", "make", "error"), BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_raises_and_keeps_state(onnx_path: Path, what: str, make, error: type) -> None:
    learner = Learner(onnx_path, A, B, standardize="online")
    x, y = _stream(5)
    learner.learn_stream(x, y)
    before = _state(learner)
    bx, by = make(x[0], int(y[0]))
    with pytest.raises(error):
        learner.learn(bx, by)
    if not what.startswith("y"):
        with pytest.raises(error):
            learner.predict(bx)
    with pytest.raises((TypeError, ValueError)):
        learner.learn_stream(np.vstack([x, x[:1] * np.nan]), np.append(y, 0))
    assert _same(before, _state(learner))
    assert learner.steps == 5


def test_huge_finite_inputs_are_clipped_not_rejected(onnx_path: Path) -> None:
    a, b = Learner(onnx_path, A, B), Learner(onnx_path, A, B)
    la = a.learn(np.full(A, 1e300), 0, return_logits=True)[1]  # beyond float32: clipped to +-1e6 first
    lb = b.learn(np.full(A, 1e6, dtype=np.float32), 0, return_logits=True)[1]
    assert np.array_equal(la, lb) and np.isfinite(la).all()


def test_no_label_is_allowed(onnx_path: Path) -> None:
    learner = Learner(onnx_path, A, B)
    x, _ = _stream(3)
    learner.learn(x[0], -1)
    assert learner.steps == 1


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n_features": 0},
        {"n_classes": 1},
        {"n_features": 2.5},
        {"n_classes": True},
        {"examples_per_step": 0},
        {"threads": 0},
        {"device": "tpu"},
        {"standardize": "sometimes"},
        {"standardize": (0.0, 0.0)},
        {"standardize": "model"},  # the model records no mean / std
        {"n_features": 200_000, "n_classes": 20_000},  # state would be far too large
    ],
)
def test_bad_sizes_and_options(onnx_path: Path, kwargs: dict) -> None:
    args = {"n_features": A, "n_classes": B} | kwargs
    with pytest.raises(ValueError):
        Learner(onnx_path, args.pop("n_features"), args.pop("n_classes"), **args)


def test_cuda_request_without_cuda_raises(onnx_path: Path) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("a CUDA build of ONNX Runtime is installed; covered by bench/gpu_check.sh")
    with pytest.raises(RuntimeError, match="CUDA is not usable"):
        Learner(onnx_path, A, B, device="cuda")
    assert Learner(onnx_path, A, B, device="auto").device == "cpu"


def test_bad_model_files(onnx_path: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="vsml-export"):
        Learner(tmp_path / "none.onnx", A, B)
    (tmp_path / "junk.onnx").write_bytes(b"not onnx")
    with pytest.raises(fmt.FormatError, match="not a readable ONNX model"):
        Learner(tmp_path / "junk.onnx", A, B)
    with pytest.raises(fmt.FormatError, match="init"):
        Learner(fmt.init_path_for(onnx_path), A, B)
    lone = tmp_path / "lone.onnx"
    lone.write_bytes(onnx_path.read_bytes())
    with pytest.raises(FileNotFoundError, match="init graph"):
        Learner(lone, A, B)
    (tmp_path / "lone.init.onnx").write_bytes(fmt.init_path_for(onnx_path).read_bytes() + b"")
    Learner(lone, A, B)  # the right init graph next to it: fine
    import onnx

    g = onnx.load(fmt.init_path_for(onnx_path))
    g.doc_string = "edited"
    onnx.save(g, tmp_path / "lone.init.onnx")
    with pytest.raises(fmt.FormatError, match="sha256"):
        Learner(lone, A, B)


def test_save_load_roundtrip(onnx_path: Path, tmp_path: Path) -> None:
    learner = Learner(onnx_path, A, B, seed=3, standardize="online")
    x, y = _stream(30)
    learner.learn_stream(x[:20], y[:20])
    learner.save(tmp_path / "user.npz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["user.npz"]  # no temp file left
    restored = Learner.load(tmp_path / "user.npz")
    assert restored.steps == 20 and _same(_state(learner), _state(restored))
    assert np.array_equal(learner.learn_stream(x[20:], y[20:]), restored.learn_stream(x[20:], y[20:]))
    restored.reset()
    fresh = Learner(onnx_path, A, B, seed=3, standardize="online")
    assert restored.steps == 0 and _same(_state(restored), _state(fresh))


def test_load_refuses_other_model_or_sizes(onnx_path: Path, other_onnx_path: Path, tmp_path: Path) -> None:
    learner = Learner(onnx_path, A, B)
    learner.save(tmp_path / "s.npz")
    with pytest.raises(ValueError, match="another model"):
        Learner.load(tmp_path / "s.npz", other_onnx_path)
    other = Learner(other_onnx_path, A, B)
    before = _state(other)
    with pytest.raises(ValueError, match="another model"):
        other.load_state_dict(learner.state_dict())
    assert _same(before, _state(other))
    wider = Learner(onnx_path, A + 1, B)
    with pytest.raises(ValueError, match="n_features"):
        wider.load_state_dict(learner.state_dict())
    d = learner.state_dict()
    d["state.c_0"] = d["state.c_0"] * np.nan
    with pytest.raises(ValueError, match="NaN"):
        learner.load_state_dict(d)
    d = learner.state_dict()
    d["state.h_0"] = d["state.h_0"][:, :, :-1]
    with pytest.raises(ValueError, match="h_0"):
        learner.load_state_dict(d)
    (tmp_path / "bad.npz").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a readable learner state"):
        Learner.load(tmp_path / "bad.npz", onnx_path)
    with pytest.raises(FileNotFoundError):
        learner.save(tmp_path / "missing" / "s.npz")


def test_examples_per_step(onnx_path: Path) -> None:
    learner = Learner(onnx_path, A, B, examples_per_step=4)
    x, y = _stream(8)
    preds = learner.learn(x[:4], y[:4])
    assert preds.shape == (4,)
    with pytest.raises(ValueError):
        learner.learn(x[0], int(y[0]))
    with pytest.raises(ValueError):
        learner.learn(x[:3], y[:3])
    assert learner.predict(x[4:]).shape == (4,)
    assert learner.learn_stream(x.reshape(2, 4, A), y.reshape(2, 4)).shape == (2, 4)


def test_pool_equals_individual_learners(onnx_path: Path) -> None:
    p, steps = 5, 12
    rng = np.random.default_rng(4)
    x = rng.standard_normal((steps, p, A))
    y = rng.integers(0, B, (steps, p))
    singles = [Learner(onnx_path, A, B, seed=10 + i) for i in range(p)]
    for chunk in (1, 2, None):
        pool = LearnerPool(onnx_path, p, A, B, seed=10, chunk=chunk)
        for t in range(steps):
            got, logits = pool.learn(x[t], y[t], return_logits=True)
            assert got.shape == (p,) and logits.shape == (p, B)
            if chunk == 1:
                want = np.array([singles[i].learn(x[t, i], int(y[t, i])) for i in range(p)])
                assert np.array_equal(got, want)
        assert pool.steps.tolist() == [steps] * p
        if chunk == 1:
            ref = _state(pool)
        else:
            np.testing.assert_allclose(_state(pool)["state.c_0"], ref["state.c_0"], rtol=0, atol=1e-6)


def test_pool_subset_of_learners(onnx_path: Path) -> None:
    pool = LearnerPool(onnx_path, 4, A, B, seed=0)
    single = Learner(onnx_path, A, B, seed=2)
    x, y = _stream(6)
    before = pool.state_dict()
    for t in range(3):
        got = pool.learn(x[2 * t : 2 * t + 2], y[2 * t : 2 * t + 2], learners=[2, 0])
        assert got[0] == single.learn(x[2 * t], int(y[2 * t]))
    after = pool.state_dict()
    assert pool.steps.tolist() == [3, 0, 3, 0]
    for k in before:
        if k.startswith("state."):
            assert np.array_equal(before[k][[1, 3]], after[k][[1, 3]])
            np.testing.assert_allclose(after[k][2], _state(single)[k][0], atol=1e-6)
    with pytest.raises(ValueError):
        pool.learn(x[:2], y[:2], learners=[1, 1])
    with pytest.raises(ValueError):
        pool.learn(x[:2], y[:2], learners=[0, 4])
    preds = pool.predict(x[:4])
    assert preds.shape == (4,) and pool.steps.tolist() == [3, 0, 3, 0]
    pool.reset(learners=[0])
    assert pool.steps.tolist() == [0, 0, 3, 0]


def test_pool_save_load(onnx_path: Path, tmp_path: Path) -> None:
    pool = LearnerPool(onnx_path, 3, A, B, examples_per_step=2, standardize="online-scalar")
    rng = np.random.default_rng(0)
    pool.learn(rng.standard_normal((3, 2, A)), rng.integers(0, B, (3, 2)))
    pool.save(tmp_path / "pool.npz")
    back = LearnerPool.load(tmp_path / "pool.npz")
    assert _same(_state(pool), _state(back)) and back.n_learners == 3
    with pytest.raises(ValueError, match=r"LearnerPool\.load"):
        Learner.load(tmp_path / "pool.npz")


@pytest.mark.parametrize("mode", ["online", "online-scalar"])
def test_online_standardizer_makes_scaling_irrelevant(onnx_path: Path, mode: str) -> None:
    """Raw features in, same predictions as for the standardised stream (affine invariance)."""
    x, y = _stream(40, seed=9)
    scale = np.linspace(1.0, 5.0, A) if mode == "online" else 7.0
    raw = x * scale + 100.0
    a = Learner(onnx_path, A, B, standardize=mode)
    b = Learner(onnx_path, A, B, standardize=mode)
    la = a.learn_stream(x, y, return_logits=True)[1]
    lb = b.learn_stream(raw, y, return_logits=True)[1]
    np.testing.assert_allclose(la, lb, atol=1e-4)
    sd = a.state_dict()
    assert sd["standardizer.count"][0] == (40 if mode == "online" else 40 * A)
    want_mean = x.mean(0) if mode == "online" else [x.mean()]
    np.testing.assert_allclose(sd["standardizer.mean"][0], want_mean, atol=1e-12)
    want_var = x.var(0) if mode == "online" else [x.var()]
    np.testing.assert_allclose(sd["standardizer.m2"][0] / sd["standardizer.count"][0], want_var, atol=1e-12)


def test_fixed_standardization(onnx_path: Path) -> None:
    x, y = _stream(10)
    a = Learner(onnx_path, A, B, standardize=(0.5, 2.0))
    b = Learner(onnx_path, A, B)
    assert np.array_equal(a.learn_stream(x * 2.0 + 0.5, y), b.learn_stream(x, y))


def test_one_learner_shared_by_threads(onnx_path: Path) -> None:
    learner = Learner(onnx_path, A, B)
    x, y = _stream(20)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for i in range(20):
                learner.learn(x[i], int(y[i]))
                learner.predict(x[i])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and learner.steps == 80
    assert all(np.isfinite(v).all() for v in _state(learner).values())


def test_separate_learners_in_threads_do_not_interfere(onnx_path: Path) -> None:
    streams = [_stream(25, seed=s) for s in range(4)]
    expected = [Learner(onnx_path, A, B, seed=s).learn_stream(*streams[s], return_logits=True)[1] for s in range(4)]
    got: dict[int, np.ndarray] = {}

    def work(s: int) -> None:
        got[s] = Learner(onnx_path, A, B, seed=s).learn_stream(*streams[s], return_logits=True)[1]

    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in range(4):
        assert np.array_equal(got[s], expected[s])
