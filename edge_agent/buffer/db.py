"""The buffer file: one SQLite connection in WAL mode, its transactions, meta values, counters.

Every part of the buffer (readings, batches, quarantine, alert outbox, models, spool ledger)
works over this one connection, so writes of several parts commit in one transaction.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from edge_agent.migrations import migrate

#: The write-ahead log is cut back to this size after each checkpoint (``journal_size_limit``):
#: without it a WAL that once grew (a long backlog, a reader holding a snapshot) keeps its size.
WAL_LIMIT_BYTES = 16 * 1024 * 1024


class BufferFull(Exception):
    """The buffer cannot take more readings now: its cap or byte budget is reached. Nothing was
    written; the source keeps its input."""


class DiskFull(BufferFull):
    """SQLite could not write (``SQLITE_FULL``: the disk, or the file's page limit, is full).
    The transaction was rolled back; nothing of it was written."""


def is_full(exc: BaseException) -> bool:
    """An SQLite error that says the disk (or the file's size limit) is full."""
    return isinstance(exc, sqlite3.OperationalError) and (
        getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
        or "database or disk is full" in str(exc)
    )


@dataclass(frozen=True)
class FileSpace:
    """Bytes of the buffer: what its data takes (pages in use), the database's size (pages in
    use and free, the write-ahead log's newest pages included), the write-ahead log file, and
    the free space left on their file system."""

    used_bytes: int
    size_bytes: int
    wal_bytes: int
    disk_free_bytes: int


class Meta:
    """Small durable values by key: progress markers of sources, sequence counters."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def get(self, key: str) -> str | None:
        row = self._conn.execute("select value from meta where key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def get_int(self, key: str) -> int:
        value = self.get(key)
        return 0 if value is None else int(value)

    def prefixed(self, prefix: str) -> dict[str, str]:
        """Every value whose key starts with ``prefix``, by the rest of the key."""
        return {
            str(k)[len(prefix) :]: str(v)
            for k, v in self._conn.execute(
                "select key, value from meta where substr(key, 1, ?) = ?", (len(prefix), prefix)
            )
        }

    def set(self, key: str, value: object) -> None:
        """Write (inside a transaction, or on its own)."""
        self._conn.execute(
            "insert into meta (key, value) values (?, ?) "
            "on conflict (key) do update set value = excluded.value",
            (key, str(value)),
        )


class Counters:
    """Monotonic counters (``edge-agent status``, ``status.v1``)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def add(self, counters: dict[str, int]) -> None:
        """Add to counters (inside a transaction, or on its own); zeros are skipped."""
        self._conn.executemany(
            "insert into counters (name, value) values (?, ?) "
            "on conflict (name) do update set value = value + excluded.value",
            [(k, v) for k, v in counters.items() if v],
        )

    def all(self) -> dict[str, int]:
        return {str(k): int(v) for k, v in self._conn.execute("select name, value from counters")}


class BufferDB:
    """The connection, the schema (migrated on open) and ``transaction()``.

    The buffer is written by one thread of one process (the agent's main loop);
    ``edge-agent status`` and ``sqlite-utils`` may read it at any time (WAL)."""

    def __init__(self, path: Path | str, *, synchronous: str = "FULL") -> None:
        self.path = Path(path)
        if str(path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self.conn.execute("pragma journal_mode = wal")
        self.conn.execute(f"pragma synchronous = {synchronous}")
        self.conn.execute("pragma busy_timeout = 10000")
        # A small page cache: the (ts, meter_id) index is appended to, the hot pages are few,
        # and the OS keeps the file's pages anyway; every MB here counts in the agent's RSS.
        self.conn.execute("pragma cache_size = -512")
        self.conn.execute(f"pragma journal_size_limit = {WAL_LIMIT_BYTES}")
        migrate(self.conn)
        self.meta = Meta(self.conn)
        self.counters = Counters(self.conn)
        self._on_commit: list[Callable[[], None]] = []
        self.incarnation = self._incarnation()

    def close(self) -> None:
        self.conn.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE … COMMIT, or ROLLBACK on error. Not nested: a part that writes inside
        a caller's transaction says so and does not open its own."""
        try:
            self.conn.execute("begin immediate")
            yield self.conn
            self.conn.execute("commit")
        except BaseException as exc:
            self._on_commit.clear()
            # SQLite may have rolled back already (SQLITE_FULL, an I/O error): keep the cause.
            if self.conn.in_transaction:
                self.conn.execute("rollback")
            if is_full(exc):
                raise DiskFull(str(exc)) from exc
            raise
        done, self._on_commit = self._on_commit, []
        errors: list[BaseException] = []
        for fn in done:  # every one runs: the data is committed whatever one of them does
            try:
                fn()
            except BaseException as exc:  # noqa: BLE001 - re-raised below
                errors.append(exc)
        if errors:
            raise errors[0]

    def limit_size(self, max_bytes: int) -> None:
        """The file never grows past ``max_bytes`` (``max_page_count``; SQLite keeps the
        current size if it is larger): a write beyond raises :class:`DiskFull`."""
        page = int(self.conn.execute("pragma page_size").fetchone()[0])
        self.conn.execute(f"pragma max_page_count = {max(1, max_bytes // page)}")

    def space(self) -> FileSpace:
        """What the buffer takes and what is left (cheap: three pragmas, a stat, a statvfs)."""
        page = int(self.conn.execute("pragma page_size").fetchone()[0])
        pages = int(self.conn.execute("pragma page_count").fetchone()[0])
        free_pages = int(self.conn.execute("pragma freelist_count").fetchone()[0])
        if str(self.path) == ":memory:":
            return FileSpace((pages - free_pages) * page, pages * page, 0, 2**62)
        fs = os.statvfs(self.path.parent)
        return FileSpace(
            used_bytes=(pages - free_pages) * page,
            size_bytes=pages * page,
            wal_bytes=_size(Path(f"{self.path}-wal")),
            disk_free_bytes=fs.f_bavail * fs.f_frsize,
        )

    def count(self, counters: dict[str, int]) -> None:
        """Add to counters in a transaction of their own; skipped when there is no room (a
        counter is not worth a failure when the disk is full)."""
        try:
            with self.transaction():
                self.counters.add(counters)
        except BufferFull:
            pass

    def on_commit(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` once the current transaction has committed (never if it rolls back): how a
        part keeps its in-memory state in step with the file."""
        if self.conn.in_transaction:
            self._on_commit.append(fn)
        else:
            fn()

    def _incarnation(self) -> str:
        """A random id fixed when the file is created: batch ids never repeat across a new card."""
        value = self.meta.get("incarnation")
        if value is None:
            value = secrets.token_hex(4)
            with self.transaction():
                self.meta.set("incarnation", value)
        return value

    def new_incarnation(self) -> str:
        """Start a new incarnation (inside the caller's transaction): the batch ids formed from
        now on cannot repeat any formed before, whatever copy of this file they came from.
        Returns it."""
        value = secrets.token_hex(4)
        self.meta.set("incarnation", value)

        def adopt() -> None:
            self.incarnation = value

        self.on_commit(adopt)
        return value


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0
