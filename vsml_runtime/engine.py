"""The engine under ``Learner`` and ``LearnerPool``: sessions, state buffers, one step.

Dimension letters: P learners, E examples per step of one learner, A inputs,
B classes, N state, M message.

The engine knows nothing about the model's math: it reads names, layouts
and constants from the ONNX metadata (``vsml_runtime.format``), draws the
initial-state noise (the only distribution it knows, named in the metadata)
and runs the two exported graphs.

State lives in two buffer sets (ping-pong): a step reads set ``cur`` and
writes set ``1 - cur``; only a successful run flips ``cur``, so a failed call
leaves the state exactly as before, and ``predict`` is a run that does not
flip. On CPU the buffers are numpy arrays bound with IOBinding (no per-call
allocation); large pools run in chunks of learners whose state fits in the
cache. On CUDA the buffers are device ``OrtValue``s that stay on the GPU
between calls; only x, y and the logits cross the bus.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import format as fmt

try:
    import onnxruntime as ort
except ImportError as exc:  # pragma: no cover - exercised by a subprocess test
    raise ImportError(
        "vsml_runtime needs ONNX Runtime: install it with "
        '`pip install "vsml[cpu]"` (CPU) or `pip install "vsml[gpu]"` (NVIDIA GPU, CUDA 12)'
    ) from exc

Device = str  # "auto" | "cpu" | "cuda" | "cuda:N"

# cells (A_k * B_k * E summed over layers) a CPU chunk of learners should hold:
# about 1 MiB of h + c per chunk keeps one chunk's working set inside L2
CHUNK_CELLS = 16_384
INPUT_LIMIT = 1e6  # inputs are clipped to +-INPUT_LIMIT: float32 products cannot overflow to inf


@dataclass(frozen=True)
class LoadedModel:
    """Both graphs of one exported model, as ONNX Runtime sessions (shared by learners)."""

    info: fmt.ModelInfo
    session: ort.InferenceSession  # the step, on ``device``
    device: str  # "cpu" | "cuda"
    init_session: ort.InferenceSession  # the initial state, always on CPU
    path: Path


_CACHE: OrderedDict[tuple[Any, ...], LoadedModel] = OrderedDict()
_CACHE_LOCK = threading.Lock()
_CACHE_SIZE = 16


def load_model(model_path: str | os.PathLike[str], device: Device, threads: int) -> LoadedModel:
    """Sessions for ``model.onnx`` and its init graph, checked to belong together.

    ONNX Runtime sessions are safe to run from several threads, so learners
    of the same file, device and thread count share them (a small cache keyed
    by path, size and modification time); every learner keeps its own state
    and IOBindings.
    """
    path = Path(model_path)
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} does not exist (export one with `vsml-export model.pt {path}`)")
    st = path.stat()
    init = fmt.init_path_for(path)
    init_st = (init.stat().st_size, init.stat().st_mtime_ns) if init.is_file() else None
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns, init_st, str(device).lower(), int(threads))
    with _CACHE_LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
    loaded = _load_uncached(path, device, threads)
    with _CACHE_LOCK:
        _CACHE[key] = loaded
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return loaded


def _load_uncached(path: Path, device: Device, threads: int) -> LoadedModel:
    step_bytes = path.read_bytes()
    session, where = _open(step_bytes, str(path), lambda b: make_session(b, device, threads))
    info = fmt.parse_metadata(dict(session.get_modelmeta().custom_metadata_map), str(path))
    if info.graph != "step":
        raise fmt.FormatError(f"{path} holds the {info.graph!r} graph; pass the step graph (model.onnx)")
    # <stem>.init.onnx next to the step graph, else the name recorded at export (the sha256 decides)
    candidates = [fmt.init_path_for(path)] + ([path.with_name(info.init_file)] if info.init_file else [])
    init_path = next((c for c in candidates if c.is_file()), candidates[0])
    if not init_path.is_file():
        raise FileNotFoundError(f"{path} needs its init graph {init_path} (written next to it by vsml-export)")
    init_bytes = init_path.read_bytes()
    if info.init_sha256 and hashlib.sha256(init_bytes).hexdigest() != info.init_sha256:
        raise fmt.FormatError(f"{init_path} is not the init graph exported with {path} (sha256 differs)")
    init_session, _ = _open(
        init_bytes,
        str(init_path),
        lambda b: (ort.InferenceSession(b, _session_options(1), providers=["CPUExecutionProvider"]), "cpu"),
    )
    init_info = fmt.parse_metadata(dict(init_session.get_modelmeta().custom_metadata_map), str(init_path))
    if init_info.params_sha256 != info.params_sha256:
        raise fmt.FormatError(f"{init_path} and {path} come from different models (V_M hashes differ)")
    return LoadedModel(info=info, session=session, device=where, init_session=init_session, path=path)


def _open(model_bytes: bytes, where: str, make: Any) -> tuple[ort.InferenceSession, str]:
    try:
        return make(model_bytes)
    except RuntimeError as exc:
        if "CUDA is not usable" in str(exc):
            raise
        raise fmt.FormatError(f"{where} is not a readable ONNX model: {exc}") from exc
    except Exception as exc:  # ORT raises its own exception types for unreadable files
        raise fmt.FormatError(f"{where} is not a readable ONNX model: {exc}") from exc


def _session_options(threads: int) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    # services run many things: never busy-wait between ops
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return so


def resolve_device(device: Device) -> tuple[str, int]:
    """("cpu"|"cuda"|"auto", device id) from the user's string."""
    d = str(device).lower()
    if d in ("auto", "cpu", "cuda"):
        return d, 0
    if d.startswith("cuda:") and d[5:].isdigit():
        return "cuda", int(d[5:])
    raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")


