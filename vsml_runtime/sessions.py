"""ONNX Runtime sessions for an exported model: device choice, options, caching, specialisation.

Dimension letters as in ``vsml_runtime.format``: P learners, E examples per
step, A inputs, B classes, H1.. hidden sizes.

* ``load_model`` opens ``model.onnx`` and its init graph, checks that they
  belong together and picks the device ("auto": CUDA when it really comes
  up, else CPU; "cuda": CUDA or an error, never a silent CPU fallback).
  Before ONNX Runtime parses anything it verifies the step digest
  (``vsml_runtime.digest``) and finds the init graph by the sha256 the step
  records (``model.init.onnx``, or the ``.next`` an interrupted export
  left); after, it checks that both graphs have exactly the inputs, outputs
  and fixed sizes their metadata names. Every bad file raises
  ``FormatError``; ONNX Runtime's own fallback (and its stdout banner) is
  off.
* ``specialised`` gives a session of the same step graph with every
  symbolic size fixed (``add_free_dimension_override_by_name``): ONNX Runtime
  then folds all shape arithmetic and the E > 1 test away at load time, which
  halves the per-step overhead of small models. Learners use it for their
  fixed sizes and fall back to the generic session for odd-sized calls.

Sessions are safe to run from several threads, so learners of the same file,
device and sizes share them (small LRU caches); every learner keeps its own
state and IOBindings.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import digest
from . import format as fmt
from .files import staged_path

try:
    import onnxruntime as ort
except ImportError as exc:  # exercised by a subprocess test
    raise ImportError(
        "vsml_runtime needs ONNX Runtime: install it with "
        '`pip install "vsml[cpu]"` (CPU) or `pip install "vsml[gpu]"` (NVIDIA GPU, CUDA 13)'
    ) from exc

Device = str  # "auto" | "cpu" | "cuda" | "cuda:N"
_CACHE_SIZE = 32


def resolve_device(device: Device) -> tuple[str, int]:
    """("auto" | "cpu" | "cuda", device id) from the user's string; ValueError otherwise."""
    d = str(device).lower()
    if d in ("auto", "cpu", "cuda"):
        return d, 0
    if d.startswith("cuda:") and d[5:].isdigit():
        return "cuda", int(d[5:])
    raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")


