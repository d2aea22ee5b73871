"""vsml-serve durability: the CPU step is deterministic, replay equals the original, restarts lose nothing."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("starlette")

from tests.serve_helpers import examples, reference_digest
from vsml_runtime import Learner
from vsml_runtime.serve import wal
from vsml_runtime.serve.service import BadInput, ServeConfig, Service
from vsml_runtime.serve.store import StoreError
from vsml_runtime.serve.stores import open_store

A, B = 20, 4


def _learner() -> Learner:
    return Learner.pretrained(A, B, device="cpu", threads=1)


def test_cpu_step_is_deterministic_and_replay_equals_the_original() -> None:
    """Two learners fed the same stream agree bit for bit; so does snapshot + replay of the tail."""
    xs = np.random.default_rng(1).standard_normal((40, A)).astype(np.float32)
    ys = np.arange(40) % B
    one, two = _learner(), _learner()
    logits_one = [one.learn(x, int(y), return_logits=True)[1] for x, y in zip(xs, ys, strict=True)]
    _, logits_two = two.learn_stream(xs, ys, return_logits=True)
    np.testing.assert_array_equal(np.stack(logits_one), logits_two)
    assert wal.state_digest(one) == wal.state_digest(two)

    # snapshot at step 25, records after it, restore into a fresh learner
    base = _learner()
    base.learn_stream(xs[:25], ys[:25])
    snap = wal.snapshot_bytes(base)
    recs = [
        wal.Record(25 + 5 * (i + 1), *wal.encode(xs[25 + 5 * i : 30 + 5 * i], ys[25 + 5 * i : 30 + 5 * i]))
        for i in range(3)
    ]
    restored = _learner()
    assert wal.restore(restored, wal.Loaded(snap, 25, recs)) == 15
    assert restored.steps == 40
    assert wal.state_digest(restored) == wal.state_digest(one)


def test_replay_refuses_a_gap() -> None:
    learner = _learner()
    x, y = wal.encode(np.zeros((2, A), np.float32), np.array([0, 1]))
    with pytest.raises(ValueError, match="log gap"):
        wal.replay(learner, [wal.Record(3, x, y)])


def test_restart_restores_every_acknowledged_example(tmp_path) -> None:
    """Learn, drop the service without closing anything (a crash), reopen: state == reference."""
    cfg = ServeConfig(n_features=A, n_classes=B, snapshot_every=7)
    seen = examples(32, A, B)
    svc = Service(cfg, open_store(f"sqlite:///{tmp_path}/s.db"))
    for x, y in seen[:23]:
        svc.learn("alice", x, y)
    batch = seen[23:30]
    out = svc.learn("alice", [x for x, _ in batch], [y for _, y in batch])
    assert out["steps"] == 30 and len(out["predictions"]) == 7  # crosses 28: snapshot at 30
    for x, y in seen[30:]:
        svc.learn("alice", x, y)
    live = svc.info("alice")["state_sha256"]
    svc.store._lockfile.close()  # the crashed process's lock goes with it
    del svc

    again = Service(cfg, open_store(f"sqlite:///{tmp_path}/s.db"))
    info = again.info("alice")
    want, steps = reference_digest(seen, A, B)
    assert info["steps"] == steps == 32
    assert info["state_sha256"] == live == want
    assert again.metrics.value("vsml_replayed_steps_total") == 2  # the snapshot at 30, then 2 records


def test_predictions_before_learning_match_the_reference(tmp_path) -> None:
    cfg = ServeConfig(n_features=A, n_classes=B, snapshot_every=4)
    svc = Service(cfg, open_store(tmp_path / "s.db"))
    ref = _learner()
    for x, y in examples(12, A, B, seed=3):
        got = svc.learn("k", x, y)
        pred, logits = ref.learn(np.asarray(x, np.float32), y, return_logits=True)
        assert got["prediction"] == pred
        np.testing.assert_allclose(got["probabilities"], wal.softmax(logits), rtol=1e-6)
        assert abs(sum(got["probabilities"]) - 1) < 1e-9


def test_bad_input_changes_nothing(tmp_path) -> None:
    svc = Service(ServeConfig(n_features=A, n_classes=B), open_store(tmp_path / "s.db"))
    x, y = examples(1, A, B)[0]
    svc.learn("k", x, y)
    before = svc.info("k")
    bad = [
        (x[:-1], y),  # wrong size
        ([*x[:-1], float("nan")], y),  # NaN
        ([*x[:-1], float("inf")], y),
        (x, B),  # unknown label
        (x, -1),
        (x, 1.5),
        ([x, x], [1]),  # label count
        ([x, x[:-1]], [1, 2]),  # ragged
    ]
    for bx, by in bad:
        with pytest.raises(BadInput):
            svc.learn("k", bx, by)
    with pytest.raises(BadInput, match="key"):
        svc.learn("../etc", x, y)
    assert svc.info("k") == before


def test_a_failed_write_is_not_acknowledged_and_not_served(tmp_path) -> None:
    """If the store fails after the step, the request fails and the in-memory step is forgotten."""
    svc = Service(ServeConfig(n_features=A, n_classes=B), open_store(tmp_path / "s.db"))
    seen = examples(3, A, B)
    svc.learn("k", *seen[0])
    real = svc.store.transaction

    class Broken:
        def __init__(self, key: str) -> None:
            self.ctx = real(key)

        def __enter__(self):  # type: ignore[no-untyped-def]
            txn = self.ctx.__enter__()

            def append(*args, **kwargs) -> None:  # type: ignore[no-untyped-def]
                raise StoreError("disk on fire")

            txn.append = append  # type: ignore[method-assign]
            return txn

        def __exit__(self, *exc) -> bool:  # type: ignore[no-untyped-def]
            return bool(self.ctx.__exit__(*exc))

    svc.store.transaction = Broken  # type: ignore[method-assign]
    with pytest.raises(StoreError):
        svc.learn("k", *seen[1])
    svc.store.transaction = real  # type: ignore[method-assign]
    assert svc.info("k")["steps"] == 1
    assert svc.info("k")["state_sha256"] == reference_digest(seen[:1], A, B)[0]


def test_second_process_on_one_sqlite_file_is_refused(tmp_path) -> None:
    store = open_store(tmp_path / "s.db")
    with pytest.raises(StoreError, match="in use"):
        open_store(tmp_path / "s.db")
    store.close()
    open_store(tmp_path / "s.db").close()


def test_eviction_loses_nothing(tmp_path) -> None:
    """A cache of one learner over three keys: every request restores; states still equal the references."""
    cfg = ServeConfig(n_features=A, n_classes=B, snapshot_every=3, cache_mb=0.0)
    svc = Service(cfg, open_store(tmp_path / "s.db"))
    assert svc.cache.capacity == 1
    streams = {k: examples(10, A, B, seed=i) for i, k in enumerate("abc")}
    for i in range(10):
        for k, s in streams.items():
            svc.learn(k, *s[i])
    assert len(svc.cache) == 1 and svc.cache.evictions >= 20
    assert svc.metrics.value("vsml_replayed_steps_total") == 0  # evicted learners were snapshotted
    for k, s in streams.items():
        assert svc.info(k)["state_sha256"] == reference_digest(s, A, B)[0]
    assert svc.delete("a") is True and svc.delete("a") is False


def test_parallel_keys_group_commit_and_stay_exact(tmp_path) -> None:
    """8 threads on 8 keys: appends share commits (group commit), and every key equals its reference."""
    import threading

    svc = Service(ServeConfig(n_features=A, n_classes=B, snapshot_every=6), open_store(tmp_path / "s.db"))
    streams = {f"k{i}": examples(25, A, B, seed=10 + i) for i in range(8)}

    def run(key: str) -> None:
        for x, y in streams[key]:
            svc.learn(key, x, y)

    threads = [threading.Thread(target=run, args=(k,)) for k in streams]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    store = svc.store
    assert store.batched == 8 * 25 and store.commits <= store.batched  # type: ignore[attr-defined]
    for key, s in streams.items():
        assert svc.info(key)["state_sha256"] == reference_digest(s, A, B)[0]


def test_predict_rows_are_capped_by_memory(tmp_path) -> None:
    """Predicting n rows tiles the state n times: at 784 x 10 (2 MB of state) about 33 rows (64 MiB)."""
    svc = Service(ServeConfig(n_features=784, n_classes=10), open_store(tmp_path / "s.db"))
    cap = svc.max_predict_rows
    assert 30 <= cap <= 34
    assert len(svc.predict("k", np.zeros((cap, 784)).tolist())["predictions"]) == cap
    with pytest.raises(BadInput, match=f"1 to {cap} examples"):
        svc.predict("k", np.zeros((cap + 1, 784)).tolist())
