"""What ``Learner`` and ``LearnerPool`` share: engine, lock, standardiser, running, persistence.

Dimension letters: P learners, E examples per step of one learner, A inputs,
B classes.

A learner's saved state (``save`` / ``state_dict``) is an ``.npz`` of plain
arrays (never pickles): ``meta`` (JSON with the model's V_M hash and the
sizes, checked on load), ``state.<name>`` for every ONNX state tensor, the
standardiser's statistics, step counts and seeds. ``vsml_runtime.statefile``
reads it: a corrupt, truncated or inconsistent file raises ``FormatError``
(a ``ValueError``), with nothing read beyond the sizes the learner holds.
``save`` writes it with the project's one atomic writer
(``vsml_runtime.files``).
"""

from __future__ import annotations

import json
import math
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import format as fmt
from . import limits, statefile
from .engine import INPUT_LIMIT, Engine
from .files import atomic_write
from .inputs import MAX_SEED, Standardize, Standardizer, check_seed, standardize_mode
from .pickling import PickleByState
from .sessions import Device, load_model

STATE_FORMAT = statefile.STATE_FORMAT
STATE_FORMAT_VERSION = statefile.STATE_FORMAT_VERSION
_STATE_PREFIX = statefile.STATE_PREFIX
_STD_PREFIX = statefile.STD_PREFIX
# predict(x[n, A]) tiles at most this much (state + ONNX Runtime's working memory) per call, and
# only for learners whose state per row is at most PREDICT_TILE_ROW_BYTES: above that, one call per
# row through the bound buffers is faster (measured: 1 ms vs 7 ms per row at 64 x 10, N = 32)
PREDICT_TILE_BYTES = 64 << 20
PREDICT_TILE_ROW_BYTES = 16 << 10


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
        memory_limit: int | None = None,
    ) -> None:
        self._lock = threading.RLock()
        checked_seeds = [check_seed(s, "seed") for s in seeds]  # before anything is loaded
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
            memory_limit=memory_limit,
        )
        self._model_path = Path(model_path).resolve()
        self._seeds = np.asarray(checked_seeds, dtype=np.int64)
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
        with np.errstate(over="ignore"):  # float64 beyond float32 may become +-inf in the cast: clipped
            np.clip(xs.reshape(eng.x_buffer.shape), -INPUT_LIMIT, INPUT_LIMIT, out=eng.x_buffer, casting="unsafe")
        eng.y_buffer[...] = y
        logits = eng.run(commit)
        if commit:
            if stats is not None:
                self._std.commit(stats, slice(None))
            self._steps += 1
        return logits

    def _step_rows(self, rows: np.ndarray, x: np.ndarray, y: np.ndarray, commit: bool) -> np.ndarray:
        """Like ``_step_all`` for a subset of learners (explicit state round trip, ``chunk`` learners per call).

        Nothing is committed before every chunk has run, so a failure changes nothing.
        """
        eng = self._engine
        x32, stats = self._prepare(x, rows, update=commit)
        parts: list[tuple[dict[str, np.ndarray], np.ndarray]] = []
        for i in range(0, len(rows), eng.chunk):
            sub = slice(i, i + eng.chunk)
            parts.append(eng.run_explicit(eng.get_state(rows[sub]), x32[sub], y[sub]))
        logits = parts[0][1] if len(parts) == 1 else np.concatenate([lg for _, lg in parts])
        if commit:
            new_state = parts[0][0]
            if len(parts) > 1:
                new_state = {n: np.concatenate([s[n] for s, _ in parts]) for n in eng.names}
            eng.set_state(new_state, rows)
            if stats is not None:
                self._std.commit(stats, rows)
            self._steps[rows] += 1
        return logits

    def _predict_rows_tiled(self, rows: Any, x: np.ndarray) -> np.ndarray:
        """Logits [p, n, B] for n examples per learner from each learner's current state (E = 1 learners).

        Bounded memory for any n: small learners tile the state over as many
        examples per call as keep the tiles and ONNX Runtime's working memory
        within ``PREDICT_TILE_BYTES``; larger ones predict row by row through
        their bound buffers (no copy, the memory and time of one step per row).
        """
        eng = self._engine
        p, n = x.shape[0], x.shape[1]
        per_row = 4 * eng.state_numbers // eng.n_learners
        k = max(1, min(n, PREDICT_TILE_BYTES // max(per_row * (1 + limits.WORKING_FACTOR), 1)))
        if per_row > PREDICT_TILE_ROW_BYTES:
            k = 1
        out = np.empty((p, n, self._b), np.float32)
        if k == 1 and p == eng.n_learners:
            for i in range(n):
                out[:, i] = self._step_all(x[:, i : i + 1], -1, commit=False)[:, 0]
            return out
        state = eng.get_state(rows)
        for s0 in range(0, n, k):
            part = x[:, s0 : s0 + k]
            x32, _ = self._prepare(part, rows, update=False)
            m = part.shape[1]
            # the state tiled over the learner axis, one example each: rows never meet in a step (the
            # examples of one step share batch statistics, e.g. online_norm's moments)
            tiled = {key: np.ascontiguousarray(np.repeat(v, m, axis=0)) for key, v in state.items()}
            x_rows = x32.reshape(p * m, 1, x32.shape[-1])
            _, logits = eng.run_explicit(tiled, x_rows, np.full((p * m, 1), -1, np.int64))
            out[:, s0 : s0 + m] = logits.reshape(p, m, -1)
        return out

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

        Raises ``FormatError`` (a ValueError; nothing changes) if the state
        belongs to another model or other sizes, or is inconsistent.
        """
        with self._lock:
            try:
                staged = self._checked_state(d)
            except fmt.FormatError:
                raise
            except (TypeError, ValueError, KeyError, AttributeError, OverflowError) as exc:
                raise fmt.FormatError(f"not a valid learner state: {type(exc).__name__}: {exc}") from exc
            state, std, steps, seeds = staged
            self._engine.set_state(state)
            self._std.count[:], self._std.mean[:], self._std.m2[:] = std["count"], std["mean"], std["m2"]
            self._steps[:] = steps
            self._seeds[:] = seeds

    def _checked_state(self, d: dict[str, Any]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], Any, Any]:
        """(state, standardiser stats, steps, seeds) of ``d`` once every check passed; FormatError otherwise."""
        if not isinstance(d, dict) or "meta" not in d:
            raise fmt.FormatError("not a learner state: no 'meta' entry")
        try:
            meta = json.loads(str(np.asarray(d["meta"])))
        except (TypeError, ValueError) as exc:
            raise fmt.FormatError(f"learner state has unreadable meta: {exc}") from exc
        meta = statefile.check_meta(meta)
        if meta.get("params_sha256") != self.info.params_sha256:
            raise fmt.FormatError(
                "this state was learned with another model (V_M sha256 "
                f"{str(meta.get('params_sha256'))[:12]}..., this model {self.info.params_sha256[:12]}...)"
            )
        mine = self._meta()
        for key in ("n_learners", "n_features", "n_classes", "examples_per_step", "state_names"):
            if meta.get(key) != mine[key]:
                raise fmt.FormatError(f"state has {key}={meta.get(key)}, this learner {mine[key]}")
        state = {}
        for name in self._engine.names:
            arr = np.asarray(d.get(_STATE_PREFIX + name))
            want = self._engine.shapes[name]
            if arr.shape != want or arr.dtype != np.float32:
                raise fmt.FormatError(f"state tensor {name}: expected float32 {want}, got {arr.dtype} {arr.shape}")
            if not np.isfinite(arr).all():
                raise fmt.FormatError(f"state tensor {name} holds NaN/inf")
            state[name] = arr
        std = {}
        for key, ref in (("count", self._std.count), ("mean", self._std.mean), ("m2", self._std.m2)):
            arr = np.asarray(d.get(_STD_PREFIX + key))
            if arr.dtype.kind not in "fiu" or arr.shape != ref.shape:
                raise fmt.FormatError(f"standardizer.{key}: expected {ref.shape} numbers, got {arr.dtype} {arr.shape}")
            arr = arr.astype(np.float64)
            if not np.isfinite(arr).all() or (key != "mean" and (arr < 0).any()):
                raise fmt.FormatError(f"standardizer.{key} must be finite (and >= 0 for count and m2)")
            std[key] = arr
        steps, seeds = np.asarray(d.get("steps")), np.asarray(d.get("seeds"))
        if steps.shape != self._steps.shape or seeds.shape != self._seeds.shape:
            raise fmt.FormatError("steps / seeds have the wrong shape")
        if steps.dtype.kind not in "iu" or seeds.dtype.kind not in "iu":
            raise fmt.FormatError("steps / seeds must be integers")
        if (steps < 0).any() or (seeds < 0).any() or (seeds > MAX_SEED).any():
            raise fmt.FormatError("steps must be >= 0 and seeds in [0, 2**63 - 1]")
        return state, std, steps.astype(np.int64), seeds.astype(np.int64)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the learned state to ``path`` (a .npz) atomically (``vsml_runtime.files.atomic_write``).

        Readers see the old file or the new one, never a partial one (also
        after SIGKILL); temp files of earlier killed saves of ``path`` are
        removed. FileNotFoundError if the folder does not exist.
        """
        d = self.state_dict()
        atomic_write(path, lambda f: np.savez(f, **d))

    # -- loading (classmethods of Learner / LearnerPool build on these) -------

    @staticmethod
    def _plan_load(
        path: str | os.PathLike[str],
        model_path: str | os.PathLike[str] | None,
        device: Device,
        threads: int,
    ) -> tuple[dict[str, Any], str]:
        """(checked meta, model path) of a state file whose entries fit the sizes it claims; nothing built yet.

        FileNotFoundError for a missing file, FormatError for a bad one.
        """
        meta = statefile.read_meta(path)
        model = str(model_path) if model_path is not None else meta["model_path"]
        info = load_model(model, device, limits.check_threads(threads)).info
        p, a, b, e = (meta[k] for k in ("n_learners", "n_features", "n_classes", "examples_per_step"))
        try:
            shapes = info.state.resolve(a, b, p, e)
            mode, _ = standardize_mode(standardize_from_meta(meta["standardize"]), info)
        except (KeyError, ValueError) as exc:
            raise fmt.FormatError(f"{path}: the state does not fit model {model}: {exc}") from exc
        if sum(math.prod(s) for s in shapes.values()) > 2**31:
            raise fmt.FormatError(f"{path} claims sizes whose state would hold more than 2**31 numbers")
        statefile.check_entries(path, statefile.entry_specs(shapes, p, a, mode == "online"))
        return meta, model

    def _load_file(self, path: str | os.PathLike[str]) -> None:
        """Read a state file with exactly this learner's entries and restore it."""
        specs = statefile.entry_specs(
            self._engine.shapes, self._engine.n_learners, self.n_features, self._std.mode == "online"
        )
        self.load_state_dict(statefile.read_arrays(path, specs))


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
