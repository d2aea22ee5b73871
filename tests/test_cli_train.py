"""`vsml-train`: presets, option parsing, an end-to-end run on real data, resume from the command line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from tests.conftest import shared_dataset_dir
from vsml_train.cli_train import cli, parse_overrides
from vsml_train.methods import registry
from vsml_train.methods.tasks import TaskMix, TaskOptions
from vsml_train.model.config import VSMLConfig
from vsml_train.model.model_file import load_model


def test_every_preset_builds() -> None:
    names = registry.list_presets()
    assert {"es-cpu", "es-reference", "bptt-cpu", "bptt-reference", "cmaes-cpu", "cmaes-reference"} <= set(names)
    for name in names:
        spec = registry.build_spec(None, name)
        assert spec.method in registry.METHODS


def test_reference_presets_hold_the_reference_defaults() -> None:
    es = registry.build_spec(None, "es-reference")
    o = es.options
    assert (o.pairs, o.sigma, o.lr, o.tasks.steps, o.tasks.examples, es.run.iterations) == (
        1024,
        0.05,
        0.025,
        500,
        1,
        10000,
    )
    assert o.tasks.project_dim == 784 and o.tasks.projection_pool == 1 and o.tasks.project_fraction == 0.5
    assert es.config == VSMLConfig()
    bp = registry.build_spec(None, "bptt-reference")
    assert (bp.options.lr, bp.options.grad_clip, bp.options.episodes, bp.config.layer_norm) == (1e-3, 25.0, 128, True)
    cm = registry.build_spec(None, "cmaes-reference")
    o = cm.options
    assert (o.popsize, o.sigma0, o.tasks.steps, cm.run.iterations) == (64, 0.1, 10000, 200)
    probe = registry.build_spec(None, "bptt-cpu")  # the 2-core CPU probe preset
    assert probe.config.layer_norm and probe.config.backward_pass
    t = probe.options.tasks
    assert (t.project_dim, t.permute_labels, t.datasets, probe.options.lr, probe.options.episodes) == (
        32,
        True,
        ("mnist",),
        2e-3,
        16,
    )
    assert (t.steps, t.long_steps) == (100, 200)


def test_overrides_resolve_and_parse() -> None:
    assert parse_overrides(["--lr", "0.1", "--tasks.steps=7", "--layer-norm"]) == {
        "lr": "0.1",
        "tasks.steps": "7",
        "layer-norm": "true",
    }
    spec = registry.build_spec(
        "es",
        None,
        {"lr": "0.5", "tasks.steps": "7", "layer-norm": "true", "hidden": "8,4", "project_dim": "none", "seed": "3"},
        string_values=True,
    )
    assert spec.options.lr == 0.5 and spec.options.tasks.steps == 7 and spec.config.layer_norm
    assert spec.config.hidden == (8, 4) and spec.options.tasks.project_dim is None and spec.run.seed == 3
    with pytest.raises(ValueError, match="unknown option 'nope'"):
        registry.build_spec("es", None, {"nope": "1"}, string_values=True)
    with pytest.raises(ValueError, match="expected true or false"):
        registry.build_spec("es", None, {"layer_norm": "maybe"}, string_values=True)
    with pytest.raises(ValueError, match="is for method"):
        registry.build_spec("bptt", "es-cpu")


def test_cli_rejects_unknown_options() -> None:
    res = CliRunner().invoke(cli, ["--method", "es", "--bogus", "1", "--show-options"])
    assert res.exit_code == 2 and "unknown option 'bogus'" in res.output
    res = CliRunner().invoke(cli, ["--preset", "es-cpu", "--pairs", "3", "--show-options"])
    assert res.exit_code == 0 and "options.pairs = 3" in res.output


def test_projection_flag_trains_small_and_meta_test_stays_full_size() -> None:
    shared_dataset_dir("mnist")
    mix = TaskMix(TaskOptions(steps=5, project_dim=32, permute_labels=True, block=2), seed=0)
    ep = mix.sample(0, 1, 4)
    assert tuple(ep.x.shape) == (5, 3, 1, 32) and ep.n_classes == 10
    assert torch.equal(mix.sample(0, 2, 3).x, ep.x[:, 1:2])  # any slice, same streams
    raw = TaskMix(TaskOptions(steps=5, block=2), seed=0).sample(0, 0, 2)
    assert raw.x.shape[-1] == 784


def test_end_to_end_run_and_resume(tmp_path: Path) -> None:
    shared_dataset_dir("mnist")
    shared_dataset_dir("fashion-mnist")
    out = tmp_path / "run"
    tiny = ["--pairs", "2", "--steps", "4", "--eval-steps", "20", "--eval-streams", "1", "--checkpoint-every", "1"]
    args = ["--preset", "es-cpu", *tiny, "--progress", "false", "--out", str(out)]
    res = CliRunner().invoke(cli, [*args, "--iterations", "1"])
    assert res.exit_code == 0, res.output
    model = load_model(out / "model.pt")  # weights_only load inside
    assert model.meta["method"] == "es" and model.meta["iterations"] == 1 and model.meta["seed"] == 0
    assert model.meta["data"]["datasets"] == ["mnist"] and model.meta["data"]["project_dim"] == 32
    assert "meta_test/fashion-mnist/acc" in model.meta["final_metrics"]
    assert model.config.layer_norm and model.meta["version"]
    res = CliRunner().invoke(cli, ["--resume", "--out", str(out), "--iterations", "2"])
    assert res.exit_code == 0, res.output
    assert load_model(out / "model.pt").meta["iterations"] == 2
    res = CliRunner().invoke(cli, ["--resume", "--out", str(out), "--lr", "1"])
    assert res.exit_code == 2 and "only run options may change" in res.output
    # a run started from --init resumes from its checkpoint alone
    out2 = tmp_path / "from-init"
    args2 = ["--preset", "es-cpu", *tiny, "--progress", "false", "--init", str(out / "model.pt"), "--out", str(out2)]
    res = CliRunner().invoke(cli, [*args2, "--iterations", "1"])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(cli, ["--resume", "--out", str(out2), "--iterations", "2"])
    assert res.exit_code == 0, res.output
    assert load_model(out2 / "model.pt").meta["iterations"] == 2
