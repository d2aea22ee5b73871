"""The layers of the project, enforced by reading every import (ast; nothing is imported).

    vsml_runtime        numpy + ONNX Runtime; nothing of vsml_train / vsml_export, never torch
    vsml_train.model    the model; nothing else of vsml_train (but the stdlib-only seeds, options, files)
    vsml_train.data     numpy only (no torch), nothing of vsml_train above it
    vsml_train.evaluation   builds on model and data, never on the methods
    vsml_train.methods  builds on model and data; the meta-test is passed in, never imported
    vsml_export         only vsml_train.model and vsml_runtime.format (plus stdlib, torch, onnx)

and no import cycles among the modules. Every import counts, also one inside a
function (a lazy import is still a dependency).
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = {"vsml_train": REPO / "train", "vsml_export": REPO / "export", "vsml_runtime": REPO / "vsml_runtime"}
FIRST_PARTY = tuple(PACKAGES)
# stdlib-only helpers any layer may use: the seed table, the options plumbing, and the atomic writer (which another
# change moves into vsml_runtime; until then the exporter and the model files reach it here)
SHARED = {"vsml_train.seeds", "vsml_train.options", "vsml_train.files"}


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the three packages."""
    out = {}
    for pkg, root in PACKAGES.items():
        for path in sorted(root.rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([pkg, *parts])] = path
    return out


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES.get(name, Path()).name == "__init__.py"


def _imports(name: str) -> Iterator[str]:
    """Every module ``name`` imports (absolute names; ``from pkg import mod`` names the module)."""
    tree = ast.parse(MODULES[name].read_text(), filename=str(MODULES[name]))
    here = name if _is_package(name) else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target == "__future__":
                continue
            subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in MODULES]
            yield from subs
            if len(subs) < len(node.names):  # some names are attributes of target itself
                yield target


def _first_party(name: str) -> set[str]:
    return {m for m in _imports(name) if m.split(".")[0] in FIRST_PARTY}


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _in_layer(prefix: str) -> list[str]:
    found = [m for m in MODULES if _under(m, prefix)]
    assert found, f"no modules under {prefix}"
    return found


def test_the_import_reader_sees_the_imports() -> None:
    assert "vsml_train.model.config" in _first_party("vsml_train.model.params")
    assert "vsml_train.model.visits" in _first_party("vsml_train.model.step")


def _violations(layer: str, bad: Callable[[str], bool], *, all_imports: bool = False) -> list[tuple[str, str]]:
    """(module, import) pairs of ``layer`` whose import ``bad`` flags (first-party imports unless ``all_imports``)."""
    found = {(m, i) for m in _in_layer(layer) for i in (_imports(m) if all_imports else _first_party(m)) if bad(i)}
    return sorted(found)


def _top(name: str) -> str:
    return name.split(".")[0]


def _is_cli(name: str) -> bool:
    return name.rpartition(".")[2].startswith("cli_")


def test_runtime_imports_nothing_of_training_or_torch() -> None:
    bad = _violations("vsml_runtime", lambda i: _top(i) in ("vsml_train", "vsml_export", "torch"), all_imports=True)
    assert not bad, f"vsml_runtime must run without torch and the training code: {bad}"


def test_model_imports_nothing_else_of_the_package() -> None:
    bad = _violations("vsml_train.model", lambda i: not _under(i, "vsml_train.model") and i not in SHARED)
    assert not bad, f"vsml_train.model is the bottom layer: {bad}"


def test_data_is_numpy_only() -> None:
    def foreign(i: str) -> bool:
        if i in SHARED:
            return False
        return _top(i) == "torch" or (_top(i) in FIRST_PARTY and not _under(i, "vsml_train.data"))

    bad = _violations("vsml_train.data", foreign, all_imports=True)
    assert not bad, f"vsml_train.data must stay numpy only: {bad}"


def test_evaluation_never_imports_the_methods_or_the_clis() -> None:
    bad = _violations("vsml_train.evaluation", lambda i: _under(i, "vsml_train.methods") or _is_cli(i))
    assert not bad, f"the evaluation builds on model and data only: {bad}"


def test_methods_never_import_the_evaluation() -> None:
    bad = _violations("vsml_train.methods", lambda i: _under(i, "vsml_train.evaluation") or _is_cli(i))
    assert not bad, f"the methods receive the meta-test as an argument: {bad}"


def test_export_imports_only_the_model_and_the_runtime_format() -> None:
    # vsml_train itself: only for __version__ (the package root, which re-exports the model)
    # the runtime's file format: metadata (format), the step graph's digest (digest) and the one
    # atomic writer of the project (files), all torch-free
    allowed = {"vsml_runtime.format", "vsml_runtime.digest", "vsml_runtime.files", "vsml_train", *SHARED}

    def foreign(i: str) -> bool:
        return not (_under(i, "vsml_export") or _under(i, "vsml_train.model") or i in allowed)

    bad = _violations("vsml_export", foreign)
    assert not bad, f"vsml_export traces the model and writes the runtime's format: {bad}"


def _cycle() -> list[str] | None:
    graph = {m: sorted(i for i in _first_party(m) if i in MODULES and i != m) for m in MODULES}
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in graph[m]:
            if state.get(n) == 1:
                return [*stack[stack.index(n) :], n]
            if n not in state and (found := visit(n)):
                return found
        stack.pop()
        state[m] = 2
        return None

    for m in graph:
        if m not in state and (found := visit(m)):
            return found
    return None


def test_no_import_cycles() -> None:
    cycle = _cycle()
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])
