"""Every Python snippet and shell command of the README runs as pasted (or is listed here with why not).

Python blocks run as they are, each in a fresh interpreter in a scratch folder
(those that import torch in the slow suite).
Shell lines (from ``bash`` blocks, continuation lines joined, comments dropped)
must each appear in ``SHELL``, which says how the line is checked:

* ``run``: as pasted (fast suite);
* ``slow``: as pasted, or with cheaper arguments appended (``extra``), in the
  slow suite;
* ``options``: with ``--show-options`` appended, which parses the method,
  preset and every option without training (the run itself takes CPU-minutes
  to hours);
* ``skip``: not run here, with the reason.

The scratch folder links ``vsml_runtime`` and ``examples`` from the checkout,
so relative paths resolve as in the repository root while outputs land in the
scratch folder. ``SUBSTITUTE`` replaces the outputs of earlier training lines
by the shipped learners those lines made (``vsml_runtime/assets/MODEL_CARD.md``).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
BIN = Path(sys.executable).parent

SUBSTITUTE = {
    "runs/clone/model.pt": "vsml_runtime/assets/learners/clone.pt",
    "runs/bptt/model.pt": "vsml_runtime/assets/learners/bptt-mnist.pt",
}
CHEAP_EVAL = " --steps 100 --streams 2 --out eval-out"  # argparse: the last value of an option wins

# line -> (how, extra arguments or the reason)
SHELL: dict[str, tuple[str, str]] = {
    'python3 -m venv .venv && . .venv/bin/activate && pip install torch==2.13.0 && pip install -e ".[cpu,train,dev,sklearn,river]" && vsml-demo': (  # noqa: E501
        "skip",
        "creates a venv and installs: .ci/run does exactly this on every CI run; vsml-demo runs as pasted below",
    ),
    "python -m pytest": ("skip", "the test suite itself"),
    "vsml-eval vsml_runtime/assets/pretrained.pt --dataset fashion-mnist --streams 8": ("slow", CHEAP_EVAL),
    "vsml-eval vsml_runtime/assets/pretrained.onnx --dataset mnist --project 64": ("slow", CHEAP_EVAL),
    "vsml-eval vsml_runtime/assets/pretrained.pt --suite tabular": ("slow", " --steps 20 --streams 1 --no-external"),
    "vsml-eval vsml_runtime/assets/pretrained.pt --suite invariance": ("slow", " --steps 20 --streams 1"),
    "vsml-eval vsml_runtime/assets/pretrained.pt --suite dev-tables": ("slow", " --steps 20 --streams 1 --no-external"),
    "vsml-train --list-presets": ("run", ""),
    "vsml-model set vsml_runtime/assets/pretrained.pt lda-all.pt lda_max_features=null && vsml-export lda-all.pt "
    "lda-all.onnx": ("run", ""),
    "vsml-train --method bptt --preset bptt-cpu --out runs/bptt": ("options", ""),
    "vsml-train --method clone --preset clone-cpu --out runs/clone": ("options", ""),
    "vsml-train --method es --preset es-cpu --out runs/es": ("options", ""),
    "vsml-train --method cmaes --preset cmaes-cpu --init runs/clone/model.pt --out runs/cmaes": ("options", ""),
    "vsml-meta-rnn --out runs/meta-rnn": ("slow", " --iterations 2 --episodes 2"),
    "vsml-train --resume --out runs/bptt": ("skip", "needs the interrupted run above; tests/test_cli_train.py resumes"),
    "vsml-train --method bptt --preset bptt-cpu --show-options": ("run", ""),
    "vsml-train --method bptt --init vsml_runtime/assets/pretrained.pt --out runs/tbptt --episodes 2 "
    "--lr 0.00002 --tasks.steps 1000 --truncation 25 --window-updates true --permute-labels true "
    "--synthetic tabular --synthetic-classes 2 --iterations 80 --compile true": ("options", ""),
    "torchrun --nnodes 2 --nproc-per-node 8 --node-rank 0 --rdzv-backend c10d --rdzv-endpoint node0.example:29500 "
    "--rdzv-id vsml-es -m vsml_train.cli_train --preset es-reference --device cuda --out /shared/runs/es": (
        "skip",
        "needs 2 nodes x 8 GPUs; tests/test_distributed.py runs torchrun on the CPU",
    ),
    'pip install "vsml[cpu]"': ("skip", ".ci/clean_installs installs the built wheel with [cpu] in a clean venv"),
    'pip install "vsml[gpu]"': ("skip", "needs an NVIDIA GPU (bench/gpu_wheels.sh)"),
    'pip install "vsml[gpu]" "onnxruntime-gpu[cuda,cudnn]"': ("skip", "needs an NVIDIA GPU"),
    'pip install "vsml[train,cpu]"': ("skip", ".ci/clean_installs installs the wheel with [cpu,train] in a clean venv"),
    "vsml-export runs/bptt/model.pt model.onnx": ("slow", ""),
    "vsml-export vsml_runtime/assets/pretrained.pt model.onnx --clip none --batch-average full --opset 20 "
    "--exporter dynamo": ("slow", ""),
    "DOCKER_BUILDKIT=1 docker build -t vsml-runtime .": ("skip", "no Docker engine; tests/test_docker.py lays it out"),
    "DOCKER_BUILDKIT=1 docker build -t vsml-runtime --build-arg MODEL_PT=runs/bptt/model.pt .": (
        "skip",
        "no Docker engine; tests/test_docker.py runs the MODEL_PT export step",
    ),
    "docker run --rm --gpus all vsml-runtime": ("skip", "no Docker engine; tests/test_docker.py runs the entry"),
    "docker run --rm vsml-runtime --device cpu": ("skip", "no Docker engine; tests/test_docker.py runs the entry"),
}
# the vsml-serve walk-through talks to a running server: tests/test_serve_api.py sends these requests
SERVE = "needs a running vsml-serve; tests/test_serve_api.py sends the same requests"
SHELL.update(
    {
        line: ("skip", SERVE)
        for line in (
            'pip install "vsml[cpu,serve]" && vsml-serve --features 4 --classes 2',
            """curl -s localhost:8000/v1/learners/alice/learn -d '{"x": [0.1, -1.2, 0.7, 0.0], "y": 1}'""",
            "curl -s localhost:8000/v1/learners/alice/learn -d "
            """'{"x": [[0.3, 0.2, -0.5, 1.0], [0.9, -0.1, 0.0, 0.4]], "y": [0, 1]}'""",
            """curl -s localhost:8000/v1/learners/alice/predict -d '{"x": [0.1, -1.2, 0.7, 0.0]}'""",
            "curl -s localhost:8000/v1/learners/alice",
            "curl -s -X DELETE localhost:8000/v1/learners/alice",
            "curl -s localhost:8000/healthz; curl -s localhost:8000/metrics",
        )
    }
)
# the demo of the first line, as pasted (its 4 x 1,000 steps take a minute or more on 2 cores)
DEMO = "vsml-demo"


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, re.S)


def shell_lines() -> list[str]:
    lines = []
    for body in blocks("bash"):
        for line in body.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#.*$", "", line.strip())
            if line and not line.startswith("#"):
                lines.append(re.sub(r"\s+", " ", line))
    return lines


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    for name in ("vsml_runtime", "examples"):
        (tmp_path / name).symlink_to(REPO / name)
    return tmp_path


def _run(command: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "MPLBACKEND": "Agg"}
    done = subprocess.run(
        ["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, (
        f"{command!r} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    )
    return done


def _substituted(line: str) -> str:
    for old, new in SUBSTITUTE.items():
        line = line.replace(old, new)
    return line


def test_every_shell_line_is_listed() -> None:
    lines = shell_lines()
    unknown = [line for line in lines if line not in SHELL]
    assert not unknown, f"README shell lines missing from tests/test_readme.py SHELL: {unknown}"
    stale = [line for line in SHELL if line not in lines]
    assert not stale, f"SHELL lists lines the README no longer has: {stale}"


def test_no_indented_command_blocks() -> None:
    """Commands live in fenced blocks, where this test finds them."""
    indented = [
        m for m in re.findall(r"\n\n((?:    \S.*\n)+)", README) if re.search(r"^    (pip|vsml-|docker)", m, re.M)
    ]
    assert not indented, indented


def _snippets(torch: bool) -> list[int]:
    """Indices of the Python blocks that import torch (slow suite: the model on 2 cores) or not (fast)."""
    return [i for i, b in enumerate(blocks("python")) if ("import torch" in b) == torch]


def _run_snippet(index: int, scratch: Path) -> None:
    (scratch / "snippet.py").write_text(blocks("python")[index])
    _run(f"{sys.executable} snippet.py", scratch, timeout=600)


@pytest.mark.parametrize("index", _snippets(torch=False))
def test_python_snippet_runs_as_pasted(index: int, scratch: Path) -> None:
    _run_snippet(index, scratch)


@pytest.mark.slow
@pytest.mark.parametrize("index", _snippets(torch=True))
def test_torch_snippet_runs_as_pasted(index: int, scratch: Path) -> None:
    _run_snippet(index, scratch)


@pytest.mark.parametrize("line", [k for k, (how, _) in SHELL.items() if how in ("run", "options")])
def test_cheap_shell_line_runs(line: str, scratch: Path) -> None:
    how, _ = SHELL[line]
    _run(_substituted(line) + (" --show-options" if how == "options" else ""), scratch)


@pytest.mark.slow
@pytest.mark.parametrize("line", [k for k, (how, _) in SHELL.items() if how == "slow"] + [DEMO])
def test_expensive_shell_line_runs(line: str, scratch: Path) -> None:
    extra = SHELL[line][1] if line in SHELL else ""
    _run(_substituted(line) + extra, scratch, timeout=900)
