"""The store interface: per-key transactions over records, snapshots and heads.

A store keeps, per key, the ``head`` (steps durable), a *generation* (a random
id given when the key is created, so a key deleted and learned again is never
mistaken for its former self by a replica's cache), the latest snapshot and
the records after it (``vsml_runtime.serve.wal``). All access to one key goes
through ``store.transaction(key)``, a context manager yielding a ``KeyTxn``;
its writes are durable when the ``with`` block exits without an exception
(the service acknowledges only then). Stores:

* ``sqlite:///path.db`` (or a plain path): embedded, WAL journal,
  ``synchronous=FULL``; one server process per file (an exclusive lock file
  refuses a second one).
* ``postgresql://...``: shared by replicas; each transaction takes the key's
  advisory lock (``pg_advisory_xact_lock``), so one replica at a time owns a
  key and steps of one key never interleave; a replica that dies releases
  its locks with its connection.
"""

from __future__ import annotations

import abc
from contextlib import AbstractContextManager
from urllib.parse import urlsplit, urlunsplit

from .wal import Loaded


class StoreError(RuntimeError):
    """The store failed or is unreachable (the request changed nothing that was acknowledged)."""


class ConflictError(StoreError):
    """The log's head is not where this writer expected: another writer advanced the key."""


class BusyError(StoreError):
    """The key is owned by another replica for longer than the lock timeout."""


class KeyTxn(abc.ABC):
    """Operations on one key inside one store transaction."""

    @abc.abstractmethod
    def head(self) -> int | None:
        """Steps durable for the key, or None when the store has never seen it."""

    @abc.abstractmethod
    def head_gen(self) -> tuple[int, str] | None:
        """(steps durable, generation) of the key, or None when the store has never seen it."""

    @abc.abstractmethod
    def load(self, since: int | None = None) -> Loaded:
        """Snapshot + records after it; with ``since`` >= the snapshot's seq, only the records after ``since``."""

    @abc.abstractmethod
    def append(self, start: int, x: bytes, y: bytes, n: int, snapshot: bytes | None, gen: str) -> None:
        """Add the record of ``n`` steps after ``start`` (ConflictError unless (head, generation) == (start, gen)).

        The first record of a key creates it with generation ``gen``. With
        ``snapshot`` (the state at ``start + n``), store it and drop the
        records it covers.
        """

    @abc.abstractmethod
    def snap_seq(self) -> int:
        """The step count of the key's latest snapshot (0 if none)."""

    @abc.abstractmethod
    def snapshot(self, seq: int, gen: str, data: bytes) -> bool:
        """Store ``data`` as the snapshot at ``seq`` and drop the records it covers, if (seq, gen) is the head.

        Returns False (and writes nothing) when the head has moved on or the key was re-created.
        """

    @abc.abstractmethod
    def delete(self) -> bool:
        """Forget the key (records, snapshot, head); True if it existed."""


class Store(abc.ABC):
    """A durable home for many learners' histories."""

    url: str  # redacted: safe to print

    @abc.abstractmethod
    def transaction(self, key: str) -> AbstractContextManager[KeyTxn]:
        """A transaction on ``key``: commits when the block exits cleanly, rolls back otherwise."""

    @abc.abstractmethod
    def count(self) -> int:
        """Number of keys stored."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release connections and locks."""


def redact(url: str) -> str:
    """The URL without its password (for logs and metrics)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))