def session_options(threads: int, dims: dict[str, int] | None = None) -> ort.SessionOptions:
    """Sequential execution, ``threads`` intra-op threads, no spinning, full graph optimisation."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    # services run many things: never busy-wait between ops
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    for name, value in (dims or {}).items():
        so.add_free_dimension_override_by_name(name, int(value))
    return so


def _providers(kind: str, dev_id: int, cuda_graph: bool) -> list[Any]:
    if kind == "cpu":
        return ["CPUExecutionProvider"]
    opts = {
        "device_id": str(dev_id),
        "enable_cuda_graph": "1" if cuda_graph else "0",
        "use_tf32": "0",  # full fp32 GEMMs: the learner must match the exported step's numbers
    }
    return [("CUDAExecutionProvider", opts), "CPUExecutionProvider"]


_PRELOADED = False


def _preload_cuda_libraries() -> None:
    """Let ONNX Runtime find CUDA / cuDNN installed as pip packages (``pip install "vsml[gpu]"``)."""
    global _PRELOADED
    if _PRELOADED:
        return
    _PRELOADED = True
    preload = getattr(ort, "preload_dlls", None)
    if preload is not None:
        with contextlib.suppress(Exception):  # best effort: the session creation reports what is missing
            preload()


def make_session(
    model_bytes: bytes,
    device: Device,
    threads: int,
    dims: dict[str, int] | None = None,
    cuda_graph: bool = False,
) -> tuple[ort.InferenceSession, str]:
    """A session on the requested device: (session, "cpu" | "cuda").

    "auto" takes CUDA when the CUDA provider is installed AND a session on it
    actually comes up (ONNX Runtime otherwise falls back to CPU quietly);
    "cuda" raises ``RuntimeError`` instead of falling back.
    """
    kind, dev_id = resolve_device(device)
    if kind in ("auto", "cuda"):
        available = ort.get_available_providers()
        reason = None
        if "CUDAExecutionProvider" not in available:
            reason = (
                f"this ONNX Runtime build has no CUDAExecutionProvider (providers: {available}); "
                'install the GPU build: pip uninstall onnxruntime && pip install "vsml[gpu]"'
            )
        else:
            _preload_cuda_libraries()
            try:
                sess = ort.InferenceSession(
                    model_bytes,
                    session_options(threads, dims),
                    providers=_providers("cuda", dev_id, cuda_graph),
                    enable_fallback=0,  # no silent retry on CPU, no banner printed to stdout
                )
                if sess.get_providers()[0] == "CUDAExecutionProvider":
                    return sess, "cuda"
                reason = "ONNX Runtime could not initialise CUDA (driver, CUDA or cuDNN libraries missing?)"
            except Exception as exc:  # ORT raises RuntimeError and its own Fail types
                reason = f"creating a CUDA session failed: {exc}"
        if kind == "cuda":
            raise RuntimeError(f"device={device!r} was requested but CUDA is not usable: {reason}")
    sess = ort.InferenceSession(
        model_bytes, session_options(threads, dims), providers=["CPUExecutionProvider"], enable_fallback=0
    )
    return sess, "cpu"


@dataclass(frozen=True)
class LoadedModel:
    """One exported model: metadata, the generic step session and the init session."""

    info: fmt.ModelInfo
    session: ort.InferenceSession  # the step graph, all sizes symbolic, on ``device``
    device: str  # "cpu" | "cuda"
    device_id: int
    threads: int
    init_session: ort.InferenceSession  # the initial state, always on CPU
    path: Path
    step_bytes: bytes = b""

    @property
    def key(self) -> tuple[Any, ...]:
        return (str(self.path.resolve()), self.info.params_sha256, self.device, self.device_id, self.threads)


_MODELS: OrderedDict[tuple[Any, ...], LoadedModel] = OrderedDict()
_SPECIALISED: OrderedDict[tuple[Any, ...], ort.InferenceSession] = OrderedDict()
_LOCK = threading.Lock()


def _cached(cache: OrderedDict[tuple[Any, ...], Any], key: tuple[Any, ...], make: Callable[[], Any]) -> Any:
    with _LOCK:
        if key in cache:
            cache.move_to_end(key)
            return cache[key]
    value = make()
    with _LOCK:
        cache[key] = value
        while len(cache) > _CACHE_SIZE:
            cache.popitem(last=False)
    return value


def load_model(model_path: str | os.PathLike[str], device: Device, threads: int) -> LoadedModel:
    """Sessions for ``model.onnx`` and its init graph, checked to belong together (cached)."""
    path = Path(model_path)
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} does not exist (export one with `vsml-export model.pt {path}`)")
    resolve_device(device)
    st = path.stat()
    init = fmt.init_path_for(path)
    init_st = (init.stat().st_size, init.stat().st_mtime_ns) if init.is_file() else None
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns, init_st, str(device).lower(), int(threads))
    return _cached(_MODELS, key, lambda: _load(path, device, threads))


def _find_init(path: Path, info: fmt.ModelInfo) -> tuple[Path, bytes]:
    """The init graph whose sha256 the step graph records: ``<stem>.init.onnx``, the recorded name, or staged.

    A staged ``<name>.next`` is what an export interrupted between its renames
    left (``vsml_runtime.files.atomic_write_files``): the pair is still whole.
    """
    names = [fmt.init_path_for(path)]
    if info.init_file:
        recorded = path.with_name(Path(info.init_file).name)  # a bare name: never outside the folder
        if recorded not in names:
            names.append(recorded)
    candidates = [p for name in names for p in (name, staged_path(name))]
    if not info.init_sha256:
        raise fmt.FormatError(f"{path} records no init graph sha256 ({fmt.K_INIT_SHA256}): re-export it")
    existing = [c for c in candidates if c.is_file()]
    if not existing:
        raise FileNotFoundError(f"{path} needs its init graph {names[0]} (written next to it by vsml-export)")
    for c in existing:
        data = c.read_bytes()
        if hashlib.sha256(data).hexdigest() == info.init_sha256:
            return c, data
    raise fmt.FormatError(f"{existing[0]} is not the init graph exported with {path} (sha256 differs)")


def _check_io(sess: ort.InferenceSession, want_in: list[str], want_out: list[str], where: str) -> None:
    got_in = [i.name for i in sess.get_inputs()]
    got_out = [o.name for o in sess.get_outputs()]
    if sorted(got_in) != sorted(want_in) or sorted(got_out) != sorted(want_out):
        raise fmt.FormatError(
            f"{where}: the graph's inputs {got_in} / outputs {got_out} are not the ones its metadata names "
            f"({want_in} / {want_out})"
        )


def _check_shapes(args: list[Any], layouts: dict[str, tuple[Any, ...]], where: str) -> None:
    """Each named graph argument has the layout's rank, and its fixed sizes where both are numbers."""
    for arg in args:
        want = layouts.get(arg.name)
        if want is None:
            continue
        shape = list(arg.shape or [])
        if len(shape) != len(want):
            raise fmt.FormatError(f"{where}: {arg.name} has rank {len(shape)}, its metadata says {len(want)}")
        for got, w in zip(shape, want, strict=True):
            if isinstance(got, int) and isinstance(w, int) and got != w:
                raise fmt.FormatError(f"{where}: {arg.name} has a dimension {got}, its metadata says {w}")


