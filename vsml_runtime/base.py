"""What ``Learner`` and ``LearnerPool`` share: engine, lock, standardiser, running, persistence.

Dimension letters: P learners, E examples per step of one learner, A inputs,
B classes.

A learner's saved state (``save`` / ``state_dict``) is an ``.npz`` of plain
arrays (loaded with ``allow_pickle=False``): ``meta`` (JSON with the model's
V_M hash and the sizes, checked on load), ``state.<name>`` for every ONNX
state tensor, the standardiser's statistics, step counts and seeds.
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
from .inputs import Standardize, Standardizer, standardize_mode
from .pickling import PickleByState
from .sessions import Device

STATE_FORMAT = "vsml-learner-state"
STATE_FORMAT_VERSION = 1
_STATE_PREFIX = "state."
_STD_PREFIX = "standardizer."


# ---------------------------------------------------------------------------
# the shared implementation


class LearnerBase(PickleByState):
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
            # mkstemp's file is private (0600): give it the mode a plain open() would
            if path.exists():
                mode = path.stat().st_mode & 0o7777
            else:
                mask = os.umask(0o022)
                os.umask(mask)
                mode = 0o666 & ~mask
            os.chmod(tmp, mode)
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


def standardize_from_meta(v: Any) -> Standardize:
    return tuple(v) if isinstance(v, list) else v  # type: ignore[return-value]


def softmax(logits: np.ndarray) -> np.ndarray:
    """Class probabilities from logits [..., B]: float64, each row sums to 1 (stable: max subtracted)."""
    z = np.asarray(logits, dtype=np.float64)
    z = np.exp(z - z.max(-1, keepdims=True))
    z /= z.sum(-1, keepdims=True)
    return z


def result(logits: np.ndarray, single: bool, return_logits: bool, return_proba: bool = False) -> Any:
    """Argmax predictions (int for a single example), optionally with the logits and/or probabilities.

    Returns ``preds``, ``(preds, logits)``, ``(preds, proba)`` or ``(preds, logits, proba)``.
    """
    preds = logits.argmax(-1)
    if single:
        preds, logits = int(preds[0]), logits[0]
    if not (return_logits or return_proba):
        return preds
    out: tuple[Any, ...] = (preds,)
    if return_logits:
        out += (logits.copy(),)
    if return_proba:
        out += (softmax(logits),)
    return out
