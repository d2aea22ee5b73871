"""Console-script entry points of the commands that need the ``train`` extra (torch, onnx, ...).

``vsml-train``, ``vsml-eval``, ``vsml-export``, ``vsml-demo``,
``vsml-meta-rnn`` and ``vsml-model`` are installed with every install of the package, but only
run with the ``train`` extra. Without it they print one line that names the
extra and exit with status 1, instead of a traceback from ``import torch``.
This module imports nothing but the standard library until the check passes.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable

# command -> (module:function of the real entry point, modules it needs)
COMMANDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "vsml-train": ("vsml_train.cli_train:main", ("torch", "click")),
    "vsml-eval": ("vsml_train.cli_eval:main", ("torch", "click", "matplotlib")),
    "vsml-export": ("vsml_export.cli:main", ("torch", "onnx")),
    "vsml-demo": ("vsml_train.demo:main", ("torch", "matplotlib")),
    "vsml-meta-rnn": ("vsml_train.cli_meta_rnn:main", ("torch",)),
    "vsml-model": ("vsml_train.cli_model:main", ("torch",)),
}


def missing(command: str) -> list[str]:
    """The modules ``command`` needs that are not installed."""
    return [m for m in COMMANDS[command][1] if importlib.util.find_spec(m) is None]


def run(command: str) -> None:
    """Run ``command``'s real entry point, or say in one line which extra it needs (exit status 1)."""
    absent = missing(command)
    if absent:
        print(
            f'{command}: needs the "train" extra ({", ".join(absent)} not installed): '
            f'pip install "vsml[cpu,train]" (on CPU, install torch first: see the README)',
            file=sys.stderr,
        )
        sys.exit(1)
    target, _ = COMMANDS[command]
    module, func = target.split(":")
    main: Callable[[], object] = getattr(importlib.import_module(module), func)
    sys.exit(main())


def train() -> None:
    run("vsml-train")


def evaluate() -> None:
    run("vsml-eval")


def export() -> None:
    run("vsml-export")


def demo() -> None:
    run("vsml-demo")


def meta_rnn() -> None:
    run("vsml-meta-rnn")


def model() -> None:
    run("vsml-model")
