"""SQLite store: the embedded default (one file, WAL journal, fsync on every commit).

One server process owns a file: an exclusive ``flock`` on ``<file>.lock``
refuses a second process (two processes would each cache learners and
interleave steps). Inside the process the service's per-key lock owns a key,
so ``transaction(key)`` takes no lock itself: each operation is its own short
SQLite transaction on the one connection, under a mutex, and different keys
step in parallel while only their short writes queue here. Appends that
arrive while a commit is in progress share the next commit's fsync (group
commit), so durable acknowledgements scale with concurrent clients.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .store import ConflictError, KeyTxn, Store, StoreError
from .wal import Loaded, Record

SCHEMA = """
CREATE TABLE IF NOT EXISTS learners (key TEXT PRIMARY KEY, head INTEGER NOT NULL, snap_seq INTEGER NOT NULL,
                                     gen TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS snapshots (key TEXT PRIMARY KEY, seq INTEGER NOT NULL, state BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS records (key TEXT NOT NULL, seq INTEGER NOT NULL, x BLOB NOT NULL, y BLOB NOT NULL,
                                    PRIMARY KEY (key, seq));
"""


class _SqliteTxn(KeyTxn):
    def __init__(self, store: SqliteStore, key: str) -> None:
        self.store, self.key = store, key

    def head(self) -> int | None:
        with self.store.atomic() as c:
            return _head(c, self.key)

    def head_gen(self) -> tuple[int, str] | None:
        with self.store.atomic() as c:
            return _head_gen(c, self.key)

    def load(self, since: int | None = None) -> Loaded:
        with self.store.atomic() as c:
            row = c.execute("SELECT seq, state FROM snapshots WHERE key = ?", (self.key,)).fetchone()
            snap_seq = 0 if row is None else int(row[0])
            if since is not None and since >= snap_seq:
                snapshot, after = None, since
            else:
                snapshot, after = (None if row is None else bytes(row[1])), snap_seq
            rows = c.execute(
                "SELECT seq, x, y FROM records WHERE key = ? AND seq > ? ORDER BY seq", (self.key, after)
            ).fetchall()
        return Loaded(snapshot, snap_seq, [Record(int(s), bytes(x), bytes(y)) for s, x, y in rows])

    def append(self, start: int, x: bytes, y: bytes, n: int, snapshot: bytes | None, gen: str) -> None:
        self.store.group_commit(_Write(self.key, start, start + n, x, y, snapshot, gen))

    def snap_seq(self) -> int:
        with self.store.atomic() as c:
            row = c.execute("SELECT snap_seq FROM learners WHERE key = ?", (self.key,)).fetchone()
        return 0 if row is None else int(row[0])

    def snapshot(self, seq: int, gen: str, data: bytes) -> bool:
        with self.store.atomic() as c:
            if _head_gen(c, self.key) != (seq, gen):
                return False
            _put_snapshot(c, self.key, seq, data)
        return True

    def delete(self) -> bool:
        with self.store.atomic() as c:
            existed = _head(c, self.key) is not None
            for table in ("records", "snapshots", "learners"):
                c.execute(f"DELETE FROM {table} WHERE key = ?", (self.key,))
        return existed


@dataclass
class _Write:
    """One append waiting for a group commit."""

    key: str
    start: int
    seq: int
    x: bytes
    y: bytes
    snapshot: bytes | None
    gen: str
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None

    def apply(self, c: sqlite3.Connection) -> None:
        head = _head_gen(c, self.key)
        if (head is None and self.start != 0) or (head is not None and head != (self.start, self.gen)):
            raise ConflictError(f"key {self.key!r}: log head is {head}, writer expected {(self.start, self.gen)}")
        c.execute("INSERT INTO records (key, seq, x, y) VALUES (?, ?, ?, ?)", (self.key, self.seq, self.x, self.y))
        if head is None:
            c.execute(
                "INSERT INTO learners (key, head, snap_seq, gen) VALUES (?, ?, 0, ?)", (self.key, self.seq, self.gen)
            )
        else:
            c.execute("UPDATE learners SET head = ? WHERE key = ?", (self.seq, self.key))
        if self.snapshot is not None:
            _put_snapshot(c, self.key, self.seq, self.snapshot)


def _put_snapshot(c: sqlite3.Connection, key: str, seq: int, data: bytes) -> None:
    c.execute("INSERT OR REPLACE INTO snapshots (key, seq, state) VALUES (?, ?, ?)", (key, seq, data))
    c.execute("DELETE FROM records WHERE key = ? AND seq <= ?", (key, seq))
    c.execute("UPDATE learners SET snap_seq = ? WHERE key = ?", (seq, key))


def _head_gen(c: sqlite3.Connection, key: str) -> tuple[int, str] | None:
    row = c.execute("SELECT head, gen FROM learners WHERE key = ?", (key,)).fetchone()
    return None if row is None else (int(row[0]), str(row[1]))


def _head(c: sqlite3.Connection, key: str) -> int | None:
    row = c.execute("SELECT head FROM learners WHERE key = ?", (key,)).fetchone()
    return None if row is None else int(row[0])


class SqliteStore(Store):
    """The embedded store in one SQLite file (see the module docstring)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.url = f"sqlite:///{self.path}"
        if not self.path.parent.is_dir():
            raise StoreError(f"cannot open store {self.path}: folder {self.path.parent} does not exist")
        self._lockfile = open(f"{self.path}.lock", "a")  # noqa: SIM115 - held for the store's lifetime
        try:
            fcntl.flock(self._lockfile, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            self._lockfile.close()
            raise StoreError(f"store {self.path} is in use by another process (one server per SQLite file)") from exc
        self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.executescript(SCHEMA)
        self._mutex = threading.Lock()
        self._pending_lock = threading.Lock()
        self._pending: list[_Write] = []
        self.commits = self.batched = 0  # group commits, appends they carried

    @contextmanager
    def atomic(self) -> Iterator[sqlite3.Connection]:
        """One SQLite transaction (BEGIN IMMEDIATE .. COMMIT, fsynced) under the store's mutex."""
        with self._mutex:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise StoreError(f"store {self.path}: {exc}") from exc
            try:
                yield self._conn
            except sqlite3.Error as exc:
                self._conn.execute("ROLLBACK")
                raise StoreError(f"store {self.path}: {exc}") from exc
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            try:
                self._conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self._conn.execute("ROLLBACK")
                raise StoreError(f"store {self.path}: commit failed: {exc}") from exc

    def group_commit(self, write: _Write) -> None:
        """Commit ``write`` durably, in one fsync with whatever other appends are queued (group commit).

        Each thread queues its write and takes the mutex; the first to get it
        commits every queued write in one transaction (a savepoint each, so
        one write's conflict fails that write alone) and wakes the others.
        """
        with self._pending_lock:
            self._pending.append(write)
        with self._mutex:
            if not write.done.is_set():
                with self._pending_lock:
                    batch, self._pending = self._pending, []
                self._commit(batch)
        if write.error is not None:
            raise write.error

    def _commit(self, batch: list[_Write]) -> None:
        c = self._conn
        try:
            c.execute("BEGIN IMMEDIATE")
            for w in batch:
                c.execute("SAVEPOINT one")
                try:
                    w.apply(c)
                except (ConflictError, sqlite3.Error) as exc:
                    c.execute("ROLLBACK TO one")
                    w.error = exc if isinstance(exc, ConflictError) else StoreError(f"store {self.path}: {exc}")
                c.execute("RELEASE one")
            c.execute("COMMIT")
        except sqlite3.Error as exc:
            if c.in_transaction:
                c.execute("ROLLBACK")
            for w in batch:
                w.error = w.error or StoreError(f"store {self.path}: commit failed: {exc}")
        finally:
            for w in batch:
                w.done.set()
        self.commits += 1
        self.batched += len(batch)

    @contextmanager
    def transaction(self, key: str) -> Iterator[KeyTxn]:
        """Operations on ``key``; each is atomic and durable when it returns (see the module docstring)."""
        yield _SqliteTxn(self, key)

    def count(self) -> int:
        with self._mutex:
            return int(self._conn.execute("SELECT count(*) FROM learners").fetchone()[0])

    def close(self) -> None:
        with self._mutex:
            self._conn.close()
            fcntl.flock(self._lockfile, fcntl.LOCK_UN)
            self._lockfile.close()
