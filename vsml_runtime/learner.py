"""``Learner`` and ``LearnerPool``: online learning with an exported VSML model, no torch, no gradients.

Dimension letters: P learners, E examples per step of one learner, A inputs
(``n_features``), B classes (``n_classes``).

Semantics (test-then-train, reference section 3): ``learn(x, y)`` runs one
step of the network on x, returns the predictions it made BEFORE seeing y,
and leaves y's error in the state for the next step (or absorbs it right
away when the model has the backward pass). A stream of ``learn`` calls
reproduces ``vsml_train.episode.run_episode`` step for step.

Input contract: the model was meta-trained on inputs standardised with one
scalar mean and std per dataset (about zero mean, unit variance). Feed such
inputs, or let the learner standardise online (``standardize=...``).
Inputs are then clipped to +-1e6 so no float32 product can overflow.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import format as fmt
from .engine import INPUT_LIMIT, Engine
from .inputs import Standardize, Standardizer, check_x, check_y, standardize_mode
from .sessions import Device

STATE_FORMAT = "vsml-learner-state"
STATE_FORMAT_VERSION = 1
_STATE_PREFIX = "state."
_STD_PREFIX = "standardizer."


# ---------------------------------------------------------------------------
# the shared implementation


class _Base:
    """What ``Learner`` and ``LearnerPool`` share: engine, lock, standardiser, persistence."""

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        n_learners: int,
        n_features: int,
        n_classes: int,
        *,
        seeds: Sequence[int],
        device: Device,
        examples_per_step: int,
        standardize: Standardize,
        threads: int,
        chunk: int | None = None,
        cuda_graph: bool = False,
    ) -> None:
        self._lock = threading.RLock()
        self._engine = Engine(
            model_path,
            n_learners,
            n_features,
            n_classes,
            examples_per_step,
            device=device,
            threads=threads,
            chunk=chunk,
            cuda_graph=cuda_graph,
        )
        self._model_path = Path(model_path).resolve()
        self._seeds = np.asarray([int(s) for s in seeds], dtype=np.int64)
        mode, fixed = standardize_mode(standardize, self._engine.info)
        self._standardize_arg = standardize
        self._std = Standardizer(mode, n_learners, n_features, fixed)
        self._steps = np.zeros(n_learners, np.int64)
        self._a, self._b, self._e = self._engine.n_features, self._engine.n_classes, self._engine.n_examples
        self._engine.set_state(self._engine.initial_state(self._seeds.tolist()))

    # -- properties ----------------------------------------------------------

    @property
    def device(self) -> str:
        """Where the step runs, "cpu" or "cuda" (the provider ONNX Runtime really uses)."""
        return self._engine.device

    @property
    def providers(self) -> list[str]:
        """ONNX Runtime's execution providers of the step session, in priority order."""
        return list(self._engine.model.session.get_providers())

    @property
    def n_features(self) -> int:
        return self._engine.n_features

    @property
    def n_classes(self) -> int:
        return self._engine.n_classes

    @property
    def examples_per_step(self) -> int:
        return self._engine.n_examples

    @property
    def info(self) -> fmt.ModelInfo:
        """The exported model's metadata (config, clip, averaging, V_M hash...)."""
        return self._engine.info

    # -- running -------------------------------------------------------------

    def _standardised(self, x: np.ndarray, rows: Any, update: bool) -> tuple[np.ndarray, Any]:
        """(x standardised, new standardiser stats or None); x itself when no standardiser."""
        if self._std.mode == "none":
            return x, None
        stats = self._std.updated(x, rows) if (update and self._std.online) else None
        return self._std.apply(x, stats, rows), stats

    def _prepare(self, x: np.ndarray, rows: Any, update: bool) -> tuple[np.ndarray, Any]:
        """Standardise, clip to +-INPUT_LIMIT, float32: (x32 [p, E, A], new standardiser stats or None)."""
        xs, stats = self._standardised(x, rows, update)
        return np.clip(xs, -INPUT_LIMIT, INPUT_LIMIT).astype(np.float32), stats

    def _step_all(self, x: np.ndarray, y: np.ndarray | int, commit: bool) -> np.ndarray:
        """x [P, E, A] (any real dtype), y [P, E] or an int -> logits [P, E, B] (the engine's buffer).

        The state and the standardiser's statistics change only if ``commit``.
        """
        eng = self._engine
        xs, stats = self._standardised(x, slice(None), commit)
        np.clip(xs.reshape(eng.x_buffer.shape), -INPUT_LIMIT, INPUT_LIMIT, out=eng.x_buffer, casting="unsafe")
        eng.y_buffer[...] = y
        logits = eng.run(commit)
        if commit:
            if stats is not None:
                self._std.commit(stats, slice(None))
            self._steps += 1
        return logits

    def _step_rows(self, rows: np.ndarray, x: np.ndarray, y: np.ndarray, commit: bool) -> np.ndarray:
        """Like ``_step_all`` for a subset of learners (explicit state round trip)."""
        x32, stats = self._prepare(x, rows, update=commit)
        state = self._engine.get_state(rows)
        new_state, logits = self._engine.run_explicit(state, x32, y)
        if commit:
            self._engine.set_state(new_state, rows)
            if stats is not None:
                self._std.commit(stats, rows)
            self._steps[rows] += 1
        return logits

    def _predict_rows_tiled(self, rows: Any, x: np.ndarray) -> np.ndarray:
        """Logits for n examples per learner from each learner's current state (E = 1 learners)."""
        x32, _ = self._prepare(x, rows, update=False)
        state = self._engine.get_state(rows)
        n = x.shape[1]
        tiled = {k: np.ascontiguousarray(np.repeat(v, n, axis=1)) for k, v in state.items()}
        y = np.full(x.shape[:2], -1, np.int64)
        _, logits = self._engine.run_explicit(tiled, x32, y)
        return logits

    def _reset_rows(self, rows: Any, seeds: np.ndarray) -> None:
        fresh = self._engine.initial_state(seeds.tolist())
        self._engine.set_state(fresh, rows)
        self._std.reset(rows)
        self._steps[rows] = 0
        self._seeds[rows] = seeds

    # -- persistence ---------------------------------------------------------

    def _meta(self) -> dict[str, Any]:
        std = self._standardize_arg
        return {
            "format": STATE_FORMAT,
            "format_version": STATE_FORMAT_VERSION,
            "params_sha256": self.info.params_sha256,
            "model_path": str(self._model_path),
            "n_learners": self._engine.n_learners,
            "n_features": self.n_features,
            "n_classes": self.n_classes,
            "examples_per_step": self.examples_per_step,
            "standardize": list(std) if isinstance(std, tuple) else std,
            "state_names": self._engine.names,
        }

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of everything learned: model state, standardiser statistics, step counts, seeds.

        Keys: ``meta`` (JSON string: model hash and sizes), ``state.<name>``
        for each ONNX state tensor ([P, E, ...]), ``standardizer.count``,
        ``standardizer.mean``, ``standardizer.m2``, ``steps``, ``seeds``.
        """
        with self._lock:
            d: dict[str, np.ndarray] = {"meta": np.array(json.dumps(self._meta(), sort_keys=True))}
            for k, v in self._engine.get_state().items():
                d[_STATE_PREFIX + k] = v
            d[_STD_PREFIX + "count"] = self._std.count.copy()
            d[_STD_PREFIX + "mean"] = self._std.mean.copy()
            d[_STD_PREFIX + "m2"] = self._std.m2.copy()
            d["steps"] = self._steps.copy()
            d["seeds"] = self._seeds.copy()
            return d

    def load_state_dict(self, d: dict[str, Any]) -> None:
        """Restore ``state_dict()`` output; checks model hash, sizes, shapes and finiteness first.

        Raises ValueError (and changes nothing) if the state belongs to another
        model or other sizes.
        """
        with self._lock:
            if "meta" not in d:
                raise ValueError("not a learner state: no 'meta' entry")
            try:
                meta = json.loads(str(np.asarray(d["meta"])))
            except (TypeError, ValueError) as exc:
                raise ValueError(f"learner state has unreadable meta: {exc}") from exc
            if meta.get("format") != STATE_FORMAT or meta.get("format_version") != STATE_FORMAT_VERSION:
                raise ValueError(f"not a {STATE_FORMAT} v{STATE_FORMAT_VERSION} state: {meta.get('format')}")
            if meta.get("params_sha256") != self.info.params_sha256:
                raise ValueError(
                    "this state was learned with another model (V_M sha256 "
                    f"{str(meta.get('params_sha256'))[:12]}..., this model {self.info.params_sha256[:12]}...)"
                )
            mine = self._meta()
            for key in ("n_learners", "n_features", "n_classes", "examples_per_step"):
                if meta.get(key) != mine[key]:
                    raise ValueError(f"state has {key}={meta.get(key)}, this learner {mine[key]}")
            state = {}
            for name in self._engine.names:
                arr = np.asarray(d.get(_STATE_PREFIX + name))
                want = self._engine.shapes[name]
                if arr.shape != want or arr.dtype != np.float32:
                    raise ValueError(f"state tensor {name}: expected float32 {want}, got {arr.dtype} {arr.shape}")
                if not np.isfinite(arr).all():
                    raise ValueError(f"state tensor {name} holds NaN/inf")
                state[name] = arr
            std = {}
            for key, ref in (("count", self._std.count), ("mean", self._std.mean), ("m2", self._std.m2)):
                arr = np.asarray(d.get(_STD_PREFIX + key), dtype=np.float64)
                if arr.shape != ref.shape or not np.isfinite(arr).all():
                    raise ValueError(f"standardizer.{key}: expected finite {ref.shape}, got {arr.shape}")
                std[key] = arr
            steps = np.asarray(d.get("steps"), dtype=np.int64)
            seeds = np.asarray(d.get("seeds"), dtype=np.int64)
            if steps.shape != self._steps.shape or seeds.shape != self._seeds.shape:
                raise ValueError("steps / seeds have the wrong shape")
            self._engine.set_state(state)
            self._std.count[:], self._std.mean[:], self._std.m2[:] = std["count"], std["mean"], std["m2"]
            self._steps[:] = steps
            self._seeds[:] = seeds

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the learned state to ``path`` (a .npz) atomically: temp file + rename."""
        path = Path(path)
        folder = path.parent if str(path.parent) else Path(".")
        if not folder.is_dir():
            raise FileNotFoundError(f"cannot write {path}: folder {folder} does not exist")
        d = self.state_dict()
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **d)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)

    @staticmethod
    def _read(path: str | os.PathLike[str]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"learner state {path} does not exist")
        try:
            with np.load(path, allow_pickle=False) as z:
                d = {k: z[k] for k in z.files}
            meta = json.loads(str(d["meta"]))
        except (OSError, ValueError, KeyError) as exc:
            raise ValueError(f"{path} is not a readable learner state: {exc}") from exc
        return d, meta


