"""The service without HTTP: many learners, a store, durable learn / predict / forget.

``Service.learn`` acknowledges (returns) only after the record of what was
learned is committed to the store; if anything fails after the step, the
key's in-memory learner is dropped, so the next request restores it from
the store -- the only state ever served is a durable one. Requests for one
key are serialised (a lock per key in this process, the store's advisory
lock across replicas); different keys run in parallel.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np

from vsml_runtime.engine import INPUT_LIMIT
from vsml_runtime.learner import Learner, pretrained_path

from . import wal
from .cache import Entry, KeyLocks, LearnerCache
from .metrics import Metrics
from .store import KeyTxn, Store, StoreError

log = logging.getLogger("vsml_runtime.serve")
PREDICT_MEMORY = 64 * 2**20  # bytes of tiled state one predict request may use
SPARE_LEARNERS = 4  # evicted learner objects kept for reuse (saves building one per cache miss)
KEY_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}")
KEY_RULE = "1-128 characters from A-Z a-z 0-9 . _ : @ -, starting with a letter or digit"


class BadInput(ValueError):
    """The request is malformed; nothing was changed."""


class BadKey(BadInput):
    """The learner key does not match ``KEY_PATTERN``."""


class NotFound(KeyError):
    """The store has never seen this key."""


@dataclass(frozen=True)
class ServeConfig:
    """What every learner of a service shares, and the service's limits."""

    model: str = ""  # "" = the shipped pretrained learner
    n_features: int = 784
    n_classes: int = 10
    seed: int = 0
    standardize: Any = False
    snapshot_every: int = 64
    cache_mb: float = 1024.0
    max_batch: int = 256
    max_predict_rows: int = 1024

    @property
    def model_path(self) -> str:
        """The model file (the shipped one by default)."""
        return self.model or pretrained_path()


def check_key(key: str) -> str:
    """``key`` if it matches ``KEY_PATTERN``; BadInput otherwise."""
    if not isinstance(key, str) or KEY_PATTERN.fullmatch(key) is None:
        raise BadKey(f"bad learner key: use {KEY_RULE}")
    return key


def as_inputs(x: Any, n_features: int, max_rows: int) -> tuple[np.ndarray, bool]:
    """(float32 [T, A] clipped to the runtime's input limit, single) from [A] or [T, A]; BadInput otherwise."""
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise BadInput("x must be a list of numbers or a list of lists of numbers of one length") from exc
    single = arr.ndim == 1
    if single:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] != n_features:
        raise BadInput(f"x must hold {n_features} features per example, got shape {list(np.shape(x))}")
    if not 1 <= arr.shape[0] <= max_rows:
        raise BadInput(f"x must hold 1 to {max_rows} examples, got {arr.shape[0]}")
    if not np.isfinite(arr).all():
        raise BadInput("x holds NaN or infinite values")
    return np.clip(arr, -INPUT_LIMIT, INPUT_LIMIT).astype(np.float32), single


def as_labels(y: Any, n: int, n_classes: int, single: bool) -> np.ndarray:
    """int64 [T] labels in [0, B) matching T examples; BadInput otherwise."""
    ys = [y] if single else y
    if not isinstance(ys, list) or any(type(v) is not int for v in ys):
        raise BadInput("y must be an integer label (one example) or a list of integer labels (a batch)")
    if len(ys) != n:
        raise BadInput(f"y holds {len(ys)} labels for {n} examples")
    bad = [v for v in ys if not 0 <= v < n_classes]
    if bad:
        raise BadInput(f"unknown label {bad[0]}: labels are 0..{n_classes - 1}")
    return np.asarray(ys, np.int64)


