"""What a user's install gets: console scripts that name the extra they need, presets as package data.

The real installs (a built wheel in clean venvs, with and without the train
extra) run in CI: ``.ci/clean_installs``.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from vsml_runtime import launch
from vsml_train.methods import registry

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def test_every_console_script_goes_through_the_launcher() -> None:
    scripts = PYPROJECT["project"]["scripts"]
    assert set(launch.COMMANDS) <= set(scripts)
    for command in launch.COMMANDS:
        module, func = scripts[command].split(":")
        assert module == "vsml_runtime.launch" and callable(getattr(launch, func))
        target_module, target_func = launch.COMMANDS[command][0].split(":")
        assert callable(getattr(__import__(target_module, fromlist=[target_func]), target_func))


@pytest.mark.parametrize("command", sorted(launch.COMMANDS))
def test_without_the_train_extra_a_command_prints_one_line(
    command: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real = launch.importlib.util.find_spec
    monkeypatch.setattr(launch.importlib.util, "find_spec", lambda name: None if name == "torch" else real(name))
    with pytest.raises(SystemExit) as exc:
        launch.run(command)
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and '"train" extra' in err and "torch" in err and command in err


def test_the_launcher_imports_no_torch() -> None:
    code = "import sys, vsml_runtime.launch; assert 'torch' not in sys.modules and 'vsml_train' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_presets_ship_as_package_data() -> None:
    data = PYPROJECT["tool"]["setuptools"]["package-data"]["vsml_train"]
    assert "presets/*.toml" in data
    (folder,) = registry.PRESET_DIRS
    assert folder == Path(registry.__file__).resolve().parents[1] / "presets"  # inside the vsml_train package
    assert {"es-cpu", "bptt-cpu", "clone-cpu", "cmaes-cpu"} <= set(registry.list_presets())
    assert not (REPO / "presets").exists()  # one copy, the packaged one
