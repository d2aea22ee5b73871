"""vsml-serve: an online-learning HTTP service, one VSML learner per key, that loses nothing acknowledged.

Torch-free (numpy + ONNX Runtime + Starlette/uvicorn; psycopg for
PostgreSQL). Modules:

* ``service``: learners by key over a store (``Service``, ``ServeConfig``).
* ``wal``: records, snapshots, replay, state digests.
* ``store`` / ``store_sqlite`` / ``store_postgres``: where histories live.
* ``cache``: the bounded LRU of hot learners and the per-key locks.
* ``app``: the HTTP routes; ``auth``: bearer token; ``metrics``: Prometheus text.
* ``cli``: the ``vsml-serve`` command.
"""

from __future__ import annotations

from .service import ServeConfig, Service
from .stores import open_store

__all__ = ["ServeConfig", "Service", "open_store"]