def _standardize_from_meta(v: Any) -> Standardize:
    return tuple(v) if isinstance(v, list) else v  # type: ignore[return-value]


# ---------------------------------------------------------------------------
# public classes


class Learner(_Base):
    """One online learner: an exported VSML model plus its learned state.

    Args:
        model_path: the step graph written by ``vsml-export`` (``model.onnx``;
            its ``model.init.onnx`` must sit next to it).
        n_features: A, inputs per example.
        n_classes: B, number of classes (labels 0..B-1).
        seed: seed of the initial state (numpy; the same seed gives the same
            learner). ``reset()`` returns to it.
        device: "auto" (CUDA when usable, else CPU), "cpu", "cuda" or
            "cuda:N". Asking for CUDA when it is not usable raises.
        examples_per_step: E, examples per ``learn`` call (1 = pure online).
            With E > 1 the model's batch averaging applies (its metadata
            names the mode).
        standardize: False (inputs are already standardised), "online"
            (running per-feature mean/std kept in the learned state),
            "online-scalar" (one running mean/std over all features, like
            the meta-training contract), "model" (the mean/std recorded in
            the model file), or a fixed (mean, std).
        threads: ONNX Runtime intra-op threads on CPU (default 1; no spinning).
        cuda_graph: on CUDA, replay each step as a captured CUDA graph (less
            launch overhead for small models; opt-in).

    Example::

        learner = Learner("model.onnx", n_features=784, n_classes=10)
        for x, y in stream:                  # x: [784] floats, y: int
            guess = learner.learn(x, y)      # predicted before seeing y
        learner.predict(x_new)               # no state change
        learner.save("user42.npz")

    One Learner may be shared by threads: calls are serialised by a lock.
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        n_features: int,
        n_classes: int,
        *,
        seed: int = 0,
        device: Device = "auto",
        examples_per_step: int = 1,
        standardize: Standardize = False,
        threads: int = 1,
        cuda_graph: bool = False,
    ) -> None:
        super().__init__(
            model_path,
            1,
            n_features,
            n_classes,
            seeds=[seed],
            device=device,
            examples_per_step=examples_per_step,
            standardize=standardize,
            threads=threads,
            cuda_graph=cuda_graph,
        )

    @property
    def steps(self) -> int:
        """Number of ``learn`` steps since construction / the last reset."""
        return int(self._steps[0])

    def _shape_in(self, x: Any, y: Any | None) -> tuple[np.ndarray, np.ndarray | int | None, bool]:
        """-> (x [1, E, A], y [1, E] / an int / None, single) validated."""
        e, a = self._e, self._a
        arr = x if type(x) is np.ndarray else np.asarray(x)
        single = e == 1 and arr.ndim == 1
        xs = check_x(arr, (a,) if single else (e, a), "x")
        ys = None
        if y is not None:
            ys = check_y(y, () if single else (e,), self._b)
            if not isinstance(ys, int):
                ys = ys.reshape(1, e)
        return xs.reshape(1, e, a), ys, single

    def learn(self, x: Any, y: Any, *, return_logits: bool = False) -> Any:
        """One online step: predict x, then learn from its label y.

        Args:
            x: [A] one example (when examples_per_step == 1) or [E, A].
            y: int label (or [E] labels) in [0, n_classes); -1 = no label.
            return_logits: also return the logits [B] / [E, B].
        Returns:
            the predicted class (int, or [E] int64) made BEFORE seeing y;
            with ``return_logits``, (predictions, logits).
        Raises:
            TypeError / ValueError on bad input; the state is then unchanged.
        """
        with self._lock:
            xs, ys, single = self._shape_in(x, y)
            assert ys is not None
            logits = self._step_all(xs, ys, commit=True)[0]
            return _result(logits, single, return_logits)

    def learn_stream(self, xs: Any, ys: Any, *, return_logits: bool = False) -> Any:
        """T consecutive ``learn`` steps: xs [T, A] (or [T, E, A]), ys [T] (or [T, E]) -> predictions [T] ([T, E]).

        Everything is validated before the first step, so bad input changes nothing.
        """
        with self._lock:
            e, a = self.examples_per_step, self.n_features
            arr = np.asarray(xs)
            squeeze = e == 1 and arr.ndim == 2
            t = arr.shape[0] if arr.ndim else 0
            xv = check_x(arr, (t, a) if squeeze else (t, e, a), "xs")
            yv = check_y(ys, (t,) if squeeze else (t, e), self.n_classes)
            xv, yv = xv.reshape(t, 1, e, a), yv.reshape(t, 1, e)
            out = np.empty((t, e, self.n_classes), np.float32)
            for i in range(t):
                out[i] = self._step_all(xv[i], yv[i], commit=True)[0]
            preds = out.argmax(-1)
            if squeeze:
                preds, out = preds[:, 0], out[:, 0]
            return (preds, out) if return_logits else preds

    def predict(self, x: Any, *, return_logits: bool = False) -> Any:
        """Predict without learning: the state is not changed.

        x: [A] one example, or [n, A] (any n when examples_per_step == 1:
        every row is predicted from the same state; n == E otherwise).
        """
        with self._lock:
            e, a = self.examples_per_step, self.n_features
            arr = np.asarray(x)
            if e == 1 and arr.ndim == 2:
                xs = check_x(arr, (arr.shape[0], a), "x").reshape(1, arr.shape[0], a)
                if arr.shape[0] == 0:
                    raise ValueError("x has no rows")
                logits = self._predict_rows_tiled(slice(0, 1), xs)[0]
                return _result(logits, False, return_logits)
            xs3, _, single = self._shape_in(arr, None)
            logits = self._step_all(xs3, np.full((1, e), -1, np.int64), commit=False)[0]
            return _result(logits, single, return_logits)

    def reset(self, seed: int | None = None) -> None:
        """Forget everything learned: a fresh initial state (from ``seed``, default the constructor's)."""
        with self._lock:
            s = int(self._seeds[0]) if seed is None else int(seed)
            self._reset_rows(slice(0, 1), np.array([s], np.int64))

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        model_path: str | os.PathLike[str] | None = None,
        *,
        device: Device = "auto",
        threads: int = 1,
    ) -> Learner:
        """A Learner with the state saved by ``save(path)``; ``model_path`` defaults to the one recorded."""
        d, meta = cls._read(path)
        if meta.get("n_learners", 1) != 1:
            raise ValueError(f"{path} holds a pool of {meta.get('n_learners')} learners: use LearnerPool.load")
        learner = cls(
            model_path or meta["model_path"],
            int(meta["n_features"]),
            int(meta["n_classes"]),
            seed=int(d["seeds"][0]),
            device=device,
            examples_per_step=int(meta["examples_per_step"]),
            standardize=_standardize_from_meta(meta["standardize"]),
            threads=threads,
        )
        learner.load_state_dict(d)
        return learner


