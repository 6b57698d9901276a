"""Pick the store backend from STORE_URL: `sqlite:///PATH`, `questdb://HOST[:HTTP_PORT]` or a QuestDB
client string (`http::addr=...;`, `https::addr=...;`), with QUESTDB_PG_URL for QuestDB's PG wire."""
from __future__ import annotations

from urllib.parse import urlparse

from pipeline.store.base import Store, StoreUnavailable, to_ms

__all__ = ["Store", "StoreUnavailable", "open_store", "store_type", "to_ms"]


def store_type(url: str) -> type[Store]:
    """The Store class of a STORE_URL (checked by open_store): what a writer prepares batches with."""
    if url.startswith(("http::", "https::")) or urlparse(url).scheme == "questdb":
        from pipeline.store.questdb import QuestDBStore

        return QuestDBStore
    from pipeline.store.sqlite import SQLiteStore

    return SQLiteStore


def open_store(url: str, pg_url: str = "") -> Store:
    """The store STORE_URL names; `pg_url` (QUESTDB_PG_URL) is where a QuestDB store is read. Connects nowhere yet."""
    if url.startswith(("http::", "https::")):
        from pipeline.store.questdb import QuestDBStore

        return QuestDBStore.from_urls(url, pg_url)
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
        return QuestDBStore.from_urls(url, pg_url)
    raise ValueError(f"STORE_URL {url!r} is not supported: use sqlite:///PATH, questdb://HOST or http::addr=HOST:PORT;")
