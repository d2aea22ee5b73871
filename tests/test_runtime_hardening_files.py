"""Issue 11, files: step digest, corrupt files, inconsistent metadata, the two-file export, stale temp
files, and `vsml-train` misuse."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

from tests.crafted import drop_meta, edited_copy, export_tiny, meta_of, set_meta
from vsml_export.exporter import ExportOptions, export_model
from vsml_runtime import FormatError, Learner, files
from vsml_runtime import format as fmt
from vsml_train.cli_train import cli
from vsml_train.model.config import VSMLConfig
from vsml_train.model.model_file import ModelFile, params_hash, save_model
from vsml_train.model.params import init_params

A, B = 6, 3


@pytest.fixture(scope="module")
def onnx_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_tiny(tmp_path_factory.mktemp("hardf"))


@pytest.fixture(scope="module")
def state_file(onnx_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    learner = Learner(onnx_path, A, B, standardize="online")
    rng = np.random.default_rng(0)
    learner.learn_stream(rng.standard_normal((10, A)), rng.integers(0, B, 10))
    path = tmp_path_factory.mktemp("hardf-state") / "user.npz"
    learner.save(path)
    return path


# -- 3. the step graph's digest -------------------------------------------------------


def _edit_weight(graph: onnx.ModelProto) -> None:
    init = max(graph.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    arr = numpy_helper.to_array(init).copy()
    arr.flat[0] += 0.5
    init.CopyFrom(numpy_helper.from_array(arr, init.name))


def test_edited_weight_or_metadata_is_detected(onnx_path: Path, state_file: Path, tmp_path: Path) -> None:
    assert fmt.K_STEP_SHA256 in meta_of(onnx.load(onnx_path))
    edited = edited_copy(onnx_path, tmp_path / "edited.onnx", _edit_weight, reseal=False)
    with pytest.raises(FormatError, match="changed after export"):
        Learner(edited, A, B)
    with pytest.raises(FormatError, match="changed after export"):
        Learner.load(state_file, edited)  # a state of the real model never runs on the edited one
    clip = edited_copy(onnx_path, tmp_path / "clip.onnx", lambda g: set_meta(g, fmt.K_CLIP, "1000.0"), reseal=False)
    with pytest.raises(FormatError, match="changed after export"):
        Learner(clip, A, B)
    bare = edited_copy(onnx_path, tmp_path / "bare.onnx", lambda g: drop_meta(g, fmt.K_STEP_SHA256), raw=True)
    with pytest.raises(FormatError, match="no step digest"):
        Learner(bare, A, B)
    Learner(edited_copy(onnx_path, tmp_path / "same.onnx", lambda g: None, reseal=False), A, B)  # untouched: fine


def test_shipped_model_carries_its_digest() -> None:
    learner = Learner.pretrained(4, 2)
    assert learner.learn(np.zeros(4), 0) in (0, 1)


# -- 5. corrupt state and model files ---------------------------------------------------


def test_every_truncation_and_many_bit_flips_of_a_state_file_raise_format_error(
    state_file: Path, tmp_path: Path
) -> None:
    data = state_file.read_bytes()
    bad = tmp_path / "bad.npz"
    rng = np.random.default_rng(0)
    cases = [data[:n] for n in range(0, len(data), max(1, len(data) // 150))]
    for pos in rng.integers(0, len(data), 300):
        flipped = bytearray(data)
        flipped[pos] ^= 1 << int(rng.integers(0, 8))
        cases.append(bytes(flipped))
    cases += [b"", b"PK\x03\x04", b"not a zip at all", data + b"junk"]
    outcomes = {"loaded": 0, "format_error": 0}
    for case in cases:
        bad.write_bytes(case)
        try:
            Learner.load(bad)
            outcomes["loaded"] += 1  # a flip in bytes nobody reads (zip comment, padding, meta text...)
        except FormatError:
            outcomes["format_error"] += 1
        assert bad.read_bytes() == case  # reading never writes
    assert outcomes["format_error"] > 0.8 * len(cases)


def test_corrupt_model_files_raise_format_error(onnx_path: Path, tmp_path: Path, capfd) -> None:
    data = onnx_path.read_bytes()
    init = fmt.init_path_for(onnx_path).read_bytes()
    rng = np.random.default_rng(1)
    step, init_dst = tmp_path / "m.onnx", tmp_path / "m.init.onnx"
    init_dst.write_bytes(init)
    for n in [0, 1, 10, len(data) // 2, len(data) - 1]:
        step.write_bytes(data[:n])
        with pytest.raises(FormatError):
            Learner(step, A, B)
    for pos in rng.integers(0, len(data), 40):
        flipped = bytearray(data)
        flipped[pos] ^= 1 << int(rng.integers(0, 8))
        step.write_bytes(bytes(flipped))
        with pytest.raises(FormatError):
            Learner(step, A, B)
    step.write_bytes(data)
    for pos in rng.integers(0, len(init), 20):
        flipped = bytearray(init)
        flipped[pos] ^= 1 << int(rng.integers(0, 8))
        init_dst.write_bytes(bytes(flipped))
        with pytest.raises(FormatError):
            Learner(step, A, B)
    out, _ = capfd.readouterr()
    assert "EP Error" not in out and "Falling back" not in out  # ONNX Runtime printed no banner


# -- 10. inconsistent metadata, sealed as if exported ------------------------------------


def _rename_state(graph: onnx.ModelProto) -> None:
    spec = json.loads(meta_of(graph)[fmt.K_STATE])
    spec["names"] = ["h_0", "z_0"]
    spec["layout"]["z_0"] = spec["layout"].pop("c_0")
    set_meta(graph, fmt.K_STATE, json.dumps(spec))


def _change_dims(graph: onnx.ModelProto) -> None:
    spec = json.loads(meta_of(graph)[fmt.K_STATE])
    spec["dims"]["N"] = spec["dims"]["N"] * 2
    set_meta(graph, fmt.K_STATE, json.dumps(spec))


def _with(key: str, **changes: object):
    """An edit that sets fields of the JSON metadata entry ``key``."""

    def edit(graph: onnx.ModelProto) -> None:
        set_meta(graph, key, json.dumps({**json.loads(meta_of(graph)[key]), **changes}))

    return edit


EDITS = {
    "renamed state tensor": _rename_state,
    "changed dims": _change_dims,
    "layout a list": _with(fmt.K_STATE, layout=[1]),
    "state not JSON": lambda g: set_meta(g, fmt.K_STATE, "{"),
    "names a number": _with(fmt.K_STATE, names=3),
    "init inputs": _with(fmt.K_INIT, noise_inputs=[]),
    "clip negative": lambda g: set_meta(g, fmt.K_CLIP, "-1"),
    "contract std 0": lambda g: set_meta(g, fmt.K_INPUT_CONTRACT, json.dumps({"mean": 0.0, "std": 0.0})),
    "graph init": lambda g: set_meta(g, fmt.K_GRAPH, "init"),
    "no init sha": lambda g: drop_meta(g, fmt.K_INIT_SHA256),
}


@pytest.mark.parametrize("edit", list(EDITS), ids=list(EDITS))
def test_inconsistent_metadata_raises_format_error(onnx_path: Path, tmp_path: Path, edit: str, capfd) -> None:
    crafted = edited_copy(onnx_path, tmp_path / "crafted.onnx", EDITS[edit])
    with pytest.raises(FormatError):
        Learner(crafted, A, B)
    out, _ = capfd.readouterr()
    assert out == ""


def test_undecodable_metadata_raises_format_error(onnx_path: Path, tmp_path: Path) -> None:
    from vsml_export.exporter import seal_step

    graph = onnx.load(onnx_path)
    drop_meta(graph, fmt.K_STEP_SHA256)
    set_meta(graph, fmt.K_PROJECT_VERSION, "@@@@")
    data = graph.SerializeToString().replace(b"@@@@", b"\xff\xfe\xff\xfe")
    (tmp_path / "u.onnx").write_bytes(data)
    (tmp_path / "u.init.onnx").write_bytes(fmt.init_path_for(onnx_path).read_bytes())
    with pytest.raises(FormatError, match="UTF-8"):
        Learner(tmp_path / "u.onnx", A, B)
    assert seal_step  # the exporter's sealing is what the crafted files above use


# -- 7. the two-file export ------------------------------------------------------------------


def _crash_on_replace(monkeypatch: pytest.MonkeyPatch, crash_at: int) -> None:
    real = os.replace
    calls = {"n": 0}

    def replace(src, dst):
        calls["n"] += 1
        if calls["n"] == crash_at:
            raise KeyboardInterrupt("simulated crash")
        return real(src, dst)

    monkeypatch.setattr(files.os, "replace", replace)


def _model_pt(folder: Path, seed: int) -> tuple[Path, str]:
    config = VSMLConfig()
    params = init_params(config, seed)
    folder.mkdir(exist_ok=True)
    save_model(folder / f"seed{seed}.pt", ModelFile(config, params, {}))
    return folder / f"seed{seed}.pt", params_hash(params)


@pytest.mark.parametrize("crash_at", [1, 2, 3])
def test_a_crash_between_the_renames_leaves_a_loadable_pair(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, crash_at: int
) -> None:
    """Renames: 1 init -> init.next, 2 step -> model.onnx (the switch), 3 init.next -> init."""
    out = tmp_path / "model.onnx"
    (pt0, h0), (pt1, h1), (pt2, h2) = (_model_pt(tmp_path / "src", s) for s in range(3))
    export_model(pt0, out, ExportOptions(verify=False))
    assert Learner(out, A, B).info.params_sha256 == h0
    with monkeypatch.context() as m:
        _crash_on_replace(m, crash_at)
        with pytest.raises(KeyboardInterrupt):
            export_model(pt1, out, ExportOptions(verify=False))
    assert Learner(out, A, B).info.params_sha256 == (h0 if crash_at <= 2 else h1)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    export_model(pt2, out, ExportOptions(verify=False))  # the next export recovers and writes a clean pair
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.init.onnx", "model.onnx", "src"]
    assert Learner(out, A, B).info.params_sha256 == h2


def test_recover_promotes_or_drops_staged_files(tmp_path: Path) -> None:
    import hashlib

    dep, ptr = tmp_path / "d", tmp_path / "p"
    dep.write_bytes(b"old")
    ptr.write_bytes(hashlib.sha256(b"new").hexdigest().encode())
    files.staged_path(dep).write_bytes(b"new")
    files.recover([dep, ptr])
    assert dep.read_bytes() == b"new" and not files.staged_path(dep).exists()
    files.staged_path(dep).write_bytes(b"stray")
    files.recover([dep, ptr])
    assert dep.read_bytes() == b"new" and not files.staged_path(dep).exists()
    with pytest.raises(ValueError, match="sha256"):
        files.atomic_write_files([(dep, b"x"), (ptr, b"no hash here")])


# -- 8. stale temp files -----------------------------------------------------------------------


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temp_files_of_the_same_target_are_cleaned(onnx_path: Path, tmp_path: Path) -> None:
    target = tmp_path / "user.npz"
    host = files._host_tag()
    dead = tmp_path / f".user.npz.{host}.{_dead_pid()}.deadbeef.tmp"
    alive = tmp_path / f".user.npz.{host}.{os.getppid()}.cafef00d.tmp"
    other_host = tmp_path / ".user.npz.0badc0de.1.12345678.tmp"
    old_style = tmp_path / ".user.npz.abc123.tmp"
    other_target = tmp_path / f".other.npz.{host}.{_dead_pid()}.deadbeef.tmp"
    for p in (dead, alive, other_host, old_style, other_target):
        p.write_bytes(b"x" * 100)
    ancient = time.time() - files.STALE_AFTER_S - 10
    os.utime(old_style, (ancient, ancient))
    Learner(onnx_path, A, B).save(target)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert dead.name not in left and old_style.name not in left  # the writer is gone / far too old
    assert {alive.name, other_host.name, other_target.name, "user.npz"} <= set(left)


def test_sigkilled_saves_leave_no_temp_files_after_the_next_save(onnx_path: Path, tmp_path: Path) -> None:
    target = tmp_path / "user.npz"
    code = textwrap.dedent(
        f"""
        import time
        from vsml_runtime.files import atomic_write
        def write(f):
            f.write(b"partial" * 1000)
            f.flush()
            print("WRITING", flush=True)
            time.sleep(60)
        atomic_write({str(target)!r}, write)
        """
    )
    for _ in range(3):
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "WRITING"
        proc.kill()
        proc.wait()
    # each killed writer's temp file was removed by the next write: only the last one is left
    assert len([p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]) == 1
    Learner(onnx_path, A, B).save(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["user.npz"]
    Learner.load(target)


# -- 12. vsml-train misuse ------------------------------------------------------------------------


def test_vsml_train_misuse_gives_one_line_errors(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    res = CliRunner().invoke(cli, ["--resume", "--out", str(run)])
    assert res.exit_code == 2 and "no checkpoint" in res.output and "--method or --preset" in res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)
    (run / "checkpoint.pt").write_bytes(b"x")
    res = CliRunner().invoke(cli, ["--preset", "es-cpu", "--out", str(run), "--iterations", "1"])
    assert res.exit_code == 2 and "add --resume" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(cli, ["--resume"])
    assert res.exit_code == 2 and "--out" in res.output


def test_large_folders_are_listed_at_most_once_per_interval(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(files, "LARGE_FOLDER", 3)
    for i in range(5):
        (tmp_path / f"user{i}.npz").write_bytes(b"x")
    stale = tmp_path / f".user0.npz.{files._host_tag()}.{_dead_pid()}.00000000.tmp"
    files.atomic_write_bytes(tmp_path / "user0.npz", b"1")  # lists the folder: 5 entries, "large"
    stale.write_bytes(b"x")
    files.atomic_write_bytes(tmp_path / "user0.npz", b"2")  # within the interval: not listed again
    assert stale.exists()
    assert files.clean_stale_temps(tmp_path / "user0.npz", force=True) == [stale] and not stale.exists()
