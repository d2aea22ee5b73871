"""PostgreSQL store: replicas share the learners; one replica at a time owns a key.

``transaction(key)`` opens one database transaction on a pooled connection
and takes the key's advisory lock (``pg_advisory_xact_lock`` on a 64-bit
hash of the key) before anything else. The service runs the whole learn --
read the head, bring its cached learner up to it, step, append the record
-- inside that transaction, so steps of one key never interleave across
replicas, and a replica whose cached learner is behind (another replica
learned meanwhile) replays the missing records first. The lock is released
at commit, or by the server when a replica dies (its connection closes).
``append`` also checks the head (a primary key on (key, seq) too), so even a
bug elsewhere could not write two different step n's for one key.
"""

from __future__ import annotations

import hashlib
import queue
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from .store import BusyError, ConflictError, KeyTxn, Store, StoreError, redact
from .wal import Loaded, Record

try:
    import psycopg
    from psycopg import errors as pg_errors
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError('the PostgreSQL store needs psycopg: pip install "vsml[serve]"') from exc

SCHEMA = """
CREATE TABLE IF NOT EXISTS vsml_learners (key TEXT PRIMARY KEY, head BIGINT NOT NULL, snap_seq BIGINT NOT NULL,
                                          gen TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS vsml_snapshots (key TEXT PRIMARY KEY, seq BIGINT NOT NULL, state BYTEA NOT NULL);
CREATE TABLE IF NOT EXISTS vsml_records (key TEXT NOT NULL, seq BIGINT NOT NULL, x BYTEA NOT NULL, y BYTEA NOT NULL,
                                         PRIMARY KEY (key, seq));
"""


