"""Config validation, V_M layout and the model file."""

from __future__ import annotations

import pytest
import torch

from vsml_train.model.config import VSMLConfig
from vsml_train.model.model_file import ModelFile, ModelFileError, load_model, save_model
from vsml_train.model.params import check_params, flatten, init_params, n_params, param_shapes, unflatten


def test_reference_parameter_count() -> None:
    assert n_params(VSMLConfig()) == 2384  # docs/model.md §2
    assert n_params(VSMLConfig(shared_params=False, hidden=(5,))) == 2 * 2384


def test_config_roundtrip_and_unknown_keys() -> None:
    cfg = VSMLConfig(hidden=(4, 5), layer_norm=True, batch_average="full")
    assert VSMLConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown VSMLConfig keys"):
        VSMLConfig.from_dict({**cfg.to_dict(), "stat_size": 3})
    assert cfg.replace(state_size=32).state_size == 32


@pytest.mark.parametrize(
    "bad",
    [{"state_size": 7}, {"msg_size": 1}, {"micro_ticks": 0}, {"hidden": (0,)}, {"output_channel": 8},
     {"reduction": "max"}, {"batch_average": "some"}, {"clip": -1.0}, {"init_mode": "zeros"}, {"tanh_bound": 0},
     {"online_norm_eps": 0.0}, {"online_norm_prior": float("nan")}, {"error_scale": -1.0},
     {"online_norm_center_prior": -1.0}, {"error_decay_steps": 0.0}, {"error_decay_steps": float("inf")},
     {"error_decay_power": -0.5}, {"ncm_temperature": 1.0}, {"online_norm": True, "ncm_temperature": 0.0},
     {"ncm_shrink": 0.0}, {"ncm_share": 0.0}, {"ncm_share": 1.0}, {"ncm_share": float("nan")}],
)  # fmt: skip
def test_config_rejects_bad_values(bad: dict) -> None:
    with pytest.raises(ValueError, match="invalid VSMLConfig"):
        VSMLConfig(**bad)


def test_step_count_is_state_exactly_when_an_option_needs_it() -> None:
    assert not VSMLConfig().counts_steps
    for opts in ({"time_input": True}, {"online_norm": True}, {"error_decay_steps": 10.0}):
        assert VSMLConfig(**opts).counts_steps, opts


def test_flatten_roundtrip_with_population() -> None:
    cfg = VSMLConfig(layer_norm=True, shared_params=False, hidden=(3,), init_mode="encoded")
    p = init_params(cfg, 0)
    flat = flatten(p)
    assert flat.shape == (n_params(cfg),)
    back = unflatten(flat, cfg)
    for k in p:
        torch.testing.assert_close(back[k], p[k], atol=0, rtol=0)
    pop = unflatten(torch.stack([flat, 2 * flat]), cfg)
    assert check_params(pop, cfg) == 2
    torch.testing.assert_close(pop["w_gates"][1], 2 * p["w_gates"])
    with pytest.raises(ValueError, match="needs"):
        unflatten(flat[:-1], cfg)


def test_check_params_names_the_problem() -> None:
    cfg = VSMLConfig()
    p = init_params(cfg, 0)
    with pytest.raises(ValueError, match="w_fwd"):
        check_params({**p, "w_fwd": torch.zeros(3, 3)}, cfg)
    with pytest.raises(ValueError, match="expects"):
        check_params({k: v for k, v in p.items() if k != "b_bwd"}, cfg)
    assert set(param_shapes(cfg)) == set(p)


def test_model_file_roundtrip_and_errors(tmp_path) -> None:
    cfg = VSMLConfig(hidden=(3,))
    model = ModelFile(cfg, init_params(cfg, 1), {"method": "test"})
    path = tmp_path / "model.pt"
    save_model(path, model)
    back = load_model(path)
    assert back.config == cfg and back.meta["method"] == "test"
    assert back.params_hash() == model.params_hash()
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]  # no temp files left behind

    with pytest.raises(ModelFileError, match="does not exist"):
        load_model(tmp_path / "missing.pt")
    (tmp_path / "trunc.pt").write_bytes(path.read_bytes()[:300])
    with pytest.raises(ModelFileError, match="corrupt or truncated"):
        load_model(tmp_path / "trunc.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ModelFileError, match="not a VSML model"):
        load_model(tmp_path / "other.pt")
    payload = torch.load(path, weights_only=True)
    payload["params"]["b_fwd"] = payload["params"]["b_fwd"] + 1
    torch.save(payload, tmp_path / "edited.pt")
    with pytest.raises(ModelFileError, match="sha256"):
        load_model(tmp_path / "edited.pt")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        save_model(tmp_path / "nope" / "m.pt", model)


def test_model_file_metadata_is_stored_as_plain_values(tmp_path) -> None:
    cfg = VSMLConfig()
    meta = {"torch": torch.__version__, "path": tmp_path, "nested": {"n": 1, "x": [1.5, float("nan")]}}
    save_model(tmp_path / "m.pt", ModelFile(cfg, init_params(cfg, 0), meta))
    back = load_model(tmp_path / "m.pt").meta
    assert back["torch"] == str(torch.__version__) and back["path"] == str(tmp_path)
    assert back["nested"]["n"] == 1 and back["nested"]["x"][0] == 1.5
