"""Shared pieces of the vsml-serve tests: a reference learner, example streams, a PostgreSQL URL."""

from __future__ import annotations

import atexit
import os
import tempfile
from collections.abc import Iterable

import numpy as np
import pytest

from tests import pg_server
from vsml_runtime import Learner
from vsml_runtime.serve import wal

_PG: dict[str, str | None] = {}


def examples(n: int, a: int, b: int, seed: int = 0) -> list[tuple[list[float], int]]:
    """n (x as a JSON-ready list of A floats, label) pairs."""
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal(a).round(4).tolist(), int(rng.integers(b))) for _ in range(n)]


def reference_digest(seen: Iterable[tuple[list[float], int]], a: int, b: int) -> tuple[str, int]:
    """(state digest, steps) of a fresh learner fed ``seen`` in order, exactly as the service feeds it."""
    learner = Learner.pretrained(a, b, device="cpu", threads=1)
    for x, y in seen:
        learner.learn(np.asarray(x, np.float64).astype(np.float32), y)
    return wal.state_digest(learner), learner.steps


def postgres_url() -> str:
    """A reachable PostgreSQL: $VSML_TEST_POSTGRES_URL, else a throwaway cluster started here; else skip."""
    if "url" not in _PG:
        url = os.environ.get("VSML_TEST_POSTGRES_URL")
        if not url and pg_server.find_bin() is not None:
            folder = tempfile.mkdtemp(prefix="vsml-pg-")
            try:
                url = pg_server.start(folder)
                atexit.register(pg_server.stop, folder)
            except Exception as exc:  # no usable server: the tests say so and skip
                _PG["why"] = f"could not start a local PostgreSQL ({exc})"
                url = None
        _PG["url"] = url
    url = _PG["url"]
    if not url:
        pytest.skip(_PG.get("why") or "no PostgreSQL server: set VSML_TEST_POSTGRES_URL or install postgresql")
    try:
        import psycopg

        with psycopg.connect(url, connect_timeout=5):
            pass
    except Exception as exc:
        pytest.skip(f"PostgreSQL at {url} is not reachable: {exc}")
    return url


def fresh_database(url: str, name: str) -> str:
    """A new empty database ``name`` on the server of ``url``; its URL."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        c.execute(f'CREATE DATABASE "{name}"')
    return url.rsplit("/", 1)[0] + "/" + name
