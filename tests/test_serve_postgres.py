"""vsml-serve on a REAL PostgreSQL (a throwaway local cluster, or $VSML_TEST_POSTGRES_URL): replicas share keys."""

from __future__ import annotations

import threading

import pytest

pytest.importorskip("psycopg")

from tests.serve_helpers import examples, fresh_database, postgres_url, reference_digest
from vsml_runtime.serve.service import ServeConfig, Service
from vsml_runtime.serve.store import BusyError
from vsml_runtime.serve.store_postgres import lock_id
from vsml_runtime.serve.stores import open_store

A, B = 20, 4


@pytest.fixture
def pg(request) -> str:  # type: ignore[no-untyped-def]
    return fresh_database(postgres_url(), f"vsml_t_{request.node.name.lower()[:40]}")


def _replica(url: str, snapshot_every: int = 4, **kw) -> Service:  # type: ignore[no-untyped-def]
    return Service(ServeConfig(n_features=A, n_classes=B, snapshot_every=snapshot_every), open_store(url, **kw))


def test_two_replicas_alternating_on_one_key_equal_one_learner(pg: str) -> None:
    """Replica 1 and 2 take turns on one key: each catches up from the other's records and snapshots."""
    r1, r2 = _replica(pg), _replica(pg)
    seen = examples(15, A, B)
    for i, (x, y) in enumerate(seen):
        out = (r1 if i % 3 else r2).learn("shared", x, y)
        assert out["steps"] == i + 1
    want = reference_digest(seen, A, B)[0]
    assert r1.info("shared")["state_sha256"] == r2.info("shared")["state_sha256"] == want
    assert r2.delete("shared") is True
    assert r1.predict("shared", seen[0][0])["steps"] == 0  # r1's cached learner is not served after the delete
    r1.store.close()
    r2.store.close()


def test_concurrent_replicas_never_interleave_steps(pg: str) -> None:
    """Threads on two replicas hammer one key; the acknowledged steps, ordered, replay to the same state."""
    r1, r2 = _replica(pg, snapshot_every=5), _replica(pg, snapshot_every=5)
    seen = examples(24, A, B, seed=5)
    acked: dict[int, tuple[list[float], int]] = {}
    guard = threading.Lock()

    def client(i: int) -> None:
        for j in range(i, len(seen), 4):
            out = (r1 if j % 2 else r2).learn("hot", *seen[j])
            with guard:
                assert out["steps"] not in acked
                acked[out["steps"]] = seen[j]

    threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(acked) == list(range(1, 25))
    want = reference_digest([acked[s] for s in sorted(acked)], A, B)[0]
    assert r1.info("hot")["state_sha256"] == want
    assert r2.info("hot")["state_sha256"] == want
    r1.store.close()
    r2.store.close()


def test_a_key_held_by_another_replica_is_busy_not_interleaved(pg: str) -> None:
    store = open_store(pg)
    other = _replica(pg, lock_timeout_s=0.2)
    x, y = examples(1, A, B)[0]
    with store.transaction("k"), pytest.raises(BusyError):  # held: the other replica waits, then gives up
        other.learn("k", x, y)
    assert other.learn("k", x, y)["steps"] == 1
    store.close()
    other.store.close()


def test_a_dead_replica_releases_its_keys(pg: str) -> None:
    """A replica's connection dying mid-transaction (a kill -9) rolls back and frees the key."""
    import psycopg

    r1 = _replica(pg)
    seen = examples(3, A, B)
    r1.learn("k", *seen[0])
    conn = psycopg.connect(pg, autocommit=True)
    conn.execute("BEGIN")
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (lock_id("k"),))
    conn.execute("UPDATE vsml_learners SET head = 99 WHERE key = 'k'")  # a half-done step, never committed
    conn.close()  # the process is gone
    assert r1.learn("k", *seen[1])["steps"] == 2
    assert r1.info("k")["state_sha256"] == reference_digest(seen[:2], A, B)[0]
    r1.store.close()


def test_a_key_deleted_and_relearned_elsewhere_is_not_served_stale(pg: str) -> None:
    """r1 caches k at 3 steps; r2 deletes k and learns 3 other examples: same head, new generation."""
    r1, r2 = _replica(pg), _replica(pg)
    old, new = examples(3, A, B, seed=1), examples(3, A, B, seed=2)
    for x, y in old:
        r1.learn("k", x, y)
    assert r2.delete("k") is True
    for x, y in new:
        r2.learn("k", x, y)
    assert r1.info("k")["state_sha256"] == reference_digest(new, A, B)[0]
    r1.store.close()
    r2.store.close()