class Service:
    """Learners by key over a ``Store``; thread-safe (see the module docstring)."""

    def __init__(self, config: ServeConfig, store: Store, metrics: Metrics | None = None) -> None:
        self.config, self.store = config, store
        self.metrics = metrics or Metrics()
        probe = self._new_learner()
        self.model_sha256 = probe.info.params_sha256
        state_bytes = sum(v.nbytes for v in probe.state_dict().values())
        self.learner_bytes = 2 * state_bytes  # the engine's input and output state buffers
        capacity = max(1, int(config.cache_mb * 2**20 // self.learner_bytes))
        # predicting n rows tiles the state n times: keep that under PREDICT_MEMORY
        self.max_predict_rows = max(1, min(config.max_predict_rows, PREDICT_MEMORY // state_bytes))
        self.cache = LearnerCache(capacity)
        self.locks = KeyLocks()
        self._spare: list[Learner] = [probe]
        self._spare_lock = threading.Lock()
        self.metrics.gauge("vsml_learners_in_memory", "Learners held in the cache.", lambda: len(self.cache))
        self.metrics.gauge("vsml_cache_capacity", "Most learners the cache may hold.", lambda: self.cache.capacity)
        self.metrics.gauge(
            "vsml_cache_hits_total", "Requests served by a cached learner.", lambda: self.cache.hits, "counter"
        )
        self.metrics.gauge(
            "vsml_cache_misses_total", "Requests that restored a learner.", lambda: self.cache.misses, "counter"
        )
        self.metrics.gauge(
            "vsml_cache_evictions_total", "Learners evicted from memory.", lambda: self.cache.evictions, "counter"
        )

    # -- learners ------------------------------------------------------------

    def _new_learner(self) -> Learner:
        c = self.config
        return Learner(
            c.model_path, c.n_features, c.n_classes, seed=c.seed, device="cpu", standardize=c.standardize, threads=1
        )

    def _fresh(self) -> Learner:
        with self._spare_lock:
            learner = self._spare.pop() if self._spare else None
        if learner is None:
            return self._new_learner()
        learner.reset()
        return learner

    def _current(self, key: str, txn: KeyTxn, evicted: list[tuple[str, Entry]]) -> Entry:
        """The key's (learner, generation) at the store's head: cached, caught up or restored.

        Entries it evicts from the cache go to ``evicted``. An unknown key gets
        a fresh learner and a new generation (written with its first record).
        """
        head = txn.head_gen()
        entry = self.cache.get(key)
        if head is None:
            if entry is not None and entry[0].steps == 0:
                return entry
            learner, gen = self._fresh(), uuid.uuid4().hex
        else:
            seq, gen = head
            learner = entry[0] if entry is not None and entry[1] == gen else None
            if learner is not None and learner.steps == seq:
                return learner, gen
            if learner is not None and learner.steps < seq:
                # another replica learned meanwhile: catch up (from a newer snapshot if it pruned the records)
                self.metrics.inc("vsml_replayed_steps_total", wal.restore(learner, txn.load(since=learner.steps)))
            else:
                learner = self._fresh()
                self.metrics.inc("vsml_replayed_steps_total", wal.restore(learner, txn.load()))
            if learner.steps != seq:
                raise StoreError(f"key {key!r}: restored {learner.steps} steps, the store's head is {seq}")
        evicted.extend(self.cache.put(key, learner, gen))
        return learner, gen

    def _retire(self, evicted: list[tuple[str, Entry]]) -> None:
        """Snapshot evicted learners that are ahead of their stored snapshot, then keep a few for reuse.

        Runs after the request released its own key, so two requests never
        wait for each other's keys. Failures only cost a longer replay later.
        """
        for key, (learner, gen) in evicted:
            try:
                with self.locks.hold(key), self.store.transaction(key) as txn:
                    ahead = txn.head_gen() == (learner.steps, gen) and txn.snap_seq() < learner.steps
                    if ahead and txn.snapshot(learner.steps, gen, wal.snapshot_bytes(learner)):
                        self.metrics.inc("vsml_snapshots_total")
            except StoreError as exc:
                self.metrics.inc("vsml_store_errors_total")
                log.warning("could not snapshot evicted learner %r: %s", key, exc)
            with self._spare_lock:
                if len(self._spare) < SPARE_LEARNERS:
                    self._spare.append(learner)

    # -- operations ----------------------------------------------------------

    def learn(self, key: str, x: Any, y: Any) -> dict[str, Any]:
        """Learn ``y`` for ``x`` ([A] and an int, or [T, A] and T ints); durable when it returns.

        Returns the predictions made BEFORE learning, their class
        probabilities (softmax of the logits) and the key's step count.
        """
        check_key(key)
        xs, single = as_inputs(x, self.config.n_features, self.config.max_batch)
        ys = as_labels(y, xs.shape[0], self.config.n_classes, single)
        evicted: list[tuple[str, Entry]] = []
        try:
            out = self._learn(key, xs, ys, single, evicted)
        finally:
            self._retire(evicted)
        return out

    def _learn(
        self, key: str, xs: np.ndarray, ys: np.ndarray, single: bool, evicted: list[tuple[str, Entry]]
    ) -> dict[str, Any]:
        with self.locks.hold(key):
            try:
                with self.store.transaction(key) as txn:
                    learner, gen = self._current(key, txn, evicted)
                    start = learner.steps
                    preds, logits = learner.learn_stream(xs, ys, return_logits=True)
                    k = self.config.snapshot_every
                    due = k > 0 and (start + len(ys)) // k > start // k
                    bx, by = wal.encode(xs, ys)
                    txn.append(start, bx, by, len(ys), wal.snapshot_bytes(learner) if due else None, gen)
                steps = learner.steps
            except BaseException:
                self.cache.drop(key)  # whatever it holds may not be durable
                self.metrics.inc("vsml_store_errors_total")
                raise
        self.metrics.inc("vsml_store_writes_total")
        self.metrics.inc("vsml_learned_examples_total", len(ys))
        if due:
            self.metrics.inc("vsml_snapshots_total")
        probs = wal.softmax(logits)
        if single:
            return {"prediction": int(preds[0]), "probabilities": probs[0].tolist(), "steps": steps}
        return {"predictions": preds.tolist(), "probabilities": probs.tolist(), "steps": steps}

    def predict(self, key: str, x: Any) -> dict[str, Any]:
        """Predictions and class probabilities for x ([A] or [n, A]) from the key's current state; no change."""
        check_key(key)
        xs, single = as_inputs(x, self.config.n_features, self.max_predict_rows)
        evicted: list[tuple[str, Entry]] = []
        try:
            with self.locks.hold(key), self.store.transaction(key) as txn:
                learner, _ = self._current(key, txn, evicted)
                preds, logits = learner.predict(xs, return_logits=True)
                steps = learner.steps
        finally:
            self._retire(evicted)
        probs = wal.softmax(logits)
        if single:
            return {"prediction": int(preds[0]), "probabilities": probs[0].tolist(), "steps": steps}
        return {"predictions": preds.tolist(), "probabilities": probs.tolist(), "steps": steps}

    def info(self, key: str) -> dict[str, Any]:
        """Steps, model digest, sizes and a digest of the learned state; NotFound for an unknown key."""
        check_key(key)
        evicted: list[tuple[str, Entry]] = []
        try:
            with self.locks.hold(key), self.store.transaction(key) as txn:
                if txn.head_gen() is None:
                    raise NotFound(key)
                learner, _ = self._current(key, txn, evicted)
                digest = wal.state_digest(learner)
                steps = learner.steps
        finally:
            self._retire(evicted)
        return {
            "key": key,
            "steps": steps,
            "model_sha256": self.model_sha256,
            "n_features": self.config.n_features,
            "n_classes": self.config.n_classes,
            "state_sha256": digest,
            "state_bytes": self.learner_bytes // 2,
        }

    def delete(self, key: str) -> bool:
        """Forget the key everywhere (store and memory); True if it existed."""
        check_key(key)
        with self.locks.hold(key):
            self.cache.drop(key)
            with self.store.transaction(key) as txn:
                return txn.delete()

    def health(self) -> dict[str, Any]:
        """Liveness plus a store round trip."""
        return {"status": "ok", "learners_stored": self.store.count(), "learners_in_memory": len(self.cache)}

    def describe(self) -> str:
        """One line for the start-up log (no secrets)."""
        c = self.config
        mib = self.learner_bytes / 2**20
        return (
            f"model {os.path.basename(c.model_path)} (V_M sha256 {self.model_sha256[:12]}), "
            f"{c.n_features} features x {c.n_classes} classes, store {self.store.url}, "
            f"cache {self.cache.capacity} learners x {mib:.2f} MiB (--cache-mb {c.cache_mb:g}), "
            f"snapshot every {c.snapshot_every} steps"
        )
