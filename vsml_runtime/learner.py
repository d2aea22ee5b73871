"""``Learner`` and ``LearnerPool``: online learning with an exported VSML model, no torch, no gradients.

Dimension letters: P learners, E examples per step of one learner, A inputs
(``n_features``), B classes (``n_classes``).

Semantics (test-then-train, reference section 3): ``learn(x, y)`` runs one
step of the network on x, returns the predictions it made BEFORE seeing y,
and leaves y's error in the state for the next step (or absorbs it right
away when the model has the backward pass). A stream of ``learn`` calls
reproduces ``vsml_train.model.episode.run_episode`` step for step.

Input contract: the model was meta-trained on inputs standardised with one
scalar mean and std per dataset (about zero mean, unit variance). Feed such
inputs, or let the learner standardise online (``standardize=...``).
Inputs are then clipped to +-1e6 so no float32 product can overflow
(raw inputs first to +-1e100, so the standardiser's float64 statistics stay
finite for every finite input).

Errors (the state is unchanged whenever a call raises):

* ``TypeError``: an argument of the wrong kind (x not real numbers, labels
  or seeds not integers, y missing); ``ValueError``: a wrong shape, a
  NaN / inf input, a label outside [-1, n_classes), a seed outside
  [0, 2**63 - 1], a size, thread count or device out of range, or a learner
  needing more memory than the limit (``vsml_runtime.limits``).
* ``vsml_runtime.FormatError`` (a ``ValueError``): a model or state file
  that is unreadable, corrupt, edited or inconsistent (another model, other
  sizes); ``FileNotFoundError``: a missing file.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from . import format as fmt
from .base import LearnerBase, result, softmax, standardize_from_meta
from .inputs import MAX_SEED, Standardize, check_seed, check_x, check_y
from .sessions import Device
from .shipped import pretrained_path

# ---------------------------------------------------------------------------
# public classes


class Learner(LearnerBase):
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
        threads: ONNX Runtime intra-op threads on CPU (default 1; no spinning),
            at most ``vsml_runtime.limits.max_threads()``.
        cuda_graph: on CUDA, replay each step as a captured CUDA graph (less
            launch overhead for small models; opt-in).
        memory_limit: bytes this learner may need at most (default
            ``$VSML_MEMORY_LIMIT`` or 8 GiB; ``vsml_runtime.limits``): larger
            sizes raise ValueError before anything is allocated.

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
        memory_limit: int | None = None,
    ) -> None:
        self._ctor = _ctor_args(locals())  # for pickling (vsml_runtime.pickling)
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
            memory_limit=memory_limit,
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

    def learn(self, x: Any, y: Any, *, return_logits: bool = False, return_proba: bool = False) -> Any:
        """One online step: predict x, then learn from its label y.

        Args:
            x: [A] one example (when examples_per_step == 1) or [E, A].
            y: int label (or [E] labels) in [0, n_classes); -1 = no label.
            return_logits: also return the logits [B] / [E, B].
            return_proba: also return the class probabilities (softmax of the
                logits, float64, summing to 1) [B] / [E, B].
        Returns:
            the predicted class (int, or [E] int64) made BEFORE seeing y;
            with ``return_logits`` / ``return_proba``, (predictions, logits),
            (predictions, proba) or (predictions, logits, proba).
        Raises:
            TypeError / ValueError on bad input; the state is then unchanged.
        """
        with self._lock:
            xs, ys, single = self._shape_in(x, y)
            if ys is None:
                raise TypeError("y (labels) must be given: class ids in [0, n_classes), -1 = no label")
            logits = self._step_all(xs, ys, commit=True)[0]
            return result(logits, single, return_logits, return_proba)

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
                return result(logits, False, return_logits)
            xs3, _, single = self._shape_in(arr, None)
            logits = self._step_all(xs3, np.full((1, e), -1, np.int64), commit=False)[0]
            return result(logits, single, return_logits)

    def predict_proba(self, x: Any) -> np.ndarray:
        """Class probabilities without learning: softmax of ``predict``'s logits, float64, rows summing to 1.

        x: [A] -> [B]; [n, A] -> [n, B] (as ``predict``).
        """
        return softmax(self.predict(x, return_logits=True)[1])

    def reset(self, seed: int | None = None) -> None:
        """Forget everything learned: a fresh initial state (from ``seed``, default the constructor's)."""
        with self._lock:
            s = int(self._seeds[0]) if seed is None else check_seed(seed, "seed")
            self._reset_rows(slice(0, 1), np.array([s], np.int64))

    @classmethod
    def pretrained(cls, n_features: int, n_classes: int, **kwargs: Any) -> Learner:
        """The learner shipped with the package (``assets/MODEL_CARD.md``): any sizes, no training needed.

        Keyword arguments go to the constructor (``seed``, ``device``,
        ``examples_per_step``, ``standardize``, ...). Inputs as the model card
        says: pixels in [0, 1] standardised with (x - 0.1307) / 0.3081, or pass
        ``standardize=...``.
        """
        return cls(pretrained_path(), n_features, n_classes, **kwargs)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        model_path: str | os.PathLike[str] | None = None,
        *,
        device: Device = "auto",
        threads: int = 1,
        memory_limit: int | None = None,
    ) -> Learner:
        """A Learner with the state saved by ``save(path)``; ``model_path`` defaults to the one recorded.

        The file's sizes and entries are checked before anything is built or
        read: FormatError (a ValueError) for a corrupt, truncated or
        inconsistent file, FileNotFoundError for a missing one.
        """
        meta, model = cls._plan_load(path, model_path, device, threads)
        if meta["n_learners"] != 1:
            raise fmt.FormatError(f"{path} holds a pool of {meta['n_learners']} learners: use LearnerPool.load")
        learner = cls(
            model,
            meta["n_features"],
            meta["n_classes"],
            device=device,
            examples_per_step=meta["examples_per_step"],
            standardize=standardize_from_meta(meta["standardize"]),
            threads=threads,
            memory_limit=memory_limit,
        )
        learner._load_file(path)
        return learner