def lock_id(key: str) -> int:
    """The advisory-lock id of a key: a signed 64-bit hash (stable across replicas and versions)."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big", signed=True)


class _PgTxn(KeyTxn):
    def __init__(self, conn: Any, key: str) -> None:
        self.conn, self.key = conn, key

    def head(self) -> int | None:
        row = self.conn.execute("SELECT head FROM vsml_learners WHERE key = %s", (self.key,)).fetchone()
        return None if row is None else int(row[0])

    def head_gen(self) -> tuple[int, str] | None:
        row = self.conn.execute("SELECT head, gen FROM vsml_learners WHERE key = %s", (self.key,)).fetchone()
        return None if row is None else (int(row[0]), str(row[1]))

    def load(self, since: int | None = None) -> Loaded:
        row = self.conn.execute("SELECT seq, state FROM vsml_snapshots WHERE key = %s", (self.key,)).fetchone()
        snap_seq = 0 if row is None else int(row[0])
        if since is not None and since >= snap_seq:
            snapshot, after = None, since
        else:
            snapshot, after = (None if row is None else bytes(row[1])), snap_seq
        rows = self.conn.execute(
            "SELECT seq, x, y FROM vsml_records WHERE key = %s AND seq > %s ORDER BY seq", (self.key, after)
        ).fetchall()
        return Loaded(snapshot, snap_seq, [Record(int(s), bytes(x), bytes(y)) for s, x, y in rows])

    def append(self, start: int, x: bytes, y: bytes, n: int, snapshot: bytes | None, gen: str) -> None:
        head = self.head_gen()
        if (head is None and start != 0) or (head is not None and head != (start, gen)):
            raise ConflictError(f"key {self.key!r}: log head is {head}, writer expected {(start, gen)}")
        seq, c, k = start + n, self.conn, self.key
        c.execute("INSERT INTO vsml_records (key, seq, x, y) VALUES (%s, %s, %s, %s)", (k, seq, x, y))
        if head is None:
            c.execute("INSERT INTO vsml_learners (key, head, snap_seq, gen) VALUES (%s, %s, 0, %s)", (k, seq, gen))
        else:
            c.execute("UPDATE vsml_learners SET head = %s WHERE key = %s", (seq, k))
        if snapshot is not None:
            self._put_snapshot(seq, snapshot)

    def _put_snapshot(self, seq: int, data: bytes) -> None:
        c, k = self.conn, self.key
        c.execute(
            "INSERT INTO vsml_snapshots (key, seq, state) VALUES (%s, %s, %s) "
            "ON CONFLICT (key) DO UPDATE SET seq = EXCLUDED.seq, state = EXCLUDED.state",
            (k, seq, data),
        )
        c.execute("DELETE FROM vsml_records WHERE key = %s AND seq <= %s", (k, seq))
        c.execute("UPDATE vsml_learners SET snap_seq = %s WHERE key = %s", (seq, k))

    def snap_seq(self) -> int:
        row = self.conn.execute("SELECT snap_seq FROM vsml_learners WHERE key = %s", (self.key,)).fetchone()
        return 0 if row is None else int(row[0])

    def snapshot(self, seq: int, gen: str, data: bytes) -> bool:
        if self.head_gen() != (seq, gen):
            return False
        self._put_snapshot(seq, data)
        return True

    def delete(self) -> bool:
        existed = self.head() is not None
        for table in ("vsml_records", "vsml_snapshots", "vsml_learners"):
            self.conn.execute(f"DELETE FROM {table} WHERE key = %s", (self.key,))
        return existed


class PostgresStore(Store):
    """Learners in PostgreSQL, shared by replicas (see the module docstring)."""

    def __init__(self, url: str, *, pool_size: int = 8, lock_timeout_s: float = 10.0) -> None:
        self._dsn = url
        self.url = redact(url)
        self._lock_timeout_ms = int(lock_timeout_s * 1000)
        self._pool: queue.LifoQueue[Any] = queue.LifoQueue()
        self._slots = threading.BoundedSemaphore(pool_size)
        self._closed = False
        with self._connection() as conn, conn.transaction():
            # replicas may start together: serialise the schema creation
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (lock_id("vsml-serve schema"),))
            conn.execute(SCHEMA)

    def _connect(self) -> Any:
        try:
            return psycopg.connect(self._dsn, autocommit=True, connect_timeout=10)
        except psycopg.Error as exc:
            raise StoreError(f"cannot connect to {self.url}: {exc}") from exc

    @contextmanager
    def _connection(self) -> Iterator[Any]:
        """A pooled connection (at most ``pool_size`` in use); a broken one is discarded."""
        if self._closed:
            raise StoreError("store is closed")
        self._slots.acquire()
        conn = None
        try:
            try:
                conn = self._pool.get_nowait()
            except queue.Empty:
                conn = self._connect()
            yield conn
        finally:
            if conn is not None and not conn.closed and conn.info.transaction_status == 0 and not self._closed:
                self._pool.put(conn)
            elif conn is not None:
                conn.close()
            self._slots.release()

    @contextmanager
    def transaction(self, key: str) -> Iterator[KeyTxn]:
        """BEGIN, the key's advisory lock, the block, COMMIT (ROLLBACK on an exception)."""
        with self._connection() as conn:
            try:
                with conn.transaction():
                    conn.execute(f"SET LOCAL lock_timeout = {self._lock_timeout_ms}")
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", (lock_id(key),))
                    yield _PgTxn(conn, key)
            except pg_errors.LockNotAvailable as exc:
                raise BusyError(f"key {key!r} is busy on another replica; retry") from exc
            except pg_errors.UniqueViolation as exc:
                raise ConflictError(f"key {key!r}: another writer appended the same step") from exc
            except psycopg.Error as exc:
                raise StoreError(f"store {self.url}: {type(exc).__name__}: {exc}") from exc

    def count(self) -> int:
        with self._connection() as conn:
            return int(conn.execute("SELECT count(*) FROM vsml_learners").fetchone()[0])

    def close(self) -> None:
        self._closed = True
        while True:
            try:
                self._pool.get_nowait().close()
            except queue.Empty:
                break
