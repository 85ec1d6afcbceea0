"""Content-addressed translation cache (SQLite, one file under `translate.cache_dir`).

Key: `sha256(json([source, backend, model, prompt, CACHE_VERSION]))`, so the same text
translated by another model, prompt or masking scheme is a different entry, and an edited
translation memory (its digest is the memory backend's model id) never serves stale rows.
Values are the final targets a backend returned (structure already restored); empty
targets are never stored, so a failed text is retried next run.

`put_many` commits at once: the stage writes after every batch, so a killed run keeps
everything it finished and a re-run only translates what is missing. SQLite in WAL mode
lets several processes on one host (Prefect shard tasks) read and write the same file;
workers on different hosts each keep a local cache and `merge_from` one another's.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path

from components.translation.backends import CACHE_VERSION, Identity

DB_NAME = "translations.sqlite"
_CHUNK = 500  # keys per IN (...) query, below SQLite's variable limit

_SCHEMA = """
CREATE TABLE IF NOT EXISTS translations (
    key TEXT PRIMARY KEY,
    target TEXT NOT NULL,
    source TEXT NOT NULL,
    identity TEXT NOT NULL,
    origin TEXT NOT NULL,
    created REAL NOT NULL
)
"""


def cache_key(source: str, identity: Identity) -> str:
    blob = json.dumps([source, identity.backend, identity.model, identity.prompt,
                       CACHE_VERSION], ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


class TranslationCache:
    """`source -> target` per translator identity, persisted under `directory`."""

    def __init__(self, directory: Path | str):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / DB_NAME
        self._db = sqlite3.connect(self.path, timeout=60.0)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(_SCHEMA)
        self._db.commit()

    def get_many(self, sources: Iterable[str], identity: Identity) -> dict[str, str]:
        """The cached targets of those `sources` that are cached."""
        by_key = {cache_key(s, identity): s for s in sources}
        keys = list(by_key)
        found: dict[str, str] = {}
        for start in range(0, len(keys), _CHUNK):
            chunk = keys[start:start + _CHUNK]
            rows = self._db.execute(
                f"SELECT key, target FROM translations WHERE key IN "
                f"({','.join('?' * len(chunk))})", chunk)
            found.update((by_key[k], t) for k, t in rows)
        return found

    def put_many(self, pairs: dict[str, str], identity: Identity,
                 origin: str = "backend") -> int:
        """Store non-empty targets (first write wins) and commit; returns rows added."""
        ident = json.dumps([identity.backend, identity.model, identity.prompt])
        now = time.time()
        rows = [(cache_key(s, identity), t, s, ident, origin, now)
                for s, t in pairs.items() if t.strip()]
        before = self._db.total_changes
        self._db.executemany("INSERT OR IGNORE INTO translations VALUES (?, ?, ?, ?, ?, ?)",
                             rows)
        self._db.commit()
        return self._db.total_changes - before

    def seed(self, memory: dict[str, str], identity: Identity) -> int:
        """Pre-fill the cache of `identity` with translation-memory pairs (origin `memory`),
        so a model only translates what the memory does not cover."""
        return self.put_many(memory, identity, origin="memory")

    def merge_from(self, other: Path | str) -> int:
        """Copy the rows of another cache directory (e.g. a worker's) into this one."""
        src = Path(other) / DB_NAME
        before = self._db.total_changes
        self._db.execute("ATTACH DATABASE ? AS other", (str(src),))
        try:
            self._db.execute("INSERT OR IGNORE INTO translations SELECT * FROM "
                             "other.translations")
            self._db.commit()
        finally:
            self._db.execute("DETACH DATABASE other")
        return self._db.total_changes - before

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM translations").fetchone()[0]

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> TranslationCache:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


class NoCache:
    """`translate.cache_dir: null`: every text goes to the backend, nothing is kept."""

    path = None

    def get_many(self, sources: Iterable[str], identity: Identity) -> dict[str, str]:
        return {}

    def put_many(self, pairs: dict[str, str], identity: Identity,
                 origin: str = "backend") -> int:
        return 0

    def seed(self, memory: dict[str, str], identity: Identity) -> int:
        return 0

    def __len__(self) -> int:
        return 0

    def close(self) -> None:
        pass

    def __enter__(self) -> NoCache:
        return self

    def __exit__(self, *_exc: object) -> None:
        pass
