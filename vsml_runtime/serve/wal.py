"""The durable form of what a learner learned: example records, state snapshots, replay.

A key's history is an append-only log of *records*: one record per
acknowledged learn request, the float32 inputs ``x`` [T, A] and int64 labels
``y`` [T] exactly as the service fed them to the learner, and ``seq``: the
learner's step count after the record (its steps are ``seq - T + 1 .. seq``).
Every ``snapshot_every`` steps the service also stores a *snapshot* (the
learner's ``state_dict`` as an ``.npz``) and prunes the records it covers.

Loading a key = its latest snapshot (or the initial state) + replay of the
records after it, in order. The CPU step is deterministic (one intra-op
thread, fixed float32 inputs), so the replayed state equals, bit for bit,
the state the service had when it acknowledged the last record
(``tests/test_serve_durability.py`` proves it).
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from vsml_runtime.learner import Learner


@dataclass(frozen=True)
class Record:
    """One acknowledged learn request: inputs, labels, step count after it."""

    seq: int
    x: bytes  # float32 [T, A], C order
    y: bytes  # int64 [T]

    @property
    def n(self) -> int:
        """T, examples in the record."""
        return len(self.y) // 8


@dataclass(frozen=True)
class Loaded:
    """What the store holds for one key: a snapshot (or none) and the records after it."""

    snapshot: bytes | None
    snap_seq: int
    records: list[Record]


def encode(x: np.ndarray, y: np.ndarray) -> tuple[bytes, bytes]:
    """(x float32 bytes, y int64 bytes) of one request."""
    return np.ascontiguousarray(x, np.float32).tobytes(), np.ascontiguousarray(y, np.int64).tobytes()


def decode(rec: Record, n_features: int) -> tuple[np.ndarray, np.ndarray]:
    """A record's x [T, A] float32 and y [T] int64 (ValueError if the sizes do not fit)."""
    y = np.frombuffer(rec.y, np.int64)
    x = np.frombuffer(rec.x, np.float32)
    if x.size != y.size * n_features:
        raise ValueError(f"record seq={rec.seq}: {x.size} inputs for {y.size} labels of {n_features} features")
    return x.reshape(y.size, n_features), y


def snapshot_bytes(learner: Learner) -> bytes:
    """The learner's ``state_dict`` as ``.npz`` bytes."""
    buf = io.BytesIO()
    np.savez(buf, **learner.state_dict())
    return buf.getvalue()


def load_snapshot(learner: Learner, data: bytes) -> None:
    """Restore a snapshot into ``learner`` (model hash and sizes checked by ``load_state_dict``)."""
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        learner.load_state_dict({k: z[k] for k in z.files})


def replay(learner: Learner, records: Iterable[Record]) -> int:
    """Feed ``records`` to ``learner`` in order, checking each ends at its ``seq``; returns steps replayed."""
    done = 0
    for rec in records:
        x, y = decode(rec, learner.n_features)
        if learner.steps + y.size != rec.seq:
            raise ValueError(f"log gap: learner at step {learner.steps}, record of {y.size} ends at {rec.seq}")
        learner.learn_stream(x, y)
        done += y.size
    return done


def restore(learner: Learner, loaded: Loaded) -> int:
    """Snapshot (if any) then replay: ``learner`` must be fresh or at the records' start; returns steps replayed."""
    if loaded.snapshot is not None:
        load_snapshot(learner, loaded.snapshot)
        if learner.steps != loaded.snap_seq:
            raise ValueError(f"snapshot says seq {loaded.snap_seq} but holds {learner.steps} steps")
    return replay(learner, loaded.records)


def state_digest(learner: Learner) -> str:
    """sha256 of everything learned (state tensors, standardiser, steps, seeds; not the meta/paths)."""
    h = hashlib.sha256()
    for name, arr in sorted(learner.state_dict().items()):
        if name == "meta":
            continue
        a = np.ascontiguousarray(arr)
        h.update(f"{name}:{a.dtype.str}:{a.shape};".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def softmax(logits: np.ndarray) -> np.ndarray:
    """Class probabilities from logits [..., B] (float64, rows sum to 1)."""
    z = np.asarray(logits, np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)
