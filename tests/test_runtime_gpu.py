"""The CUDA path of the runtime (skipped unless ONNX Runtime's CUDA provider is installed and usable).

Run on a GPU machine by ``bench/gpu_check.sh``: device state kept between
calls, CUDA vs CPU parity, CUDA graphs, pools, bad input on the GPU.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from vsml_export.exporter import ExportOptions, export_model
from vsml_runtime import Learner, LearnerPool
from vsml_train.model.config import VSMLConfig
from vsml_train.model.model_file import ModelFile, save_model
from vsml_train.model.params import init_params

if "CUDAExecutionProvider" not in ort.get_available_providers():
    pytest.skip("ONNX Runtime has no CUDA provider here", allow_module_level=True)

A, B = 20, 5
CONFIGS = {
    "default": VSMLConfig(),
    "deep-ln-bp": VSMLConfig(hidden=(6,), layer_norm=True, backward_pass=True),
}


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def onnx_path(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp(request.param)
    config = CONFIGS[request.param]
    save_model(folder / "model.pt", ModelFile(config, init_params(config, 0), {}))
    return export_model(folder / "model.pt", folder / "model.onnx", ExportOptions(verify=False)).step_path


def _stream(t: int, e: int = 1, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((B, A))
    y = rng.integers(0, B, (t, e))
    x = centers[y] + rng.standard_normal((t, e, A))
    return (x[:, 0], y[:, 0]) if e == 1 else (x, y)


def _learner(path: Path, device: str, **kw: object) -> Learner:
    learner = Learner(path, A, B, seed=3, device=device, **kw)  # type: ignore[arg-type]
    assert learner.device == ("cuda" if device.startswith("cuda") else "cpu")
    return learner


def test_cuda_learner_matches_cpu_learner(onnx_path: Path) -> None:
    x, y = _stream(300)
    gpu, cpu = _learner(onnx_path, "cuda"), _learner(onnx_path, "cpu")
    assert gpu.providers[0] == "CUDAExecutionProvider"
    _, lg = gpu.learn_stream(x, y, return_logits=True)
    _, lc = cpu.learn_stream(x, y, return_logits=True)
    diff = np.abs(lg - lc).max(-1)
    agree = (lg.argmax(-1) == lc.argmax(-1)).mean()
    print(f"CUDA vs CPU: max |logit diff| first 20 {diff[:20].max():.2e}, all {diff.max():.2e}, agree {agree:.1%}")
    assert diff[:20].max() <= 1e-5 and agree >= 0.99


def test_state_stays_on_the_device(onnx_path: Path) -> None:
    learner = _learner(onnx_path, "cuda")
    engine = learner._engine
    for buffers in engine._dev:
        for value in buffers.values():
            assert value.device_name().lower() == "cuda"
    x, y = _stream(5)
    learner.learn_stream(x, y)
    assert all(np.isfinite(v).all() for k, v in learner.state_dict().items() if k != "meta")


def test_cuda_graph_matches_plain_cuda(onnx_path: Path) -> None:
    x, y = _stream(60, seed=1)
    try:
        graphed = _learner(onnx_path, "cuda", cuda_graph=True)
        lg = graphed.learn_stream(x, y, return_logits=True)[1]
    except Exception as exc:  # report, do not hide: the flag is opt-in
        pytest.fail(f"cuda_graph=True failed: {exc}")
    plain = _learner(onnx_path, "cuda")
    lp = plain.learn_stream(x, y, return_logits=True)[1]
    np.testing.assert_allclose(lg, lp, rtol=0, atol=1e-5)
    # predict (no flip of the ping-pong) then learn again: the captured graphs stay consistent
    assert graphed.predict(x[0]) == plain.predict(x[0])
    assert graphed.learn(x[1], int(y[1])) == plain.learn(x[1], int(y[1]))


def test_cuda_pool_subset_save_load(onnx_path: Path, tmp_path: Path) -> None:
    pool = LearnerPool(onnx_path, 6, A, B, seed=0, device="cuda", examples_per_step=2)
    cpu = LearnerPool(onnx_path, 6, A, B, seed=0, device="cpu", examples_per_step=2)
    rng = np.random.default_rng(2)
    for _ in range(10):
        x, y = rng.standard_normal((6, 2, A)), rng.integers(0, B, (6, 2))
        lg = pool.learn(x, y, return_logits=True)[1]
        lc = cpu.learn(x, y, return_logits=True)[1]
        np.testing.assert_allclose(lg, lc, rtol=0, atol=1e-4)
    pool.learn(rng.standard_normal((2, 2, A)), rng.integers(0, B, (2, 2)), learners=[4, 1])
    assert pool.steps.tolist() == [10, 11, 10, 10, 11, 10]
    pool.save(tmp_path / "pool.npz")
    back = LearnerPool.load(tmp_path / "pool.npz", device="cuda")
    for k, v in pool.state_dict().items():
        if k != "meta":
            assert np.array_equal(v, back.state_dict()[k]), k


def test_bad_input_on_cuda_keeps_state(onnx_path: Path) -> None:
    learner = _learner(onnx_path, "cuda")
    x, y = _stream(3)
    learner.learn_stream(x, y)
    before = learner.state_dict()
    with pytest.raises(ValueError):
        learner.learn(np.full(A, np.nan), 0)
    with pytest.raises(ValueError):
        learner.learn(x[0], B)
    after = learner.state_dict()
    assert all(np.array_equal(before[k], after[k]) for k in before if k != "meta")
