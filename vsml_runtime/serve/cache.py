"""Hot learners in memory (a bounded LRU) and one lock per key.

Memory bound: the cache holds at most ``capacity`` learners; the service
sizes it as ``--cache-mb`` divided by one learner's resident size (about
twice its state: the engine keeps an input and an output copy; 4.3 MiB at
784 x 10, 45 KiB at 20 x 4). Learners being stepped right now by a request
may sit outside the cache for the request's duration, and the service keeps
4 evicted ones for reuse, so the bound on learner memory is
``(capacity + worker threads + 4) x learner size``.

Evicting loses nothing: every acknowledged step is already in the store,
and a key that comes back is restored from its snapshot and records. (The
service writes an evicted learner's snapshot, so that restoring it is one
read rather than a replay.)
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager

from vsml_runtime.learner import Learner


class KeyLocks:
    """A mutex per key, created on demand and dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, tuple[threading.Lock, int]] = {}

    @contextmanager
    def hold(self, key: str) -> Iterator[None]:
        """Hold ``key``'s lock for the block (other keys are unaffected)."""
        with self._guard:
            lock, users = self._locks.get(key, (None, 0))
            if lock is None:
                lock = threading.Lock()
            self._locks[key] = (lock, users + 1)
        try:
            with lock:
                yield
        finally:
            with self._guard:
                lock, users = self._locks[key]
                if users == 1:
                    del self._locks[key]
                else:
                    self._locks[key] = (lock, users - 1)

    def __len__(self) -> int:
        with self._guard:
            return len(self._locks)


Entry = tuple[Learner, str]  # a learner and the generation of the key it belongs to


class LearnerCache:
    """At most ``capacity`` (learner, generation) entries by key, least recently used evicted first."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"cache capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._items: OrderedDict[str, Entry] = OrderedDict()
        self._guard = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def get(self, key: str) -> Entry | None:
        """The cached (learner, generation) of ``key`` (now most recently used), or None."""
        with self._guard:
            entry = self._items.get(key)
            if entry is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return entry

    def put(self, key: str, learner: Learner, gen: str) -> list[tuple[str, Entry]]:
        """Cache ``learner`` for ``key``; returns the least recently used entries evicted beyond ``capacity``."""
        evicted = []
        with self._guard:
            self._items[key] = (learner, gen)
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                evicted.append(self._items.popitem(last=False))
                self.evictions += 1
        return evicted

    def drop(self, key: str) -> None:
        """Forget ``key``'s learner (it is reloaded from the store when needed)."""
        with self._guard:
            self._items.pop(key, None)

    def __len__(self) -> int:
        with self._guard:
            return len(self._items)