def make_session(model_bytes: bytes, device: Device, threads: int) -> tuple[ort.InferenceSession, str]:
    """An ORT session on the requested device; returns (session, "cpu" | "cuda").

    "auto" takes CUDA when the CUDA provider is installed AND a session on it
    actually comes up (ORT otherwise falls back to CPU silently); "cuda"
    raises instead of falling back.
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
            try:
                sess = ort.InferenceSession(
                    model_bytes,
                    _session_options(threads),
                    providers=[("CUDAExecutionProvider", {"device_id": dev_id}), "CPUExecutionProvider"],
                )
                if sess.get_providers()[0] == "CUDAExecutionProvider":
                    return sess, "cuda"
                reason = "ONNX Runtime could not initialise CUDA (driver, CUDA or cuDNN libraries missing?)"
            except Exception as exc:  # ORT raises RuntimeError / its own Fail types
                reason = f"creating a CUDA session failed: {exc}"
        if kind == "cuda":
            raise RuntimeError(f"device='cuda' was requested but CUDA is not usable: {reason}")
    sess = ort.InferenceSession(model_bytes, _session_options(threads), providers=["CPUExecutionProvider"])
    return sess, "cpu"


# ---------------------------------------------------------------------------
# the initial state's noise


def truncated_normal(rng: np.random.Generator, shape: Sequence[int], low: float, high: float) -> np.ndarray:
    """Standard normal draws restricted to [low, high] by resampling (float64)."""
    z = rng.standard_normal(tuple(shape))
    bad = (z < low) | (z > high)
    while bad.any():
        z[bad] = rng.standard_normal(int(bad.sum()))
        bad = (z < low) | (z > high)
    return z


def draw_noise(info: fmt.ModelInfo, seeds: Sequence[int], layer_sizes: list[int]) -> list[np.ndarray]:
    """Per layer k, [P, A_k, B_k, H] float32 noise; learner i draws from ``default_rng(seeds[i])``."""
    spec = info.init
    if spec.distribution != "truncated_normal":
        raise fmt.FormatError(f"unknown init noise distribution {spec.distribution!r}")
    half = info.state.dims["H"]
    out = [np.empty((len(seeds), a, b, half), np.float32) for a, b in itertools.pairwise(layer_sizes)]
    for i, seed in enumerate(seeds):
        rng = np.random.default_rng(int(seed))
        for k, (a, b) in enumerate(itertools.pairwise(layer_sizes)):
            out[k][i] = truncated_normal(rng, (a, b, half), spec.low, spec.high)
    return out


# ---------------------------------------------------------------------------
# the engine


class Engine:
    """P learners x E examples of one exported model, on one device.

    Not thread-safe by itself: ``Learner`` / ``LearnerPool`` hold a lock
    around every call.
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        n_learners: int,
        n_features: int,
        n_classes: int,
        n_examples: int,
        *,
        device: Device = "auto",
        threads: int = 1,
        chunk: int | None = None,
    ) -> None:
        for name, v, lo in (
            ("n_learners", n_learners, 1),
            ("n_features", n_features, 1),
            ("n_classes", n_classes, 2),
            ("examples_per_step", n_examples, 1),
            ("threads", threads, 1),
        ):
            if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < lo:
                raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
        _, self.device_id = resolve_device(device)  # raises ValueError for a bad device string
        self.model = load_model(model_path, device, threads)
        self.info = self.model.info
        self.n_learners, self.n_features, self.n_classes, self.n_examples = (
            int(n_learners),
            int(n_features),
            int(n_classes),
            int(n_examples),
        )
        self.layer_sizes = self.info.state.layer_sizes(self.n_features, self.n_classes)
        self.names = list(self.info.state.names)
        self.shapes = self.info.state.resolve(self.n_features, self.n_classes, self.n_learners, self.n_examples)
        n_values = sum(int(np.prod(s)) for s in self.shapes.values())
        if n_values > 2**31:
            raise ValueError(
                f"the state for n_features={n_features}, n_classes={n_classes}, {n_learners} learners x "
                f"{n_examples} examples would hold {n_values:,} numbers (> 2**31): too large"
            )
        self.session, self.device = self.model.session, self.model.device
        self.init_session = self.model.init_session
        self._out_names = [fmt.NEW_PREFIX + n for n in self.names]
        cells = sum(a * b for a, b in zip(self.layer_sizes[:-1], self.layer_sizes[1:], strict=False)) * self.n_examples
        self.chunk = int(chunk) if chunk else max(1, CHUNK_CELLS // max(cells, 1))
        self.chunk = min(self.chunk, self.n_learners)
        self._x = np.zeros((self.n_learners, self.n_examples, self.n_features), np.float32)
        self._y = np.zeros((self.n_learners, self.n_examples), np.int64)
        if self.device == "cuda":
            self._init_cuda()
        else:
            self._init_cpu()

    # -- buffers ------------------------------------------------------------

    def _init_cpu(self) -> None:
        self._bufs = [{n: np.zeros(s, np.float32) for n, s in self.shapes.items()} for _ in range(2)]
        self._logits = np.zeros((self.n_learners, self.n_examples, self.n_classes), np.float32)
        self.cur = 0
        # one IOBinding per (direction, chunk), bound once to views of the buffers
        self._bindings: list[list[tuple[slice, ort.IOBinding]]] = []
        for src in (0, 1):
            row = []
            for p0 in range(0, self.n_learners, self.chunk):
                sl = slice(p0, min(p0 + self.chunk, self.n_learners))
                row.append((sl, self._bind_cpu(self._bufs[src], self._bufs[1 - src], sl)))
            self._bindings.append(row)

    def _bind_cpu(self, src: dict[str, np.ndarray], dst: dict[str, np.ndarray], sl: slice) -> ort.IOBinding:
        io = self.session.io_binding()
        for n in self.names:
            io.bind_ortvalue_input(n, ort.OrtValue.ortvalue_from_numpy(src[n][sl]))
            io.bind_ortvalue_output(fmt.NEW_PREFIX + n, ort.OrtValue.ortvalue_from_numpy(dst[n][sl]))
        io.bind_ortvalue_input(fmt.X_NAME, ort.OrtValue.ortvalue_from_numpy(self._x[sl]))
        io.bind_ortvalue_input(fmt.Y_NAME, ort.OrtValue.ortvalue_from_numpy(self._y[sl]))
        io.bind_ortvalue_output(fmt.LOGITS_NAME, ort.OrtValue.ortvalue_from_numpy(self._logits[sl]))
        return io

    def _init_cuda(self) -> None:
        def dev(shape: tuple[int, ...], dtype: type) -> ort.OrtValue:
            return ort.OrtValue.ortvalue_from_shape_and_type(list(shape), dtype, "cuda", self.device_id)

        self._dev = [{n: dev(s, np.float32) for n, s in self.shapes.items()} for _ in range(2)]
        self._dx = dev(self._x.shape, np.float32)
        self._dy = dev(self._y.shape, np.int64)
        self._logits = np.zeros((self.n_learners, self.n_examples, self.n_classes), np.float32)
        self._dlogits = ort.OrtValue.ortvalue_from_numpy(self._logits)  # CPU: ORT copies the logits back
        self.cur = 0
        self._cuda_bindings = []
        for src in (0, 1):
            io = self.session.io_binding()
            for n in self.names:
                io.bind_ortvalue_input(n, self._dev[src][n])
                io.bind_ortvalue_output(fmt.NEW_PREFIX + n, self._dev[1 - src][n])
            io.bind_ortvalue_input(fmt.X_NAME, self._dx)
            io.bind_ortvalue_input(fmt.Y_NAME, self._dy)
            io.bind_ortvalue_output(fmt.LOGITS_NAME, self._dlogits)
            self._cuda_bindings.append(io)

    # -- state --------------------------------------------------------------

    def initial_state(self, seeds: Sequence[int]) -> dict[str, np.ndarray]:
        """Fresh states for len(seeds) learners, from the exported init graph."""
        noise = draw_noise(self.info, seeds, self.layer_sizes)
        feed = {n: z for n, z in zip(self.info.init.noise_inputs, noise, strict=True)}
        feed[fmt.EXAMPLES_NAME] = np.zeros(self.n_examples, np.float32)
        out = self.init_session.run(self.names, feed)
        return {n: np.ascontiguousarray(v, dtype=np.float32) for n, v in zip(self.names, out, strict=True)}

    def get_state(self, learners: slice | np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Copies of the current state (all learners, or a subset along P)."""
        idx = slice(None) if learners is None else learners
        if self.device == "cuda":
            return {n: self._dev[self.cur][n].numpy()[idx].copy() for n in self.names}
        return {n: self._bufs[self.cur][n][idx].copy() for n in self.names}

    def set_state(self, state: dict[str, np.ndarray], learners: slice | np.ndarray | None = None) -> None:
        """Overwrite the current state (all learners, or a subset along P); arrays already validated."""
        idx = slice(None) if learners is None else learners
        if self.device == "cuda":
            for n in self.names:
                full = self._dev[self.cur][n].numpy()
                full[idx] = state[n]
                self._dev[self.cur][n].update_inplace(np.ascontiguousarray(full))
            return
        for n in self.names:
            self._bufs[self.cur][n][idx] = state[n]

    # -- running ------------------------------------------------------------

    def step(self, x: np.ndarray, y: np.ndarray, commit: bool) -> np.ndarray:
        """One step of every learner: x [P, E, A] float32, y [P, E] int64 -> logits [P, E, B] (a copy).

        ``commit=False`` (predict) leaves the state as it was.
        """
        np.copyto(self._x, x)
        np.copyto(self._y, y)
        if self.device == "cuda":
            self._dx.update_inplace(self._x)
            self._dy.update_inplace(self._y)
            io = self._cuda_bindings[self.cur]
            self.session.run_with_iobinding(io)
            io.synchronize_outputs()
        else:
            for _, io in self._bindings[self.cur]:
                self.session.run_with_iobinding(io)
        if commit:
            self.cur = 1 - self.cur
        return self._logits.copy()

    def run_explicit(
        self, state: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray
    ) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """One step from an explicit host state (any P, E): (new state, logits); the engine's state is untouched."""
        feed: dict[str, Any] = dict(state)
        feed[fmt.X_NAME] = x
        feed[fmt.Y_NAME] = y
        out = self.session.run([*self._out_names, fmt.LOGITS_NAME], feed)
        return dict(zip(self.names, out[:-1], strict=True)), out[-1]
