"""`vsml-model`: derive a model with config changes, V_M bit for bit unchanged, provenance recorded."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vsml_train.cli_model import main, parse_changes
from vsml_train.model.config import VSMLConfig
from vsml_train.model.model_file import ModelFile, load_model, save_model
from vsml_train.model.params import init_params


@pytest.fixture
def model_path(tmp_path: Path) -> Path:
    config = VSMLConfig(state_size=4, msg_size=3)
    path = tmp_path / "m.pt"
    save_model(path, ModelFile(config, init_params(config, 0), {"method": "clone"}))
    return path


def test_set_changes_config_keeps_params_and_records_the_change(model_path: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "new.pt"
    main(["set", str(model_path), str(out), "reduction=sqrt", "bias_input=3", "init_random=false", "output_gain=14"])
    old, new = load_model(model_path), load_model(out)
    assert new.params_hash() == old.params_hash()
    for k in old.params:
        torch.testing.assert_close(new.params[k], old.params[k], rtol=0, atol=0)
    assert (new.config.reduction, new.config.bias_input, new.config.init_random) == ("sqrt", 3, False)
    assert new.config.output_gain == 14
    (d,) = new.meta["derivations"]
    assert d["parent"] == "m.pt" and d["parent_params_sha256"] == old.params_hash()
    assert d["changes"]["reduction"] == "sqrt"
    assert new.meta["method"] == "clone"
    main(["show", str(out)])
    shown = capsys.readouterr().out
    assert "reduction = 'sqrt'" in shown and old.params_hash() in shown


@pytest.mark.parametrize(
    ("pairs", "match"),
    [(["state_size=8"], "without retraining"), (["reduction"], "KEY=VALUE"), (["reduction=max"], "reduction must")],
)
def test_set_refuses_what_it_cannot_do(model_path: Path, tmp_path: Path, pairs: list[str], match: str) -> None:
    with pytest.raises(SystemExit, match=match):
        main(["set", str(model_path), str(tmp_path / "x.pt"), *pairs])
    assert not (tmp_path / "x.pt").exists()


def test_set_never_overwrites_its_parent(model_path: Path) -> None:
    before = model_path.read_bytes()
    with pytest.raises(SystemExit, match="OUT must differ"):
        main(["set", str(model_path), str(model_path), "output_gain=2"])
    assert model_path.read_bytes() == before


def test_values_are_json_or_strings() -> None:
    assert parse_changes(["clip=null", "batch_average=none", "output_gain=2.5"]) == {
        "clip": None,
        "batch_average": "none",
        "output_gain": 2.5,
    }
