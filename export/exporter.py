"""`model.pt` -> `model.onnx` + `model.init.onnx` (one VSML step, and the initial state).

Dimension letters: P learners, E examples per step, A inputs, B classes,
H1.. hidden layer sizes, N state, M message.

Pipeline (``export_model``):

1. load the model file (``vsml_train.model_file.load_model``), apply the
   export-time overrides (clip bound, batch averaging) to its config;
2. trace ONE call of ``vsml_train.step.step`` (``StepModule``) with the
   export-tuned kernels swapped in (``kernels.export_kernels``), at small
   sizes chosen to be distinct, with P, E, A, B and hidden sizes marked
   dynamic; trace ``InitModule`` the same way;
3. stamp the metadata (``vsml_runtime.format``), run ``onnx.checker``;
4. verify: ONNX Runtime against the PyTorch ``step`` (default fast
   implementation) for a few consecutive steps at two OTHER size sets, so a
   size baked into the graph by the tracer, or a wrong number from the
   exporter, fails the export instead of shipping;
5. write both files atomically (temp files + rename), init first.

Exporters: ``legacy`` (the TorchScript tracer, ``dynamo=False``; the default)
and ``dynamo`` (``torch.export``). Both give graphs of the same speed in ONNX
Runtime (the tuned kernels make the E > 1 averaging an ONNX ``If`` in both).
The default is the legacy tracer because it exports in about a second where
dynamo takes tens of seconds, and because dynamo was seen to bake a
dynamic size into the graph silently (``math.sqrt`` of a symbolic size in
``state_from_noise`` specialised A to the trace value without an error); the
verification step catches such graphs whichever exporter made them.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import itertools
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
import torch
from torch import Tensor

from vsml_runtime import format as fmt
from vsml_train import __version__ as project_version
from vsml_train.config import BatchAverage, VSMLConfig
from vsml_train.model_file import ModelFile, ModelFileError, load_model, params_hash
from vsml_train.state import init_noise, init_state, state_from_noise, state_names

from .kernels import export_kernels
from .module import InitModule, StepModule

Exporter = Literal["dynamo", "legacy"]
OPSETS = (18, 19, 20)
_UNSET = object()

# sizes the graphs are traced at: all distinct and different from N, M and 1,
# so that no tracer can confuse two axes or bake a size-1 special case
_TRACE_P, _TRACE_E, _TRACE_A, _TRACE_B = 2, 3, 7, 5
_TRACE_HIDDEN = (6, 9, 11, 13, 15, 17)
# sizes the exported graph is verified at (different from the trace sizes)
_VERIFY_SIZES = ((1, 1, 4, 2, (3, 4, 5, 3, 4, 5)), (3, 2, 10, 3, (5, 2, 7, 2, 3, 2)))
VERIFY_TOL = 1e-4


class ExportError(RuntimeError):
    """The export failed (bad model file, unwritable path, failed verification...)."""


@dataclass(frozen=True)
class ExportOptions:
    """Knobs of ``export_model``.

    Attributes:
        opset: ONNX opset of the default domain (18..20).
        exporter: "legacy" (TorchScript tracer, default) or "dynamo" (torch.export).
        clip: override of the state clip bound (None disables); default: the model's.
        batch_average: override of the averaging mode; default: the model's.
        tuned: trace with the export-tuned kernels (``kernels.py``); False
            traces ``visit_fast`` as is (slower graph, same numbers).
        verify: compare ONNX Runtime with PyTorch before writing.
    """

    opset: int = 18
    exporter: Exporter = "legacy"
    clip: float | object | None = _UNSET
    batch_average: BatchAverage | object = _UNSET
    tuned: bool = True
    verify: bool = True


@dataclass(frozen=True)
class ExportResult:
    """What ``export_model`` wrote."""

    step_path: Path
    init_path: Path
    params_sha256: str
    config: VSMLConfig
    max_verify_error: float | None


def size_names(config: VSMLConfig) -> list[str]:
    """Names of the layer sizes: ["A", "H1", ..., "B"]."""
    return ["A", *(f"H{i + 1}" for i in range(len(config.hidden))), "B"]


def state_spec(config: VSMLConfig) -> fmt.StateSpec:
    """Names and axes of the state tensors (``vsml_train.state`` layout)."""
    sizes = size_names(config)
    layout: dict[str, tuple[str, ...]] = {}
    for name in state_names(config):
        if name == "t":
            layout[name] = ("P", "E")
            continue
        kind, k = name.rsplit("_", 1)
        k_i = int(k)
        if kind in ("h", "c"):
            layout[name] = ("P", "E", sizes[k_i], sizes[k_i + 1], "N")
        else:  # bwd_k: message layer k receives, one per output of layer k
            layout[name] = ("P", "E", sizes[k_i + 1], "M")
    dims = {"N": config.state_size, "M": config.msg_size, "H": config.state_size // 2}
    dims.update({s: h for s, h in zip(sizes[1:-1], config.hidden, strict=True)})
    return fmt.StateSpec(names=tuple(state_names(config)), layout=layout, sizes=tuple(sizes), dims=dims)


def init_spec(config: VSMLConfig) -> fmt.InitSpec:
    """The noise the runtime draws for the init graph."""
    return fmt.InitSpec(
        noise_inputs=tuple(f"noise_{k}" for k in range(config.n_layers)),
        noise_layout=("P", "A_k", "B_k", "H"),
        distribution="truncated_normal",
        low=-2.0,
        high=2.0,
    )


def apply_overrides(config: VSMLConfig, options: ExportOptions) -> VSMLConfig:
    """The config with the export-time clip / batch averaging overrides applied."""
    changes: dict[str, object] = {}
    if options.clip is not _UNSET:
        changes["clip"] = options.clip
    if options.batch_average is not _UNSET:
        changes["batch_average"] = options.batch_average
    try:
        return config.replace(**changes) if changes else config
    except ValueError as exc:
        raise ExportError(str(exc)) from exc


# ---------------------------------------------------------------------------
# tracing


def _example_state(
    params: dict[str, Tensor], config: VSMLConfig, p: int, e: int, sizes: list[int], seed: int
) -> dict[str, Tensor]:
    """A random state (non-zero h, c, bwd, t) with the given layer sizes."""
    cfg = config.replace(hidden=tuple(sizes[1:-1]))
    gen = torch.Generator().manual_seed(seed)
    st = init_state(cfg, sizes[0], sizes[-1], p, e, generator=gen, params=params).to_dict()
    out = {}
    for name, t in st.items():
        out[name] = (torch.rand(t.shape, generator=gen) * 2 - 1) * (0.9 if name != "t" else 0) + t
        if name == "t":
            out[name] = torch.full(t.shape, 3.0)
    return out


def _step_args(
    params: dict[str, Tensor], config: VSMLConfig, p: int, e: int, sizes: list[int], seed: int
) -> tuple[Tensor, ...]:
    gen = torch.Generator().manual_seed(seed + 1)
    st = _example_state(params, config, p, e, sizes, seed)
    x = torch.randn(p, e, sizes[0], generator=gen)
    y = torch.randint(-1, sizes[-1], (p, e), generator=gen)
    return (*(st[n] for n in state_names(config)), x, y)


def _trace_sizes(config: VSMLConfig) -> list[int]:
    return [_TRACE_A, *_TRACE_HIDDEN[: len(config.hidden)], _TRACE_B]


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporters' progress prints and warnings (errors still raise)."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lv in zip(loggers, levels, strict=True):
            lg.setLevel(lv)


def _to_onnx(
    module: torch.nn.Module,
    args: tuple[Tensor, ...],
    input_names: list[str],
    output_names: list[str],
    axes: list[dict[int, str]],
    options: ExportOptions,
) -> onnx.ModelProto:
    """Export ``module(*args)`` with the named dynamic axes; returns the ModelProto."""
    if options.exporter == "dynamo":
        from torch.export import Dim

        dims: dict[str, Dim] = {}
        shapes = []
        for ax in axes:
            shapes.append({i: dims.setdefault(name, Dim(name, min=1)) for i, name in ax.items()})
        program = torch.onnx.export(
            module,
            args,
            None,
            input_names=input_names,
            output_names=output_names,
            opset_version=options.opset,
            dynamo=True,
            dynamic_shapes=(tuple(shapes),),
        )
        assert program is not None
        return program.model_proto
    if options.exporter == "legacy":
        buf = io.BytesIO()
        torch.onnx.export(
            module,
            args,
            buf,
            input_names=input_names,
            output_names=output_names,
            opset_version=options.opset,
            dynamo=False,
            dynamic_axes={n: ax for n, ax in zip(input_names, axes, strict=True)},
        )
        return onnx.load_from_string(buf.getvalue())
    raise ExportError(f"unknown exporter {options.exporter!r}; expected 'dynamo' or 'legacy'")


def trace_step(params: dict[str, Tensor], config: VSMLConfig, options: ExportOptions) -> onnx.ModelProto:
    """The step graph (no metadata yet)."""
    spec = state_spec(config)
    names = list(spec.names)
    inputs = [*names, fmt.X_NAME, fmt.Y_NAME]
    outputs = [fmt.NEW_PREFIX + n for n in names] + [fmt.LOGITS_NAME]
    axes = [dict(enumerate(spec.layout[n])) for n in names]
    axes = [{i: a for i, a in ax.items() if a not in ("N", "M")} for ax in axes]
    axes += [{0: "P", 1: "E", 2: spec.sizes[0]}, {0: "P", 1: "E"}]
    args = _step_args(params, config, _TRACE_P, _TRACE_E, _trace_sizes(config), seed=0)
    dynamo = options.exporter == "dynamo"
    with _quiet(), torch.no_grad():
        if options.tuned:
            with export_kernels(dynamo=dynamo) as impl:
                module = StepModule(params, config, impl=impl).eval()  # type: ignore[arg-type]
                return _to_onnx(module, args, inputs, outputs, axes, options)
        module = StepModule(params, config).eval()
        return _to_onnx(module, args, inputs, outputs, axes, options)


def trace_init(params: dict[str, Tensor], config: VSMLConfig, options: ExportOptions) -> onnx.ModelProto:
    """The init graph (no metadata yet)."""
    spec = state_spec(config)
    ispec = init_spec(config)
    sizes = _trace_sizes(config)
    h = config.state_size // 2
    gen = torch.Generator().manual_seed(0)
    noise = [torch.randn(_TRACE_P, a, b, h, generator=gen).clamp(-2, 2) for a, b in itertools.pairwise(sizes)]
    args = (*noise, torch.zeros(_TRACE_E))
    axes = [{0: "P", 1: spec.sizes[k], 2: spec.sizes[k + 1]} for k in range(config.n_layers)] + [{0: "E"}]
    with _quiet(), torch.no_grad():
        module = InitModule(params, config).eval()
        return _to_onnx(module, args, [*ispec.noise_inputs, fmt.EXAMPLES_NAME], list(spec.names), axes, options)


# ---------------------------------------------------------------------------
# metadata, checks, verification


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


def _ort_session(graph: onnx.ModelProto):
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise ExportError('verification needs ONNX Runtime: pip install "vsml[cpu]" (or pass --no-verify)') from exc
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(graph.SerializeToString(), so, providers=["CPUExecutionProvider"])


def verify(
    step_graph: onnx.ModelProto,
    init_graph: onnx.ModelProto,
    params: dict[str, Tensor],
    config: VSMLConfig,
    n_steps: int = 3,
) -> float:
    """Max |ONNX Runtime - PyTorch| over states and logits at sizes unlike the trace's.

    Runs ``n_steps`` consecutive steps, each from the PyTorch state, and the
    init graph against ``init_from_noise``'s formula via ``init_state``'s
    layout. Raises ``ExportError`` above ``VERIFY_TOL``.
    """
    sess = _ort_session(step_graph)
    init_sess = _ort_session(init_graph)
    names = state_names(config)
    worst = 0.0
    for i, (p, e, a, b, hidden) in enumerate(_VERIFY_SIZES):
        sizes = [a, *hidden[: len(config.hidden)], b]
        args = _step_args(params, config, p, e, sizes, seed=10 + i)
        state = dict(zip(names, args[: len(names)], strict=True))
        gen = torch.Generator().manual_seed(20 + i)
        for t in range(n_steps):
            x = torch.randn(p, e, a, generator=gen) * (3.0 if t == 1 else 1.0)
            y = torch.randint(-1, b, (p, e), generator=gen)
            feed = {n: v.numpy() for n, v in state.items()} | {fmt.X_NAME: x.numpy(), fmt.Y_NAME: y.numpy()}
            got = sess.run(None, feed)
            module = StepModule(params, config)
            with torch.no_grad():
                ref = module(*(state[n] for n in names), x, y)
            for name, g, r in zip([*names, fmt.LOGITS_NAME], got, ref, strict=True):
                if g.shape != tuple(r.shape):
                    raise ExportError(f"verification: {name} has shape {g.shape}, PyTorch gives {tuple(r.shape)}")
                err = float(np.max(np.abs(g - r.numpy()))) if g.size else 0.0
                if not err <= VERIFY_TOL:
                    raise ExportError(
                        f"verification failed: {name} differs from PyTorch by {err:.3g} > {VERIFY_TOL} at "
                        f"P={p} E={e} sizes={sizes} step {t} (exporter bug or a size baked into the graph)"
                    )
                worst = max(worst, err)
            state = dict(zip(names, ref[: len(names)], strict=True))
        worst = max(worst, _verify_init(init_sess, params, config, p, e, sizes, seed=30 + i))
    return worst


def _verify_init(
    sess: object, params: dict[str, Tensor], config: VSMLConfig, p: int, e: int, sizes: list[int], seed: int
) -> float:
    """Init graph vs ``state_from_noise`` on the same ``init_noise`` draws."""
    cfg = config.replace(hidden=tuple(sizes[1:-1]))
    noise = init_noise(cfg, sizes[0], sizes[-1], p, generator=torch.Generator().manual_seed(seed))
    ref = state_from_noise(cfg, params, noise, e).to_dict()
    feed = {f"noise_{k}": z.numpy() for k, z in enumerate(noise)} | {fmt.EXAMPLES_NAME: np.zeros(e, np.float32)}
    got = sess.run(None, feed)  # type: ignore[attr-defined]
    worst = 0.0
    for name, g in zip(state_names(config), got, strict=True):
        r = ref[name].numpy()
        if g.shape != r.shape:
            raise ExportError(f"init verification: {name} has shape {g.shape}, state_from_noise gives {r.shape}")
        err = float(np.max(np.abs(g - r))) if g.size else 0.0
        if not err <= 1e-6:
            raise ExportError(
                f"init verification failed: {name} differs from state_from_noise by {err:.3g} at sizes {sizes}"
            )
        worst = max(worst, err)
    return worst


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
    """Write every file to a temp file in its folder, then rename them in order; no partial files."""
    temps: list[tuple[str, Path]] = []
    try:
        for path, data in files:
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            temps.append((tmp, path))
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        for tmp, path in temps:
            os.replace(tmp, path)
    except OSError as exc:
        raise ExportError(f"cannot write {files[-1][0]}: {exc}") from exc
    finally:
        for tmp, _ in temps:
            Path(tmp).unlink(missing_ok=True)


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
    _write_pair([(init_out, init_bytes), (out, step_graph.SerializeToString())])
    return ExportResult(
        step_path=out,
        init_path=init_out,
        params_sha256=params_hash(model.params),
        config=apply_overrides(model.config, options),
        max_verify_error=err,
    )
