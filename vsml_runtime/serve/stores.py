"""Open a store from its URL (the one place that knows every store implementation).

Kept apart from ``store`` (the interface), which the implementations import.
"""

from __future__ import annotations

import os

from .store import Store


def open_store(url: str | os.PathLike[str], *, pool_size: int = 8, lock_timeout_s: float = 10.0) -> Store:
    """A store from its URL: ``sqlite:///file.db``, a plain file path, or ``postgresql://...``."""
    url = os.fspath(url)
    if url.startswith(("postgresql://", "postgres://")):
        from .store_postgres import PostgresStore

        return PostgresStore(url, pool_size=pool_size, lock_timeout_s=lock_timeout_s)
    if url.startswith("sqlite://"):
        path = url[len("sqlite://") :]
        if path.startswith("/"):
            path = path[1:]  # sqlite:///rel.db -> rel.db, sqlite:////abs.db -> /abs.db
        if not path:
            raise ValueError(f"store URL {url!r} names no file")
    elif "://" in url:
        raise ValueError(f"unknown store {url!r}: use sqlite:///FILE or postgresql://...")
    else:
        path = url
    from .store_sqlite import SqliteStore

    return SqliteStore(path)
