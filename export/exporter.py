"""`model.pt` -> `model.onnx` + `model.init.onnx` (one VSML step, and the initial state).

Dimension letters (docs/model.md §8): P learners, E examples per step, A inputs,
B classes, N state, M message. The graph's dimension names (``A``, ``H1``..
for the hidden layer sizes, ``B``, ``H`` = N/2 of the noise) are names of the
file format (``vsml_runtime.format``), not letters of the code.

Pipeline (``export_model``):

1. load the model file (``vsml_train.model.model_file.load_model``), apply the
   export-time overrides (clip bound, batch averaging) to its config;
2. trace ONE call of ``vsml_train.model.step.step`` (``StepModule``) with the
   ONNX-tuned impl (``impl="onnx"``, ``vsml_train.model.visit_onnx``), at small
   sizes chosen to be distinct, with P, E, A, B and hidden sizes marked
   dynamic, and once more with ``impl="onnx-rows"`` (the micro ticks in
   cache-sized blocks of rows), the two joined under an ``If`` on the size of
   the state (``vsml_export.switch``); trace ``InitModule`` the same way;
3. stamp the metadata (``vsml_runtime.format``), run ``onnx.checker``;
4. verify: ONNX Runtime against the PyTorch ``step`` (default fast
   implementation) for a few consecutive steps at two OTHER size sets, so a
   size baked into the graph by the tracer, or a wrong number from the
   exporter, fails the export instead of shipping;
5. record the init graph's sha256 and the step graph's own digest
   (``vsml_runtime.digest``) in the step graph's metadata;
6. write both files with ``vsml_runtime.files.atomic_write_files``: temp
   files, the init graph staged as ``.next``, the step graph (the pointer)
   renamed into place, then the init graph; a crash at any point leaves a
   pair the runtime loads.

Exporters: ``legacy`` (the TorchScript tracer, ``dynamo=False``; the default)
and ``dynamo`` (``torch.export``). Both give graphs of the same speed in ONNX
Runtime (the export impl makes the E > 1 averaging an ONNX ``If`` in both).
The default is the legacy tracer because it exports in about a second where
dynamo takes tens of seconds, and because dynamo was seen to bake a
dynamic size into the graph silently (``math.sqrt`` of a symbolic size, once
in ``state_from_noise``, specialised A to the trace value without an error);
the verification step catches such graphs whichever exporter made them.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import onnx
import torch

from vsml_runtime import digest
from vsml_runtime import format as fmt
from vsml_runtime.files import atomic_write_files
from vsml_train import __version__ as project_version
from vsml_train.model.config import VSMLConfig
from vsml_train.model.model_file import ModelFile, ModelFileError, load_model, params_hash

from .options import _UNSET, OPSETS, Exporter, ExportError, ExportOptions, ExportResult, apply_overrides
from .trace import init_spec, size_names, state_spec, trace_init, trace_step
from .verify import VERIFY_TOL, verify

__all__ = [
    "OPSETS",
    "VERIFY_TOL",
    "_UNSET",
    "ExportError",
    "ExportOptions",
    "ExportResult",
    "Exporter",
    "export_graphs",
    "export_model",
    "init_spec",
    "size_names",
    "state_spec",
    "verify",
]


# ---------------------------------------------------------------------------
# metadata and checks


def _metadata(model: ModelFile, config: VSMLConfig, graph: onnx.ModelProto, kind: str, options: ExportOptions) -> dict:
    meta = {k: v for k, v in model.meta.items() if _jsonable(v)}
    mean, std = meta.get("input_mean"), meta.get("input_std")
    contract = fmt.InputContract(
        mean=float(mean) if isinstance(mean, int | float) else None,
        std=float(std) if isinstance(std, int | float) else None,
    )
    return {
        fmt.K_FORMAT: fmt.FORMAT,
        fmt.K_FORMAT_VERSION: str(fmt.FORMAT_VERSION),
        fmt.K_GRAPH: kind,
        fmt.K_PROJECT_VERSION: project_version,
        fmt.K_CONFIG: json.dumps(config.to_dict(), sort_keys=True),
        fmt.K_CLIP: json.dumps(config.clip),
        fmt.K_BATCH_AVERAGE: config.batch_average,
        fmt.K_STATE: state_spec(config).to_json(),
        fmt.K_INIT: init_spec(config).to_json(),
        fmt.K_PARAMS_SHA256: params_hash(model.params),
        fmt.K_OPSET: str(options.opset),
        fmt.K_INPUTS: json.dumps([i.name for i in graph.graph.input]),
        fmt.K_OUTPUTS: json.dumps([o.name for o in graph.graph.output]),
        fmt.K_EXPORTER: options.exporter,
        fmt.K_INPUT_CONTRACT: contract.to_json(),
        fmt.K_MODEL_META: json.dumps(meta, sort_keys=True),
    }


def _jsonable(v: object) -> bool:
    try:
        json.dumps(v)
    except (TypeError, ValueError):
        return False
    return True


def _set_metadata(graph: onnx.ModelProto, props: dict[str, str]) -> None:
    del graph.metadata_props[:]
    for k, v in sorted(props.items()):
        entry = graph.metadata_props.add()
        entry.key, entry.value = k, v
    graph.doc_string = "VSML (Kirsch & Schmidhuber 2021) exported with vsml-export; see metadata vsml.*"


def _check(graph: onnx.ModelProto, options: ExportOptions, what: str) -> None:
    opsets = {o.domain: o.version for o in graph.opset_import}
    if opsets.get("", opsets.get("ai.onnx")) != options.opset:
        raise ExportError(f"{what}: the exporter produced opset {opsets}, expected {options.opset}")
    try:
        onnx.checker.check_model(graph, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"{what}: onnx.checker rejected the exported graph: {exc}") from exc


# ---------------------------------------------------------------------------
# the whole export


def _check_writable(path: Path) -> None:
    folder = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise ExportError(f"cannot write {path}: it is a folder")
    if not folder.is_dir():
        raise ExportError(f"cannot write {path}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ExportError(f"cannot write {path}: folder {folder} is not writable")
    for p in (path, fmt.init_path_for(path)):
        if p.exists() and not os.access(p, os.W_OK):
            raise ExportError(f"cannot write {p}: the existing file is read-only")


def _write_pair(files: list[tuple[Path, bytes]]) -> None:
    """Write both graphs (``vsml_runtime.files.atomic_write_files``, the step graph last); no partial files."""
    try:
        atomic_write_files(files)
    except OSError as exc:
        raise ExportError(f"cannot write {files[-1][0]}: {exc}") from exc


def seal_step(step_graph: onnx.ModelProto) -> bytes:
    """The step graph's bytes with its digest (``vsml.step_sha256``) recorded; checked on the final bytes."""
    digest_hex = digest.step_digest(step_graph.SerializeToString())
    entry = step_graph.metadata_props.add()
    entry.key, entry.value = fmt.K_STEP_SHA256, digest_hex
    data = step_graph.SerializeToString()
    if (
        digest.metadata(data).get(fmt.K_STEP_SHA256) != digest.step_digest(data)
        or digest.step_digest(data) != digest_hex
    ):
        raise ExportError("the step graph's digest changed when it was serialised again")  # pragma: no cover
    return data


