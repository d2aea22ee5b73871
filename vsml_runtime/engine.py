"""The engine under ``Learner`` and ``LearnerPool``: state buffers and one step.

Dimension letters: P learners, E examples per step of one learner, A inputs,
B classes, N state, M message.

The engine knows nothing about the model's math: it reads names, layouts
and constants from the ONNX metadata (``vsml_runtime.format``), draws the
initial-state noise (the only distribution it knows, named in the metadata)
and runs the two exported graphs.

State lives in two buffer sets (ping-pong): a step reads set ``cur`` and
writes set ``1 - cur``; only a successful run flips ``cur``, so a failed call
leaves the state exactly as before, and ``predict`` is a run that does not
flip. On CPU the buffers are numpy arrays bound once with IOBinding (no
per-call allocation), and large pools run in chunks of learners whose state
fits in the cache. On CUDA the buffers are device ``OrtValue``s that stay on
the GPU between calls; only x, y and the logits cross the bus, and with
``cuda_graph=True`` each direction of the ping-pong is a captured CUDA graph.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from . import format as fmt
from . import limits
from .sessions import Device, load_model, make_session, resolve_device, specialised

try:
    import onnxruntime as ort
except ImportError:  # pragma: no cover - sessions.py raised the helpful error already
    raise

# cells (A_k * B_k * E summed over layers) a CPU chunk of learners should hold: about 256 KiB of h + c
# at N = 16, so that a chunk's state and the graph's intermediates stay in L2 (measured on one core,
# pools of 64, ms per learner over a single Learner: 784x10 N16 1.16x at 16,384 cells (2 learners) ->
# 1.04x at 1 learner, N32 1.15x -> 1.06x; 64x10 1.30x at 25 learners -> 1.07x at 6)
CHUNK_CELLS = 4_096
INPUT_LIMIT = 1e6  # inputs are clipped to +-INPUT_LIMIT: float32 products cannot overflow to inf


MAX_RESAMPLING_ROUNDS = 200  # the range holds >= half the mass (format.MIN_INIT_MASS): 2**-200 per number


def truncated_normal(rng: np.random.Generator, shape: Sequence[int], low: float, high: float) -> np.ndarray:
    """Standard normal draws restricted to [low, high] by resampling (float64), in bounded rounds.

    Raises FormatError for an empty or inverted range, or when draws are still
    outside it after ``MAX_RESAMPLING_ROUNDS`` rounds (never, for a range the
    metadata check accepts).
    """
    if not (np.isfinite(low) and np.isfinite(high) and low < high):
        raise fmt.FormatError(f"the init noise range [{low}, {high}] is empty or not finite")
    z = rng.standard_normal(tuple(shape))
    bad = (z < low) | (z > high)
    for _ in range(MAX_RESAMPLING_ROUNDS):
        if not bad.any():
            return z
        z[bad] = rng.standard_normal(int(bad.sum()))
        bad = (z < low) | (z > high)
    if bad.any():
        raise fmt.FormatError(f"the init noise range [{low}, {high}] is too narrow to sample")
    return z


def draw_noise(info: fmt.ModelInfo, seeds: Sequence[int], layer_sizes: list[int]) -> list[np.ndarray]:
    """Per layer k, [P, A_k, B_k, H] float32 noise; learner i draws from ``default_rng(seeds[i])``."""
    spec = info.init
    if spec.distribution != "truncated_normal":
        raise fmt.FormatError(f"unknown init noise distribution {spec.distribution!r}")
    half = info.state.dims["H"]
    grids = list(itertools.pairwise(layer_sizes))
    out = [np.empty((len(seeds), a, b, half), np.float32) for a, b in grids]
    for i, seed in enumerate(seeds):
        rng = np.random.default_rng(int(seed))
        for k, (a, b) in enumerate(grids):
            out[k][i] = truncated_normal(rng, (a, b, half), spec.low, spec.high)
    return out


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
        cuda_graph: bool = False,
        memory_limit: int | None = None,
    ) -> None:
        for name, v, lo in (
            ("n_learners", n_learners, 1),
            ("n_features", n_features, 1),
            ("n_classes", n_classes, 2),
            ("examples_per_step", n_examples, 1),
        ):
            if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < lo:
                raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
        if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int | np.integer) or chunk < 1):
            raise ValueError(f"chunk must be None or an integer >= 1, got {chunk!r}")
        threads = limits.check_threads(threads)
        limits.memory_limit(memory_limit)  # ValueError for a bad limit, before any file is read
        resolve_device(device)  # ValueError for a bad device string, before any file is read
        self.model = load_model(model_path, device, threads)
        self.info = self.model.info
        self.device = self.model.device
        self.n_learners, self.n_features = int(n_learners), int(n_features)
        self.n_classes, self.n_examples = int(n_classes), int(n_examples)
        self.layer_sizes = self.info.state.layer_sizes(self.n_features, self.n_classes)
        self.names = list(self.info.state.names)
        self.shapes = self.info.state.resolve(self.n_features, self.n_classes, self.n_learners, self.n_examples)
        n_values = sum(math.prod(s) for s in self.shapes.values())  # Python ints: no overflow
        if n_values > 2**31:
            raise ValueError(
                f"the state for n_features={n_features}, n_classes={n_classes}, {n_learners} learners x "
                f"{n_examples} examples would hold {n_values:,} numbers (> 2**31): too large"
            )
        self._out_names = [fmt.NEW_PREFIX + n for n in self.names]
        cells = sum(a * b for a, b in itertools.pairwise(self.layer_sizes)) * self.n_examples
        if self.device == "cuda":
            self.chunk = self.n_learners  # the GPU wants everything in one call
        else:
            self.chunk = min(int(chunk) if chunk else max(1, CHUNK_CELLS // max(cells, 1)), self.n_learners)
        self.state_numbers = n_values
        needed = limits.estimate_bytes(n_values, n_values // self.n_learners * self.chunk)
        what = f"{self.n_learners} learner(s) at n_features={n_features}, n_classes={n_classes}, E={n_examples}"
        limits.check_memory(needed, memory_limit, what)  # before any buffer is allocated
        self.cuda_graph = bool(cuda_graph) and self.device == "cuda"
        self._x = np.zeros((self.n_learners, self.n_examples, self.n_features), np.float32)
        self._y = np.zeros((self.n_learners, self.n_examples), np.int64)
        self._logits = np.zeros((self.n_learners, self.n_examples, self.n_classes), np.float32)
        self.cur = 0
        if self.device == "cuda":
            self._init_cuda()
        else:
            self._init_cpu()

    # -- sessions -----------------------------------------------------------

    def _dims(self, p: int) -> dict[str, int]:
        """Every symbolic size of the graphs for p learners at this engine's sizes."""
        dims = {"P": p, "E": self.n_examples}
        dims.update(dict(zip(self.info.state.sizes, self.layer_sizes, strict=True)))
        dims[fmt.FEATURES_AXIS] = self.n_features  # x's axis (the first grid is A + 1 with a bias input)
        # e.g. A_lda, the LDA expert's features: fixed where the expert runs; where it does not (0) left
        # symbolic, since ONNX Runtime infers the shapes of the If branch that is not taken as well
        dims.update({k: v for k, v in self.info.state.limited_dims(self.n_features).items() if v > 0})
        return dims

    def _session(self, p: int) -> ort.InferenceSession:
        if self.cuda_graph:  # a captured graph belongs to one set of buffers: never shared
            device = f"cuda:{self.model.device_id}"
            return make_session(self.model.step_bytes, device, self.model.threads, self._dims(p), True)[0]
        return specialised(self.model, self._dims(p))

    # -- buffers ------------------------------------------------------------

    def _init_cpu(self) -> None:
        self._bufs = [{n: np.zeros(s, np.float32) for n, s in self.shapes.items()} for _ in range(2)]
        # one IOBinding per (direction, chunk), bound once to views of the buffers
        self._bindings: list[list[tuple[ort.InferenceSession, ort.IOBinding]]] = []
        for src in (0, 1):
            row = []
            for p0 in range(0, self.n_learners, self.chunk):
                sl = slice(p0, min(p0 + self.chunk, self.n_learners))
                sess = self._session(sl.stop - sl.start)
                row.append((sess, self._bind_cpu(sess, self._bufs[src], self._bufs[1 - src], sl)))
            self._bindings.append(row)

    def _bind_cpu(
        self, sess: ort.InferenceSession, src: dict[str, np.ndarray], dst: dict[str, np.ndarray], sl: slice
    ) -> ort.IOBinding:
        io = sess.io_binding()
        for n in self.names:
            io.bind_ortvalue_input(n, ort.OrtValue.ortvalue_from_numpy(src[n][sl]))
            io.bind_ortvalue_output(fmt.NEW_PREFIX + n, ort.OrtValue.ortvalue_from_numpy(dst[n][sl]))
        io.bind_ortvalue_input(fmt.X_NAME, ort.OrtValue.ortvalue_from_numpy(self._x[sl]))
        io.bind_ortvalue_input(fmt.Y_NAME, ort.OrtValue.ortvalue_from_numpy(self._y[sl]))
        io.bind_ortvalue_output(fmt.LOGITS_NAME, ort.OrtValue.ortvalue_from_numpy(self._logits[sl]))
        return io

    def _init_cuda(self) -> None:
        dev_id = self.model.device_id

        def dev(shape: tuple[int, ...], dtype: type) -> ort.OrtValue:
            return ort.OrtValue.ortvalue_from_shape_and_type(list(shape), dtype, "cuda", dev_id)

        self._dev = [{n: dev(s, np.float32) for n, s in self.shapes.items()} for _ in range(2)]
        self._dx = dev(self._x.shape, np.float32)
        self._dy = dev(self._y.shape, np.int64)
        self._dlogits = dev(self._logits.shape, np.float32)
        sess = self._session(self.n_learners)
        self._cuda_runs: list[tuple[ort.InferenceSession, ort.IOBinding, ort.RunOptions]] = []
        for src in (0, 1):
            io = sess.io_binding()
            for n in self.names:
                io.bind_ortvalue_input(n, self._dev[src][n])
                io.bind_ortvalue_output(fmt.NEW_PREFIX + n, self._dev[1 - src][n])
            io.bind_ortvalue_input(fmt.X_NAME, self._dx)
            io.bind_ortvalue_input(fmt.Y_NAME, self._dy)
            io.bind_ortvalue_output(fmt.LOGITS_NAME, self._dlogits)
            ro = ort.RunOptions()
            if self.cuda_graph:  # one captured graph per direction of the ping-pong
                ro.add_run_config_entry("gpu_graph_id", str(src + 1))
            self._cuda_runs.append((sess, io, ro))

    # -- state --------------------------------------------------------------

    def initial_state(self, seeds: Sequence[int]) -> dict[str, np.ndarray]:
        """Fresh states for len(seeds) learners, from the exported init graph."""
        noise = draw_noise(self.info, seeds, self.layer_sizes)
        feed: dict[str, Any] = dict(zip(self.info.init.noise_inputs, noise, strict=True))
        feed[fmt.EXAMPLES_NAME] = np.zeros(self.n_examples, np.float32)
        out = self.model.init_session.run(self.names, feed)
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

    @property
    def x_buffer(self) -> np.ndarray:
        """[P, E, A] float32: the next step's inputs; callers write here, then call ``run``."""
        return self._x

    @property
    def y_buffer(self) -> np.ndarray:
        """[P, E] int64: the next step's labels (-1 = none)."""
        return self._y

    def run(self, commit: bool) -> np.ndarray:
        """One step of every learner on ``x_buffer`` / ``y_buffer``; returns the logits [P, E, B].

        The returned array is the engine's own buffer: valid until the next
        call. ``commit=False`` (predict) leaves the state as it was.
        """
        if self.device == "cuda":
            self._dx.update_inplace(self._x)
            self._dy.update_inplace(self._y)
            sess, io, ro = self._cuda_runs[self.cur]
            sess.run_with_iobinding(io, ro)
            self._logits = self._dlogits.numpy()  # synchronises with the GPU
        else:
            for sess, io in self._bindings[self.cur]:
                sess.run_with_iobinding(io)
        if commit:
            self.cur = 1 - self.cur
        return self._logits

    def run_explicit(
        self, state: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray
    ) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """One step from an explicit host state (any P, E): (new state, logits); the engine's state is untouched."""
        feed: dict[str, Any] = dict(state)
        feed[fmt.X_NAME] = x
        feed[fmt.Y_NAME] = y
        out = self.model.session.run([*self._out_names, fmt.LOGITS_NAME], feed)
        return dict(zip(self.names, out[:-1], strict=True)), out[-1]
