"""The LDA expert's size limit (``lda_max_features``, docs/model.md §3.5).

Up to the limit the learner is the LDA mixture; above it the LDA state is empty ([P, 0, 0] and
[P, 0, B]) and the learner is the three-expert mixture, to the bit in PyTorch and in the exported
graph (one ``If`` on the number of features, ``export/switch.py``). The runtime sizes the state from
the limit in the model's metadata, resumes and pools on both sides of it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.test_front_ends import assert_pool_equals_single_learners
from tests.test_mixture import GNB, assert_resumes_exactly
from tests.test_mixture_lda import LDA
from tests.test_runtime_learner import export_tmp
from vsml_export.trace import state_spec
from vsml_export.verify import verify_sizes
from vsml_runtime import Learner
from vsml_runtime import format as fmt
from vsml_train.model.config import VSMLConfig
from vsml_train.model.episode import EpisodeResult, run_episode
from vsml_train.model.params import init_params
from vsml_train.model.state import init_state

DT = torch.float64
LIMIT = 5
LIMITED = LDA.replace(lda_max_features=LIMIT)


def _episode(config: VSMLConfig, a: int, seed: int = 0) -> EpisodeResult:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(12, 2, 1, a, generator=gen, dtype=DT) * 3 + 1
    y = torch.randint(0, 3, (12, 2, 1), generator=gen)
    return run_episode(init_params(config, 0, dtype=DT), config, x, y, 3, seed=1)


@pytest.mark.parametrize("bad", [-1, 2.5, True, 2**21])
def test_config_rejects_a_bad_limit(bad: object) -> None:
    with pytest.raises(ValueError, match="lda_max_features must be"):
        LDA.replace(lda_max_features=bad)


def test_initial_state_is_empty_above_the_limit() -> None:
    gen = torch.Generator().manual_seed(0)
    within = init_state(LIMITED, LIMIT, 4, 2, 3, generator=gen, params=init_params(LIMITED, 0))
    above = init_state(LIMITED, LIMIT + 1, 4, 2, 3, generator=gen, params=init_params(LIMITED, 0))
    assert within.ncm is not None and above.ncm is not None
    assert within.ncm[4].shape == (2, LIMIT, LIMIT) and above.ncm[4].shape == (2, 0, 0)
    assert above.ncm[5].shape == (2, 0, 4)
    # the weights start uniform over the experts that run: 4 within, 3 above (the fourth entry unused)
    torch.testing.assert_close(within.ncm[2][0, 0], torch.full((4,), float(np.log(1 / 4))))
    torch.testing.assert_close(above.ncm[2][0, 0, :3], torch.full((3,), float(np.log(1 / 3))))


def test_torch_step_is_the_lda_mixture_within_the_limit_and_the_gnb_mixture_above() -> None:
    for a, same_as in ((LIMIT, LDA), (LIMIT + 1, GNB)):
        got, want = _episode(LIMITED, a), _episode(same_as, a)
        torch.testing.assert_close(got.logits, want.logits, rtol=0, atol=0)
        assert got.state.ncm is not None and want.state.ncm is not None
        for k in range(3 if same_as is GNB else 6):
            if k != 2:
                torch.testing.assert_close(got.state.ncm[k], want.state.ncm[k], rtol=0, atol=0)
        z = want.state.ncm[2].shape[-1]
        torch.testing.assert_close(got.state.ncm[2][..., :z], want.state.ncm[2], rtol=0, atol=0)
    above = _episode(LIMITED, LIMIT + 1).state.ncm
    assert above is not None and above[4].shape == (2, 0, 0) and above[5].shape == (2, 0, 3)


def test_state_spec_carries_the_limit_and_the_runtime_resolves_it() -> None:
    spec = state_spec(LIMITED)
    assert spec.layout["lda_scatter"] == ("P", "A_lda", "A_lda") and spec.layout["lda_dir"] == ("P", "A_lda", "B")
    again = fmt.StateSpec.from_json(spec.to_json())
    assert again == spec and again.feature_limits == {"A_lda": LIMIT}
    assert again.resolve(LIMIT, 3, 2, 1)["lda_scatter"] == (2, LIMIT, LIMIT)
    assert again.resolve(LIMIT + 1, 3, 2, 1)["lda_dir"] == (2, 0, 3)
    assert "feature_limits" not in json.loads(state_spec(LDA).to_json())  # no limit: the format as before
    assert state_spec(LDA).layout["lda_scatter"] == ("P", fmt.FEATURES_AXIS, fmt.FEATURES_AXIS)


@pytest.mark.parametrize(
    ("limits", "message"),
    [({"A_lda": -1}, "must be an integer"), ({"A_lda": 2**21}, "must be an integer"), ({"N": 4}, "clashes")],
)
def test_format_rejects_a_bad_feature_limit(limits: dict, message: str) -> None:
    spec = state_spec(LIMITED)
    bad = fmt.StateSpec(spec.names, spec.layout, spec.sizes, spec.dims, bias_inputs=0, feature_limits=limits)
    with pytest.raises(fmt.FormatError, match=message):
        fmt._check_state(bad, "test")


def test_verification_covers_both_sides_of_the_limit() -> None:
    def features(config: VSMLConfig) -> list[int]:
        return sorted(a for _, _, a, _, _ in verify_sizes(config))

    assert features(LDA) == [4, 10] and features(LIMITED) == [4, 10]  # 4 within 5, 10 above
    assert features(LDA.replace(lda_max_features=2)) == [2, 4, 10]
    assert features(LDA.replace(lda_max_features=40)) == [4, 10, 41]
    assert features(LDA.replace(lda_max_features=0)) == [4, 10]  # never runs: nothing within to verify


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("lda_limit")
    return {name: export_tmp(folder, c, name=name) for name, c in (("lim", LIMITED), ("lda", LDA), ("gnb", GNB))}


def _probas(model: Path, x: np.ndarray, y: np.ndarray, b: int) -> np.ndarray:
    learner = Learner(model, x.shape[1], b, seed=4)
    out = []
    for t in range(len(x)):
        _, proba = learner.learn(x[t], int(y[t]), return_proba=True)
        out.append(proba)
    return np.array(out)


def test_runtime_learner_switches_at_the_limit(models: dict[str, Path], tmp_path: Path) -> None:
    b = 3
    rng = np.random.default_rng(5)
    for a, same_as, atol in ((LIMIT, "lda", 1e-5), (LIMIT + 1, "gnb", 0.0)):
        x, y = (rng.standard_normal((30, a)) * 3 + 2).astype(np.float32), rng.integers(0, b, 30)
        np.testing.assert_allclose(_probas(models["lim"], x, y, b), _probas(models[same_as], x, y, b), atol=atol)
        learner = Learner(models["lim"], a, b, seed=1)
        state = learner.state_dict()
        lda_a = a if a <= LIMIT else 0
        assert state["state.lda_scatter"].shape == (1, lda_a, lda_a) and state["state.lda_dir"].shape == (1, lda_a, b)
        learner.learn_stream(x[:18], y[:18])
        assert_resumes_exactly(learner, x[18:], y[18:], tmp_path / f"s{a}.npz")
    assert_pool_equals_single_learners(models["lim"])  # 6 features: above the limit


@pytest.mark.slow
def test_dynamo_export_of_the_limit_verifies(tmp_path: Path) -> None:
    """torch.export's graphs hold a nested If (the batch averaging's torch.cond) that reads names from the
    scope around it: the switch's branches must rename those reads too (``switch._rename``)."""
    from vsml_export.exporter import ExportOptions, export_model
    from vsml_train.model.model_file import ModelFile, save_model

    config = LIMITED.replace(batch_average="full")
    save_model(tmp_path / "m.pt", ModelFile(config, init_params(config, 0), {}))
    result = export_model(tmp_path / "m.pt", tmp_path / "m.onnx", ExportOptions(exporter="dynamo"))
    assert result.max_verify_error is not None and result.max_verify_error <= 1e-4
    for a in (LIMIT, LIMIT + 2):  # both branches run in the runtime
        Learner(result.step_path, a, 3, seed=0).learn_stream(np.ones((4, a), np.float32), np.arange(4) % 3)
