"""Pick the store backend from STORE_URL: `sqlite:///PATH` or `questdb://HOST[:HTTP_PORT]`."""
from __future__ import annotations

from urllib.parse import urlparse

from pipeline.store.base import Store, StoreUnavailable, to_ms

__all__ = ["Store", "StoreUnavailable", "open_store", "to_ms"]


def open_store(url: str) -> Store:
    parsed = urlparse(url)
    if parsed.scheme == "sqlite":
        from pipeline.store.sqlite import SQLiteStore

        # sqlite:///relative/path and sqlite:////absolute/path, as SQLAlchemy spells them.
        path = url[len("sqlite:///"):] if url.startswith("sqlite:///") else parsed.path
        if not path:
            raise ValueError(f"STORE_URL {url!r} names no file: use sqlite:///PATH")
        return SQLiteStore(path)
    if parsed.scheme == "questdb":
        from pipeline.store.questdb import QuestDBStore

        if not parsed.hostname:
            raise ValueError(f"STORE_URL {url!r} names no host: use questdb://HOST")
        return QuestDBStore(parsed.hostname, http_port=parsed.port or 9000)
    raise ValueError(f"STORE_URL {url!r} is not supported: use sqlite:///PATH or questdb://HOST")