class LearnerPool(LearnerBase):
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
        memory_limit: int | None = None,
    ) -> None:
        self._ctor = _ctor_args(locals())  # for pickling (vsml_runtime.pickling)
        if isinstance(n_learners, bool) or not isinstance(n_learners, int | np.integer) or n_learners < 1:
            raise ValueError(f"n_learners must be an integer >= 1, got {n_learners!r}")
        first = check_seed(seed, "seed")
        if first + int(n_learners) - 1 > MAX_SEED:
            raise ValueError(f"seed + n_learners - 1 must be <= 2**63 - 1, got seed {first}")
        super().__init__(
            model_path,
            int(n_learners),
            n_features,
            n_classes,
            seeds=[first + i for i in range(int(n_learners))],
            device=device,
            examples_per_step=examples_per_step,
            standardize=standardize,
            threads=threads,
            chunk=chunk,
            cuda_graph=cuda_graph,
            memory_limit=memory_limit,
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

    def learn(
        self, x: Any, y: Any, *, learners: Any = None, return_logits: bool = False, return_proba: bool = False
    ) -> Any:
        """One step of every learner (or of ``learners`` only).

        x: [P, A] (E = 1) or [P, E, A]; y: [P] / [P, E] labels (-1 = none).
        Returns predictions [P] / [P, E] made before seeing y (and the logits
        and/or the probabilities [P, B] / [P, E, B], as ``Learner.learn``).
        """
        with self._lock:
            rows = self._rows(learners)
            p = self.n_learners if rows is None else len(rows)
            xs, ys, flat = self._shape_in(x, y, p)
            if ys is None:
                raise TypeError("y (labels) must be given: class ids in [0, n_classes), -1 = no label")
            logits = self._step_all(xs, ys, commit=True) if rows is None else self._step_rows(rows, xs, ys, commit=True)
            return result(logits[:, 0] if flat else logits, False, return_logits, return_proba)

    def predict(self, x: Any, *, learners: Any = None, return_logits: bool = False) -> Any:
        """Predictions of every learner (or of ``learners``) without changing any state."""
        with self._lock:
            rows = self._rows(learners)
            p = self.n_learners if rows is None else len(rows)
            xs, _, flat = self._shape_in(x, None, p)
            y = np.full(xs.shape[:2], -1, np.int64)
            logits = self._step_all(xs, y, commit=False) if rows is None else self._step_rows(rows, xs, y, commit=False)
            return result(logits[:, 0] if flat else logits, False, return_logits)

    def predict_proba(self, x: Any, *, learners: Any = None) -> np.ndarray:
        """Class probabilities [P, B] / [P, E, B] of every learner (or of ``learners``), no state change."""
        return softmax(self.predict(x, learners=learners, return_logits=True)[1])

    def reset(self, learners: Any = None, seeds: Sequence[int] | None = None) -> None:
        """Fresh initial state for all learners (or ``learners``), from their seeds (or new ``seeds``)."""
        with self._lock:
            rows = self._rows(learners)
            idx = np.arange(self.n_learners) if rows is None else rows
            if seeds is None:
                new = self._seeds[idx]
            else:
                if isinstance(seeds, str | bytes) or np.ndim(seeds) != 1:
                    raise TypeError(f"seeds must be a 1-d sequence of integers, got {seeds!r}")
                new = np.asarray([check_seed(s, "seeds[i]") for s in seeds], dtype=np.int64)
            if new.shape != idx.shape:
                raise ValueError(f"seeds must have {idx.size} entries, got {new.shape}")
            self._reset_rows(idx, new)

    @classmethod
    def pretrained(cls, n_learners: int, n_features: int, n_classes: int, **kwargs: Any) -> LearnerPool:
        """``n_learners`` copies of the shipped learner (``assets/MODEL_CARD.md``), as ``Learner.pretrained``.

        Keyword arguments go to the constructor (``seed``, ``device``, ``chunk``, ...).
        """
        return cls(pretrained_path(), n_learners, n_features, n_classes, **kwargs)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        model_path: str | os.PathLike[str] | None = None,
        *,
        device: Device = "auto",
        threads: int = 1,
        chunk: int | None = None,
        memory_limit: int | None = None,
    ) -> LearnerPool:
        """A pool with the state saved by ``save(path)`` (checked as in ``Learner.load``)."""
        meta, model = cls._plan_load(path, model_path, device, threads)
        pool = cls(
            model,
            meta["n_learners"],
            meta["n_features"],
            meta["n_classes"],
            device=device,
            examples_per_step=meta["examples_per_step"],
            standardize=standardize_from_meta(meta["standardize"]),
            threads=threads,
            chunk=chunk,
            memory_limit=memory_limit,
        )
        pool._load_file(path)
        return pool


def _ctor_args(args: dict[str, Any]) -> dict[str, Any]:
    """A constructor's keyword arguments from its ``locals()`` (all but self and the model path)."""
    return {k: v for k, v in args.items() if k not in ("self", "model_path", "__class__")}
