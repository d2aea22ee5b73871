"""A stream of ``Learner.learn`` calls reproduces ``vsml_train.model.episode.run_episode``.

Both start from the same initial state (the learner's, drawn by the runtime
and built by the exported init graph). fp32 rounding differs between
ONNX Runtime and PyTorch, and the recurrence can amplify it, so:

* the first 20 steps must agree within 1e-5 (logits) for every config;
* over longer streams the divergence is measured and printed; with the
  default gate offsets even random V_M stays tame, and predictions must
  agree on >= 99% of steps;
* with a TRAINED model (``VSML_TRAINED_MODEL=path/to/model.pt``; skipped
  when unset) on 1,000-step real-data streams: online accuracy within 0.5
  points and predictions agreeing on >= 99% of steps.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from vsml_export.exporter import ExportOptions, export_model
from vsml_runtime import Learner
from vsml_train.model.config import VSMLConfig
from vsml_train.model.episode import run_episode
from vsml_train.model.model_file import ModelFile, load_model, save_model
from vsml_train.model.params import init_params
from vsml_train.model.state import VSMLState

from .conftest import shared_dataset_dir

STREAM_CONFIGS = {
    "one-layer-half": ({}, 1),
    "one-layer-E3-full-bp": ({"batch_average": "full", "backward_pass": True}, 3),
    "two-layers-E4-half-ln": ({"hidden": (5,), "layer_norm": True}, 4),
    "two-layers-none-ln-bp": ({"hidden": (4,), "batch_average": "none", "layer_norm": True, "backward_pass": True}, 1),
}


def _export(folder: Path, model: ModelFile) -> Path:
    save_model(folder / "model.pt", model)
    return export_model(folder / "model.pt", folder / "model.onnx", ExportOptions(verify=False)).step_path


def _blobs(t: int, e: int, a: int, b: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A learnable stream: class-dependent means plus unit noise, [T, E, A] and [T, E]."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((b, a))
    y = rng.integers(0, b, (t, e))
    return centers[y] + rng.standard_normal((t, e, a)), y


def compare_stream(learner: Learner, model: ModelFile, x: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    """Run the same stream through the learner and run_episode from the learner's initial state."""
    state = {k[len("state.") :]: torch.from_numpy(v) for k, v in learner.state_dict().items() if k.startswith("state.")}
    start = VSMLState.from_dict(state, model.config)
    t, e, a = x.shape
    ref = run_episode(
        model.params,
        model.config,
        torch.tensor(x, dtype=torch.float32).reshape(t, 1, e, a),
        torch.tensor(y).reshape(t, 1, e),
        learner.n_classes,
        state=start,
    ).logits[:, 0]
    _, got = learner.learn_stream(x if e > 1 else x[:, 0], y if e > 1 else y[:, 0], return_logits=True)
    got = got.reshape(ref.shape)
    return {"ort": got, "torch": ref.numpy()}


@pytest.mark.parametrize("name", sorted(STREAM_CONFIGS))
def test_learner_stream_matches_run_episode(name: str, tmp_path: Path) -> None:
    overrides, e = STREAM_CONFIGS[name]
    config = VSMLConfig(**overrides)
    model = ModelFile(config, init_params(config, 1), {})
    a, b, t = 9, 4, 200
    learner = Learner(_export(tmp_path, model), a, b, seed=5, examples_per_step=e)
    x, y = _blobs(t, e, a, b, seed=2)
    out = compare_stream(learner, model, x, y)
    diff = np.abs(out["ort"] - out["torch"]).max(axis=(1, 2))  # [T]
    agree = (out["ort"].argmax(-1) == out["torch"].argmax(-1)).mean()
    print(
        f"{name}: max |logit diff| first 20 steps {diff[:20].max():.2e}, all {t} steps {diff.max():.2e}; "
        f"predictions agree on {agree:.1%}"
    )
    assert diff[:20].max() <= 1e-5
    assert agree >= 0.99


# a meta-trained model: VSML_TRAINED_MODEL, else the pretrained learner shipped in the package
TRAINED = os.environ.get("VSML_TRAINED_MODEL") or str(
    Path(__file__).resolve().parents[1] / "vsml_runtime" / "assets" / "pretrained.pt"
)
if not Path(TRAINED).is_file():
    TRAINED = None


def statistical_parity(model: ModelFile, dataset: str, tmp_path: Path, n_streams: int = 2) -> None:
    """1,000-step real-data streams: online accuracy within 0.5 points, >= 99% identical predictions."""
    from vsml_train.data import load_dataset, sample_streams

    shared_dataset_dir(dataset)
    data = load_dataset(dataset, "test")
    streams = sample_streams(
        data.images, data.labels, n_streams=n_streams, n_steps=1000, seed=0, n_classes=data.n_classes
    )
    onnx_path = _export(tmp_path, model)
    for s in range(n_streams):
        x, y = np.asarray(streams.x[:, s, None, :]), np.asarray(streams.y[:, s, None])
        learner = Learner(onnx_path, x.shape[-1], data.n_classes, seed=s)
        out = compare_stream(learner, model, x, y)
        acc = [float((out[k].argmax(-1) == y).mean()) for k in ("ort", "torch")]
        agree = float((out["ort"].argmax(-1) == out["torch"].argmax(-1)).mean())
        diff = float(np.abs(out["ort"] - out["torch"]).max())
        print(
            f"{dataset} stream {s}: online accuracy ORT {acc[0]:.3f} torch {acc[1]:.3f}, "
            f"predictions agree {agree:.1%}, max |logit diff| {diff:.2e}"
        )
        assert abs(acc[0] - acc[1]) <= 0.005
        assert agree >= 0.99


@pytest.mark.slow
@pytest.mark.skipif(not TRAINED, reason="set VSML_TRAINED_MODEL=path/to/model.pt (a meta-trained model)")
@pytest.mark.parametrize("dataset", ["mnist", "fashion-mnist"])
def test_trained_model_statistical_parity(dataset: str, tmp_path: Path) -> None:
    assert TRAINED is not None
    statistical_parity(load_model(TRAINED), dataset, tmp_path)


@pytest.mark.slow
def test_random_model_statistical_parity_on_real_data(tmp_path: Path) -> None:
    """Same protocol with a random V_M (LayerNorm + backward pass): measures the divergence at 784 inputs."""
    config = VSMLConfig(layer_norm=True, backward_pass=True)
    statistical_parity(ModelFile(config, init_params(config, 0), {}), "fashion-mnist", tmp_path, n_streams=1)
