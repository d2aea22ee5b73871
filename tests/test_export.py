"""`vsml-export`: files, metadata, checker, overrides, and clear failures that leave nothing behind."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import onnx
import pytest
import torch
from click.testing import CliRunner

from vsml_export import exporter as exporter_module
from vsml_export.cli import main
from vsml_runtime import format as fmt
from vsml_train import __version__
from vsml_train.model.config import VSMLConfig
from vsml_train.model.model_file import ModelFile, load_model, save_model
from vsml_train.model.params import init_params


@pytest.fixture(scope="module")
def model_pt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("model") / "model.pt"
    config = VSMLConfig(hidden=(4,), layer_norm=True)
    meta = {"method": "test", "input_mean": 0.1307, "input_std": 0.3081}
    save_model(path, ModelFile(config, init_params(config, 0), meta))
    return path


def _run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def _meta(path: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(path).metadata_props}


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_cli_writes_both_graphs_with_metadata(model_pt: Path, tmp_path: Path) -> None:
    out = tmp_path / "model.onnx"
    code, text = _run(str(model_pt), str(out))
    assert code == 0, text
    assert "verified against PyTorch" in text
    assert _files(tmp_path) == ["model.init.onnx", "model.onnx"]
    mask = os.umask(0)
    os.umask(mask)
    for path in (out, tmp_path / "model.init.onnx"):  # not mkstemp's private 0600
        assert path.stat().st_mode & 0o777 == 0o666 & ~mask
    model = load_model(model_pt)
    for path, kind in ((out, "step"), (tmp_path / "model.init.onnx", "init")):
        graph = onnx.load(path)
        onnx.checker.check_model(graph, full_check=True)
        meta = _meta(path)
        info = fmt.parse_metadata(meta)
        assert info.graph == kind
        assert info.project_version == __version__
        assert VSMLConfig.from_dict(info.config) == model.config
        assert info.clip == 4.0 and info.batch_average == "half"
        assert info.params_sha256 == model.params_hash()
        assert info.opset == 18 and {o.domain: o.version for o in graph.opset_import}[""] == 18
        assert list(info.inputs) == [i.name for i in graph.graph.input]
        assert list(info.outputs) == [o.name for o in graph.graph.output]
        assert info.state.names == ("h_0", "c_0", "h_1", "c_1", "bwd_0", "bwd_1")
        assert info.state.layout["h_1"] == ("P", "E", "H1", "B", "N")
        assert info.state.layout["bwd_0"] == ("P", "E", "H1", "M")
        assert info.state.dims == {"N": 16, "M": 8, "H": 8, "H1": 4}
        assert info.input_contract.mean == 0.1307 and info.input_contract.std == 0.3081
        assert info.model_meta["method"] == "test"
    info = fmt.parse_metadata(_meta(out))
    assert info.inputs == ("h_0", "c_0", "h_1", "c_1", "bwd_0", "bwd_1", "x", "y")
    assert info.outputs == ("new_h_0", "new_c_0", "new_h_1", "new_c_1", "new_bwd_0", "new_bwd_1", "logits")
    assert info.init_file == "model.init.onnx"
    assert info.init_sha256 == hashlib.sha256((tmp_path / "model.init.onnx").read_bytes()).hexdigest()
    init_info = fmt.parse_metadata(_meta(tmp_path / "model.init.onnx"))
    assert init_info.inputs == ("noise_0", "noise_1", "examples")
    assert init_info.init.distribution == "truncated_normal" and (init_info.init.low, init_info.init.high) == (-2, 2)


def test_axes_are_dynamic(model_pt: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.onnx"
    assert _run(str(model_pt), str(out))[0] == 0
    graph = onnx.load(out).graph
    dims = {
        v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
        for v in [*graph.input, *graph.output]
    }
    assert dims["h_0"] == ["P", "E", "A", "H1", 16]
    assert dims["h_1"] == ["P", "E", "H1", "B", 16]
    assert dims["x"] == ["P", "E", "A"] and dims["y"] == ["P", "E"]
    assert dims["logits"][-1] != 10  # no size baked in


def test_overrides_land_in_graph_and_metadata(model_pt: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.onnx"
    code, text = _run(str(model_pt), str(out), "--clip", "none", "--batch-average", "full", "--opset", "20")
    assert code == 0, text
    info = fmt.parse_metadata(_meta(out))
    assert info.clip is None and info.batch_average == "full" and info.opset == 20
    assert info.config["clip"] is None and info.config["batch_average"] == "full"
    assert {o.domain: o.version for o in onnx.load(out).opset_import}[""] == 20
    graph = onnx.load(out)
    assert not any(n.op_type == "Clip" for n in graph.graph.node)


def test_bad_flags_are_rejected(model_pt: Path, tmp_path: Path) -> None:
    for args in (["--clip", "-1"], ["--clip", "abc"], ["--opset", "17"], ["--batch-average", "some"]):
        code, _ = _run(str(model_pt), str(tmp_path / "m.onnx"), *args)
        assert code != 0, args
    assert _files(tmp_path) == []


def _corrupt(tmp: Path, model_pt: Path) -> Path:
    p = tmp / "corrupt.pt"
    p.write_bytes(b"\x00\x01garbage" * 100)
    return p


def _truncated(tmp: Path, model_pt: Path) -> Path:
    p = tmp / "truncated.pt"
    p.write_bytes(model_pt.read_bytes()[:300])
    return p


def _not_vsml(tmp: Path, model_pt: Path) -> Path:
    p = tmp / "other.pt"
    torch.save({"state_dict": {"w": torch.zeros(3)}}, p)
    return p


def _missing(tmp: Path, model_pt: Path) -> Path:
    return tmp / "missing.pt"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (_missing, "does not exist"),
        (_corrupt, "not a readable model file"),
        (_truncated, "not a readable model file"),
        (_not_vsml, "not a VSML model file"),
    ],
)
def test_bad_model_file_fails_cleanly(make, message: str, model_pt: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    bad = make(src, model_pt)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    code, text = _run(str(bad), str(out_dir / "model.onnx"))
    assert code == 1
    assert message in text and "vsml-export: error:" in text
    assert _files(out_dir) == []


def test_unwritable_output_fails_cleanly(model_pt: Path, tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    for out, message in (
        (tmp_path / "no" / "such" / "m.onnx", "does not exist"),
        (afile / "m.onnx", "does not exist"),
        (tmp_path, "is a directory"),  # refused by click's argument check (exit 2)
    ):
        code, text = _run(str(model_pt), str(out))
        assert code in (1, 2) and message in text, text
    with pytest.raises(exporter_module.ExportError, match="is a folder"):
        exporter_module.export_model(model_pt, tmp_path)
    assert _files(tmp_path) == ["afile"]


def test_failed_export_leaves_old_files_and_no_temp_files(
    model_pt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "model.onnx"
    out.write_bytes(b"old step")
    (tmp_path / "model.init.onnx").write_bytes(b"old init")

    def broken_verify(*args: object, **kwargs: object) -> float:
        raise exporter_module.ExportError("verification failed: simulated")

    monkeypatch.setattr(exporter_module, "verify", broken_verify)
    code, text = _run(str(model_pt), str(out))
    assert code == 1 and "simulated" in text
    assert out.read_bytes() == b"old step"
    assert (tmp_path / "model.init.onnx").read_bytes() == b"old init"
    assert _files(tmp_path) == ["model.init.onnx", "model.onnx"]


def test_failed_write_removes_temp_files(model_pt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write that fails half-way (disk full...) leaves neither partial files nor temp files."""
    real_replace = exporter_module.os.replace
    calls = []

    def failing_replace(src: str, dst: str) -> None:
        calls.append(dst)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(exporter_module.os, "replace", failing_replace)
    code, text = _run(str(model_pt), str(tmp_path / "m.onnx"), "--no-verify")
    monkeypatch.setattr(exporter_module.os, "replace", real_replace)
    assert code == 1 and "No space left" in text
    assert calls and _files(tmp_path) == []


def test_metadata_is_json_where_structured(model_pt: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.onnx"
    assert _run(str(model_pt), str(out), "--no-verify")[0] == 0
    meta = _meta(out)
    for key in (fmt.K_CONFIG, fmt.K_STATE, fmt.K_INIT, fmt.K_INPUTS, fmt.K_OUTPUTS, fmt.K_INPUT_CONTRACT):
        json.loads(meta[key])
    assert meta[fmt.K_FORMAT] == fmt.FORMAT and meta[fmt.K_FORMAT_VERSION] == str(fmt.FORMAT_VERSION)