class LearnerPool(_Base):
    """P independent learners (e.g. one per user) stepped together in one call.

    Learner i starts from seed ``seed + i`` and behaves exactly like
    ``Learner(..., seed=seed + i)`` fed the i-th rows. Same arguments as
    ``Learner`` plus ``n_learners`` and ``chunk`` (learners per ONNX Runtime
    call on CPU; default: as many as keep one chunk's state in cache).

    Example::

        pool = LearnerPool("model.onnx", n_learners=64, n_features=784, n_classes=10)
        preds = pool.learn(x, y)                # x [64, 784], y [64]
        preds = pool.learn(x[:3], y[:3], learners=[5, 9, 12])   # only some learners
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        n_learners: int,
        n_features: int,
        n_classes: int,
        *,
        seed: int = 0,
        device: Device = "auto",
        examples_per_step: int = 1,
        standardize: Standardize = False,
        threads: int = 1,
        chunk: int | None = None,
        cuda_graph: bool = False,
    ) -> None:
        if isinstance(n_learners, bool) or not isinstance(n_learners, int | np.integer) or n_learners < 1:
            raise ValueError(f"n_learners must be an integer >= 1, got {n_learners!r}")
        super().__init__(
            model_path,
            int(n_learners),
            n_features,
            n_classes,
            seeds=[int(seed) + i for i in range(int(n_learners))],
            device=device,
            examples_per_step=examples_per_step,
            standardize=standardize,
            threads=threads,
            chunk=chunk,
            cuda_graph=cuda_graph,
        )

    @property
    def n_learners(self) -> int:
        return self._engine.n_learners

    @property
    def steps(self) -> np.ndarray:
        """[P] learn steps of each learner since construction / its last reset."""
        return self._steps.copy()

    def _rows(self, learners: Any) -> np.ndarray | None:
        if learners is None:
            return None
        idx = np.asarray(learners)
        if idx.dtype.kind not in "iu" or idx.ndim != 1 or idx.size == 0:
            raise TypeError("learners must be a non-empty 1-d sequence of learner indices")
        if idx.min() < 0 or idx.max() >= self.n_learners or len(np.unique(idx)) != idx.size:
            raise ValueError(f"learners must be distinct indices in [0, {self.n_learners})")
        return idx.astype(np.int64)

    def _shape_in(self, x: Any, y: Any | None, p: int) -> tuple[np.ndarray, np.ndarray | None, bool]:
        e, a = self.examples_per_step, self.n_features
        arr = np.asarray(x)
        flat = e == 1 and arr.ndim == 2
        xs = check_x(arr, (p, a) if flat else (p, e, a), "x").reshape(p, e, a)
        ys = None
        if y is not None:
            ys = check_y(y, (p,) if flat else (p, e), self.n_classes).reshape(p, e)
        return xs, ys, flat

    def learn(self, x: Any, y: Any, *, learners: Any = None, return_logits: bool = False) -> Any:
        """One step of every learner (or of ``learners`` only).

        x: [P, A] (E = 1) or [P, E, A]; y: [P] / [P, E] labels (-1 = none).
        Returns predictions [P] / [P, E] made before seeing y (and logits).
        """
        with self._lock:
            rows = self._rows(learners)
            p = self.n_learners if rows is None else len(rows)
            xs, ys, flat = self._shape_in(x, y, p)
            assert ys is not None
            logits = self._step_all(xs, ys, commit=True) if rows is None else self._step_rows(rows, xs, ys, commit=True)
            return _result(logits[:, 0] if flat else logits, False, return_logits)

    def predict(self, x: Any, *, learners: Any = None, return_logits: bool = False) -> Any:
        """Predictions of every learner (or of ``learners``) without changing any state."""
        with self._lock:
            rows = self._rows(learners)
            p = self.n_learners if rows is None else len(rows)
            xs, _, flat = self._shape_in(x, None, p)
            y = np.full(xs.shape[:2], -1, np.int64)
            logits = self._step_all(xs, y, commit=False) if rows is None else self._step_rows(rows, xs, y, commit=False)
            return _result(logits[:, 0] if flat else logits, False, return_logits)

    def reset(self, learners: Any = None, seeds: Sequence[int] | None = None) -> None:
        """Fresh initial state for all learners (or ``learners``), from their seeds (or new ``seeds``)."""
        with self._lock:
            rows = self._rows(learners)
            idx = np.arange(self.n_learners) if rows is None else rows
            new = self._seeds[idx] if seeds is None else np.asarray(seeds, dtype=np.int64)
            if new.shape != idx.shape:
                raise ValueError(f"seeds must have {idx.size} entries, got {new.shape}")
            self._reset_rows(idx, new)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        model_path: str | os.PathLike[str] | None = None,
        *,
        device: Device = "auto",
        threads: int = 1,
        chunk: int | None = None,
    ) -> LearnerPool:
        """A pool with the state saved by ``save(path)``."""
        d, meta = cls._read(path)
        pool = cls(
            model_path or meta["model_path"],
            int(meta["n_learners"]),
            int(meta["n_features"]),
            int(meta["n_classes"]),
            device=device,
            examples_per_step=int(meta["examples_per_step"]),
            standardize=_standardize_from_meta(meta["standardize"]),
            threads=threads,
            chunk=chunk,
        )
        pool.load_state_dict(d)
        return pool


def _result(logits: np.ndarray, single: bool, return_logits: bool) -> Any:
    """Argmax predictions (int for a single example), optionally with a copy of the logits."""
    preds = logits.argmax(-1)
    if single:
        preds, logits = int(preds[0]), logits[0]
    return (preds, logits.copy()) if return_logits else preds