def _check_graphs(info: fmt.ModelInfo, step: ort.InferenceSession, init: ort.InferenceSession, where: str) -> None:
    """The graphs have exactly the inputs, outputs and fixed sizes the metadata describes."""
    names = list(info.state.names)
    _check_io(step, [*names, fmt.X_NAME, fmt.Y_NAME], [fmt.NEW_PREFIX + n for n in names] + [fmt.LOGITS_NAME], where)
    _check_io(init, [*info.init.noise_inputs, fmt.EXAMPLES_NAME], names, f"{where} (init graph)")
    dims = info.state.dims
    layouts: dict[str, tuple[Any, ...]] = {n: tuple(dims.get(a, a) for a in info.state.layout[n]) for n in names}
    layouts[fmt.X_NAME], layouts[fmt.Y_NAME] = ("P", "E", "A"), ("P", "E")
    _check_shapes(step.get_inputs(), layouts, where)
    noise = {n: ("P", "A", "B", dims["H"]) for n in info.init.noise_inputs}
    _check_shapes(init.get_inputs(), noise, f"{where} (init graph)")
    for arg in [*step.get_inputs(), *init.get_inputs()]:
        want = "tensor(int64)" if arg.name == fmt.Y_NAME else "tensor(float)"
        if arg.type != want:
            raise fmt.FormatError(f"{where}: input {arg.name} has type {arg.type}, expected {want}")


def _load(path: Path, device: Device, threads: int) -> LoadedModel:
    step_bytes = path.read_bytes()
    props = digest.check_step_digest(step_bytes, str(path))  # before ONNX Runtime parses anything
    info = fmt.parse_metadata(props, str(path))
    if info.graph != "step":
        raise fmt.FormatError(f"{path} holds the {info.graph!r} graph; pass the step graph (model.onnx)")
    init_path, init_bytes = _find_init(path, info)
    init_info = fmt.parse_metadata(digest.metadata(init_bytes, str(init_path)), str(init_path))
    if init_info.params_sha256 != info.params_sha256 or init_info.graph != "init":
        raise fmt.FormatError(f"{init_path} and {path} come from different models (V_M hashes differ)")
    session, where = _open(step_bytes, str(path), lambda b: make_session(b, device, threads))
    init_session, _ = _open(
        init_bytes,
        str(init_path),
        lambda b: (
            ort.InferenceSession(b, session_options(1), providers=["CPUExecutionProvider"], enable_fallback=0),
            "cpu",
        ),
    )
    _check_graphs(info, session, init_session, str(path))
    return LoadedModel(
        info=info,
        session=session,
        device=where,
        device_id=resolve_device(device)[1],
        threads=threads,
        init_session=init_session,
        path=path,
        step_bytes=step_bytes,
    )


def _open(
    model_bytes: bytes, where: str, make: Callable[[bytes], tuple[ort.InferenceSession, str]]
) -> tuple[ort.InferenceSession, str]:
    try:
        return make(model_bytes)
    except RuntimeError as exc:
        if "CUDA is not usable" in str(exc):
            raise
        raise fmt.FormatError(f"{where} is not a readable ONNX model: {exc}") from exc
    except Exception as exc:  # ORT raises its own exception types for unreadable files
        raise fmt.FormatError(f"{where} is not a readable ONNX model: {exc}") from exc


def specialised(model: LoadedModel, dims: dict[str, int], cuda_graph: bool = False) -> ort.InferenceSession:
    """The step graph with every symbolic size fixed to ``dims`` (cached), on the model's device."""
    device = f"cuda:{model.device_id}" if model.device == "cuda" else "cpu"
    key = (*model.key, tuple(sorted(dims.items())), cuda_graph)

    def make() -> ort.InferenceSession:
        sess, where = make_session(model.step_bytes, device, model.threads, dims, cuda_graph)
        assert where == model.device
        return sess

    return _cached(_SPECIALISED, key, make)
