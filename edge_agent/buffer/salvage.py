"""A buffer the card damaged: found when the agent starts, set aside, and what can still be read
of it carried into a new buffer.

WAL and ``synchronous = FULL`` make the buffer survive power cuts, not a card that returns wrong
pages (worn flash, a write torn below SQLite). Such a file raises ``SQLITE_CORRUPT`` or
``SQLITE_NOTADB`` on every start: the agent would crash-loop, and every reading its sources
offer meanwhile would be lost. :func:`open_checked` (the agent's way in) checks the file with
``PRAGMA quick_check`` (it reads every page once) and, when it is damaged, recovers:

1. a marker file ``<buffer>.recovery`` says where a recovery stands, so that a power cut at any
   step resumes it at the next start instead of starting over from an empty buffer;
2. the damaged file and its ``-wal`` / ``-shm`` are renamed ``<buffer>.corrupt-<n>`` (kept for
   a person to look at; nothing deletes it);
3. a new buffer is built beside it (``<buffer>.salvaging``), the readable rows copied in order of
   worth: readings central has not acknowledged first (sent again under the new file's
   incarnation; central keeps the first copy of a reading, so one it had already is a
   duplicate, not a second row), then quarantine records not known to be delivered, alerts, the
   sources' progress and the clock's high-water mark (``meta``), the spool ledger, the meters'
   long memory, the stored models, the counters, and last the acknowledged readings (the
   features' history). Each table is read in ranges of rowids; a range that fails is split down
   to single rows, and rows that cannot be read are counted, not guessed. A disk that fills up
   ends the copy with what it has;
4. the new file takes the buffer's name; the marker goes.

The counters ``buffer_recoveries`` and ``readings_salvaged`` (in ``status.v1``) and the meta
value ``buffer_recovery`` (what was copied, what could not be read) tell central and the field
engineer. Acknowledged readings keep their sequence numbers and batch ids; the others get new
ones above every old one, so the batched readings stay a prefix of the file, as
:class:`~edge_agent.buffer.readings.ReadingStore` needs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edge_agent import failpoints
from edge_agent.buffer.db import BufferDB, DiskFull, is_full

log = logging.getLogger(__name__)

#: Rows read per query while walking a damaged table.
CHUNK_ROWS = 1024
#: Progress is reported (to systemd: more time to start) every this many chunks written.
PROGRESS_EVERY = 64
#: Meta keys that belong to one file and are not carried over: the new file is a new incarnation
#: (its batch ids never repeat an old one) and numbers its readings afresh.
OWN_META = frozenset({"incarnation", "batched_upto", "next_seq"})
#: SQLite's answers that mean the file itself is damaged (not busy, not full).
DAMAGED = (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)
_SUFFIXES = ("", "-wal", "-shm")
# Rowids a walk tries past a damaged part of a table's tree before it gives up on that table.
_FAR = 1 << 40
# A gap this wide behind a damaged part is counted as unreadable, not read rowid by rowid.
_MAX_GAP = 1 << 16
_DAMAGED = object()
# Room kept beyond the budget for the recovery's counters and meta value.
_RECORD_BYTES = 1 << 20


@dataclass
class Recovery:
    """What one recovery did (meta ``buffer_recovery``, JSON)."""

    reason: str
    aside: str
    readings_pending: int = 0
    readings_history: int = 0
    rows: dict[str, int] = field(default_factory=dict)  # copied, by table
    unreadable: dict[str, int] = field(default_factory=dict)  # rowids that failed, by table
    complete: bool = True  # False: the disk filled up before everything was copied


def damaged(exc: BaseException) -> bool:
    """An SQLite error that says the file is damaged."""
    return isinstance(exc, sqlite3.DatabaseError) and (
        getattr(exc, "sqlite_errorcode", None) in DAMAGED
        or "malformed" in str(exc)
        or "not a database" in str(exc)
    )


def check(path: Path) -> str | None:
    """None when the buffer at ``path`` reads whole (or does not exist); else what is wrong."""
    if not path.exists():
        return None
    # read-write, as the agent opens it: closing the last connection folds the write-ahead log
    # in and removes it, as after any run of the agent
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute("pragma quick_check").fetchall()
    except sqlite3.DatabaseError as exc:
        if not damaged(exc):
            raise
        return f"quick_check: {exc}"
    finally:
        conn.close()
    found = [str(r[0]) for r in rows]
    return None if found == ["ok"] else "quick_check: " + "; ".join(found[:5])


def open_checked(
    path: Path | str,
    *,
    synchronous: str = "FULL",
    max_bytes: int | None = None,
    on_progress: Callable[[str], None] | None = None,
) -> Recovery | None:
    """Make sure the buffer at ``path`` can be opened: finish a recovery a power cut stopped,
    check the file, recover it when damaged. The new file holds at most ``max_bytes`` of
    salvaged rows (the buffer's budget: the damaged file still takes its room on the disk).
    Returns what a recovery did, or None."""
    path = Path(path)
    marker = _marker(path)
    if not marker.exists():
        reason = check(path)
        if reason is None:
            return None
        log.error("the buffer %s is damaged (%s): setting it aside, salvaging it", path, reason)
        _write_marker(marker, {"aside": _aside_name(path), "reason": reason, "phase": "salvage"})
    try:
        state = json.loads(marker.read_text())
        aside = path.parent / str(state["aside"])
        phase = state["phase"]
    except (OSError, ValueError, KeyError, TypeError) as exc:  # not a marker this code wrote
        log.error(
            "recovery marker %s unreadable (%s): removed, the buffer checked again", marker, exc
        )
        marker.unlink()
        return open_checked(
            path, synchronous=synchronous, max_bytes=max_bytes, on_progress=on_progress
        )
    salvaging = path.with_name(path.name + ".salvaging")
    recovery = Recovery(reason=str(state.get("reason", "")), aside=aside.name)
    if phase == "salvage":
        for suffix in _SUFFIXES:  # still at its place: the damaged file (install comes later)
            here = Path(f"{path}{suffix}")
            if here.exists() and not Path(f"{aside}{suffix}").exists():
                os.replace(here, f"{aside}{suffix}")
        _fsync_dir(path.parent)
        failpoints.hit("salvage.aside")
        for suffix in _SUFFIXES:  # a salvage a power cut stopped starts again
            Path(f"{salvaging}{suffix}").unlink(missing_ok=True)
        recovery = salvage(aside, salvaging, recovery, synchronous, max_bytes, on_progress)
        failpoints.hit("salvage.copied")
        _write_marker(marker, {**state, "phase": "install"})
        failpoints.hit("salvage.install")
    else:  # a power cut after the copy: what it did is recorded in the new file
        recovery = _recorded(salvaging if salvaging.exists() else path) or recovery
    if salvaging.exists():
        os.replace(salvaging, path)
        _fsync_dir(path.parent)
    marker.unlink(missing_ok=True)
    _fsync_dir(path.parent)
    log.error(
        "buffer recovered into a new file: %d pending readings and %d of history salvaged, "
        "unreadable rowids %s, the damaged file kept as %s",
        recovery.readings_pending,
        recovery.readings_history,
        recovery.unreadable or "none",
        aside,
    )
    return recovery


def salvage(
    source: Path,
    target: Path,
    recovery: Recovery,
    synchronous: str = "FULL",
    max_bytes: int | None = None,
    on_progress: Callable[[str], None] | None = None,
) -> Recovery:
    """Copy what can be read of the buffer ``source`` into a new buffer at ``target``, at most
    ``max_bytes`` of it."""
    _pad_to_header(source)
    new = BufferDB(target, synchronous=synchronous)
    if max_bytes is not None:
        new.limit_size(max_bytes)
    try:
        try:
            old = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
            old.execute("select 1 from sqlite_master limit 1").fetchall()
        except sqlite3.DatabaseError as exc:
            log.error("nothing of %s can be read (%s): the new buffer starts empty", source, exc)
            recovery.unreadable["*"] = 1
        else:
            try:
                _Copy(old, new, recovery, on_progress or (lambda _: None)).run()
            finally:
                old.close()
        if max_bytes is not None:  # room for the record of what happened
            new.limit_size(max_bytes + _RECORD_BYTES)
        with new.transaction():
            new.counters.add(
                {"buffer_recoveries": 1, "readings_salvaged": recovery.readings_pending}
            )
            new.meta.set("buffer_recovery", json.dumps(asdict(recovery), sort_keys=True))
        # one file, no write-ahead log beside it, before it takes the buffer's name
        new.conn.execute("pragma journal_mode = delete")
    finally:
        new.close()
    return recovery


class _Copy:
    """The table-by-table copy of :func:`salvage`."""

    def __init__(
        self,
        old: sqlite3.Connection,
        new: BufferDB,
        recovery: Recovery,
        progress: Callable[[str], None],
    ) -> None:
        self.old, self.new, self.recovery, self.progress = old, new, recovery, progress
        self._counting = True
        self.chunks = 0

    def run(self) -> None:
        try:
            top = self._top("readings")
            shift = top if top is not None else _FAR
            # the readings acknowledged before are batched; every other one comes after them
            with self.new.transaction():
                self.new.meta.set("batched_upto", shift)
            acked = self._acked_batches()
            self._readings(pending=True, shift=shift)
            self._quarantine(acked)
            for table in ("alerts", "spool_files", "meter_profiles", "models"):
                self._plain(table)
            self._meta()
            self._counters()
            self._readings(pending=False, shift=shift)
        except (DiskFull, sqlite3.OperationalError) as exc:
            if not (isinstance(exc, DiskFull) or is_full(exc)):
                raise
            self.recovery.complete = False
            log.error("the disk filled up during the salvage: the copy ends here (%s)", exc)

    # --- reading the damaged file --------------------------------------------------------

    def _top(self, table: str) -> int | None:
        try:
            row = self.old.execute(f"select max(rowid) from {table}").fetchone()
        except sqlite3.DatabaseError as exc:
            if not damaged(exc) and "no such table" not in str(exc):
                raise
            return None
        return None if row is None or row[0] is None else int(row[0])

    def _rows(
        self, table: str, columns: list[str], where: str = "1", *, again: bool = False
    ) -> Iterator[tuple[Any, ...]]:
        """(rowid, *columns) of every row that can be read, in rowid order; rowids that fail
        are counted in ``recovery.unreadable`` (not ``again``, on a second walk of a table)."""
        self._counting = not again
        cols = ", ".join(f'"{c}"' for c in columns)
        try:
            self.old.execute(f"select {cols} from {table} limit 0").fetchall()
        except sqlite3.DatabaseError as exc:
            if not damaged(exc) and "no such" not in str(exc):
                raise
            self._unreadable(table, 1)
            return
        sql = f"select rowid, {cols} from {table} where rowid between ? and ? and ({where}) "
        sql += "order by rowid"
        at = 0
        while True:
            first = self._first_at(table, at)
            if first is _DAMAGED:
                # the way to `at` is damaged: find where the tree can be entered again
                probe = 1
                while (
                    at + probe < _FAR and (first := self._first_at(table, at + probe)) is _DAMAGED
                ):
                    probe *= 2
                if first is _DAMAGED:
                    self._unreadable(table, 1)
                    return
                if probe <= _MAX_GAP:  # what can be read of the rowids skipped, range by range
                    yield from self._range(table, sql, at, at + probe - 1)
                else:
                    self._unreadable(table, probe)
            if first is None:
                return
            assert isinstance(first, int)
            yield from self._range(table, sql, first, first + CHUNK_ROWS - 1)
            at = first + CHUNK_ROWS

    def _first_at(self, table: str, at: int) -> int | None | object:
        """The smallest rowid at or after ``at`` (None: there is none), or ``_DAMAGED`` when
        the way to it through the table's tree cannot be read."""
        try:
            row = self.old.execute(
                f"select min(rowid) from {table} where rowid >= ?", (at,)
            ).fetchone()
        except sqlite3.DatabaseError as exc:
            if not damaged(exc):
                raise
            return _DAMAGED
        return None if row is None or row[0] is None else int(row[0])

    def _range(self, table: str, sql: str, lo: int, hi: int) -> Iterator[tuple[Any, ...]]:
        try:
            rows = self.old.execute(sql, (lo, hi)).fetchall()
        except sqlite3.DatabaseError as exc:
            if not damaged(exc):
                raise
            if lo == hi:
                self._unreadable(table, 1)
                return
            mid = (lo + hi) // 2
            yield from self._range(table, sql, lo, mid)
            yield from self._range(table, sql, mid + 1, hi)
            return
        yield from rows

    def _unreadable(self, table: str, n: int) -> None:
        if self._counting:
            self.recovery.unreadable[table] = self.recovery.unreadable.get(table, 0) + n

    def _columns(self, table: str) -> list[str]:
        return [str(r[1]) for r in self.new.conn.execute(f'pragma table_info("{table}")')]

    # --- writing the new file ------------------------------------------------------------

    def _insert(
        self,
        table: str,
        columns: list[str],
        rows: Iterator[tuple[Any, ...]],
        tally: Callable[[int], None] | None = None,
    ) -> int:
        """Insert ``rows`` in transactions of CHUNK_ROWS; how many (also given to ``tally``)."""
        marks = ", ".join("?" * len(columns))
        sql = f"insert or ignore into {table} ({', '.join(columns)}) values ({marks})"
        done = 0
        chunk: list[tuple[Any, ...]] = []

        def write(rows: list[tuple[Any, ...]]) -> None:
            """One transaction; near a full file, halves until single rows (then DiskFull)."""
            nonlocal done
            try:
                with self.new.transaction() as conn:
                    before = conn.total_changes
                    conn.executemany(sql, rows)
                    done += conn.total_changes - before
            except DiskFull:
                if len(rows) == 1:
                    raise
                write(rows[: len(rows) // 2])
                write(rows[len(rows) // 2 :])

        def flush() -> None:
            write(chunk)
            chunk.clear()
            self.chunks += 1
            if self.chunks % PROGRESS_EVERY == 0:  # a long copy keeps systemd waiting for it
                self.progress(f"salvaging the buffer: {table}, {done} rows so far")

        try:
            for row in rows:
                chunk.append(row)
                if len(chunk) >= CHUNK_ROWS:
                    flush()
            if chunk:
                flush()
        finally:  # what was committed counts, also when the file filled up
            self.recovery.rows[table] = self.recovery.rows.get(table, 0) + done
            if tally is not None:
                tally(done)
        self.progress(f"salvaging the buffer: {table} {self.recovery.rows[table]} rows")
        return done

    def _readings(self, *, pending: bool, shift: int) -> None:
        columns = self._columns("readings")
        data = [c for c in columns if c != "seq"]
        where = "acked_at is null" if pending else "acked_at is not null"

        def rows() -> Iterator[tuple[Any, ...]]:
            for rowid, *values in self._rows("readings", data, where, again=not pending):
                row = dict(zip(data, values, strict=True))
                if pending:  # sent again in a batch of the new file
                    row["batch_id"] = None
                    yield (shift + int(rowid), *row.values())
                else:
                    row["batch_id"] = row["batch_id"] or "salvaged"
                    yield (int(rowid), *row.values())

        def tally(n: int) -> None:
            if pending:
                self.recovery.readings_pending += n
            else:
                self.recovery.readings_history += n

        self._insert("readings", ["seq", *data], rows(), tally)

    def _acked_batches(self) -> set[str]:
        return {
            str(batch_id)
            for _, batch_id in self._rows("batches", ["batch_id"], "acked_at is not null")
        }

    def _quarantine(self, acked: set[str]) -> None:
        """Records not known to be delivered: never batched, or in a batch not known to be
        acknowledged (sent again; one central already had is then stored twice, which beats
        losing one)."""
        columns = [c for c in self._columns("quarantine") if c != "id"]

        def rows() -> Iterator[tuple[Any, ...]]:
            for _, *values in self._rows("quarantine", columns):
                row = dict(zip(columns, values, strict=True))
                if row["batch_id"] is None or row["batch_id"] not in acked:
                    row["batch_id"] = None
                    yield tuple(row.values())

        self._insert("quarantine", columns, rows())

    def _plain(self, table: str) -> None:
        columns = self._columns(table)
        self._insert(table, columns, (tuple(r[1:]) for r in self._rows(table, columns)))

    def _meta(self) -> None:
        rows = (
            (key, value)
            for _, key, value in self._rows("meta", ["key", "value"])
            if key not in OWN_META
        )
        self._insert("meta", ["key", "value"], rows)

    def _counters(self) -> None:
        self._insert(
            "counters",
            ["name", "value"],
            (r[1:] for r in self._rows("counters", ["name", "value"])),
        )


def _recorded(path: Path) -> Recovery | None:
    """The recovery recorded in the buffer at ``path`` (meta ``buffer_recovery``)."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
            row = conn.execute("select value from meta where key = 'buffer_recovery'").fetchone()
        return None if row is None else Recovery(**json.loads(row[0]))
    except (sqlite3.Error, ValueError, TypeError):
        return None


def _pad_to_header(path: Path) -> None:
    """A file cut short (a file system that lost its tail) is extended with zeros to the size
    its header gives: SQLite refuses a file shorter than that, and the pages still there can
    then be read; the zeros read as damaged pages."""
    try:
        with open(path, "r+b") as handle:
            header = handle.read(100)
            if len(header) < 100 or not header.startswith(b"SQLite format 3\x00"):
                return
            size = int.from_bytes(header[16:18], "big")
            page = 65536 if size == 1 else size
            pages = int.from_bytes(header[28:32], "big")
            want = page * pages
            if handle.seek(0, os.SEEK_END) < want <= 1 << 40:
                handle.truncate(want)
    except OSError as exc:
        log.warning("could not extend %s to its header's size: %s", path, exc)


def _marker(path: Path) -> Path:
    return path.with_name(path.name + ".recovery")


def _aside_name(path: Path) -> str:
    n = 1
    while any(path.with_name(f"{path.name}.corrupt-{n}{s}").exists() for s in _SUFFIXES):
        n += 1
    return f"{path.name}.corrupt-{n}"


def _write_marker(marker: Path, state: dict[str, Any]) -> None:
    tmp = marker.with_name(marker.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(state, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, marker)
    _fsync_dir(marker.parent)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