def export_graphs(model: ModelFile, options: ExportOptions) -> tuple[onnx.ModelProto, onnx.ModelProto, float | None]:
    """Build, check and verify both graphs in memory: (step, init, max verify error or None)."""
    if options.opset not in OPSETS:
        raise ExportError(f"opset must be one of {OPSETS}, got {options.opset}")
    config = apply_overrides(model.config, options)
    params = {k: v.detach().to(torch.float32) for k, v in model.params.items()}
    try:
        step_graph = trace_step(params, config, options)
        init_graph = trace_init(params, config, options)
    except ExportError:
        raise
    except Exception as exc:  # the exporters raise many kinds
        raise ExportError(f"the {options.exporter} exporter failed: {type(exc).__name__}: {exc}") from exc
    _set_metadata(step_graph, _metadata(model, config, step_graph, "step", options))
    _set_metadata(init_graph, _metadata(model, config, init_graph, "init", options))
    _check(step_graph, options, "step graph")
    _check(init_graph, options, "init graph")
    err = verify(step_graph, init_graph, params, config) if options.verify else None
    return step_graph, init_graph, err


def export_model(
    model_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    options: ExportOptions | None = None,
) -> ExportResult:
    """Export ``model_path`` (a model.pt) to ``out_path`` (+ its ``.init.onnx``).

    Raises ``ExportError`` (with the cause) for a missing / corrupt / non-VSML
    model file, an unwritable output path, an exporter failure or a failed
    verification; nothing is written then.
    """
    options = options or ExportOptions()
    out = Path(out_path)
    init_out = fmt.init_path_for(out)
    _check_writable(out)
    try:
        model = load_model(model_path)
    except ModelFileError as exc:
        raise ExportError(str(exc)) from exc
    step_graph, init_graph, err = export_graphs(model, options)
    init_bytes = init_graph.SerializeToString()
    entry = step_graph.metadata_props.add()
    entry.key, entry.value = fmt.K_INIT_FILE, init_out.name
    entry = step_graph.metadata_props.add()
    entry.key, entry.value = fmt.K_INIT_SHA256, hashlib.sha256(init_bytes).hexdigest()
    _write_pair([(init_out, init_bytes), (out, seal_step(step_graph))])
    return ExportResult(
        step_path=out,
        init_path=init_out,
        params_sha256=params_hash(model.params),
        config=apply_overrides(model.config, options),
        max_verify_error=err,
    )
