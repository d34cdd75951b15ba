"""A buffer the card damaged: found when the agent starts, set aside, and what can still be read
of it carried into a new buffer.

WAL and ``synchronous = FULL`` make the buffer survive power cuts, not a card that returns wrong
pages (worn flash, a write torn below SQLite, a sector it cannot read). Such a file fails on
every start: the agent would crash-loop, and every reading its sources offer meanwhile would be
lost. :func:`open_checked` (the agent's way in) checks the file with ``PRAGMA quick_check`` (it
reads every page once); damage that check cannot see (an index that disagrees with its table, a
text value that is no longer UTF-8) makes the running agent fail on it: ``edge-agent run`` then
marks the buffer suspect (``<buffer>.suspect``, :func:`mark_suspect`) and exits, and the next
start recovers whatever a thorough check (``integrity_check``) says. A recovery:

1. a marker file ``<buffer>.recovery`` says where it stands, so that a power cut at any step
   resumes it at the next start (a marker the card garbled, with the buffer already set aside,
   resumes from the newest damaged file; a damaged file beside no buffer and no marker is one
   recovered before, and is not salvaged again);
2. the damaged file and its ``-wal`` / ``-shm`` are renamed ``<buffer>.corrupt-<n>`` (kept for
   a person to look at; nothing deletes it);
3. a new buffer is built beside it (``<buffer>.salvaging``, a rollback journal while it is
   built), the readable rows copied in order of worth: readings central has not acknowledged
   first (numbered after every old one and sent again under the new file's incarnation; central
   keeps the first copy of a reading, so one it had already is a duplicate, not a second row),
   then quarantine records not known to be delivered, alerts, the sources' progress and the
   clock's high-water mark (``meta``), the spool ledger, the meters' long memory, the stored
   models, the counters, and last the acknowledged readings (the features' history; they keep
   their numbers and stay the batched prefix :class:`~edge_agent.buffer.readings.ReadingStore`
   needs). Each table is read in ranges of rowids; a range that fails is split down to single
   rows. The readings are asked for by the rowids an index of theirs lists (an index entry
   holds its row's rowid), so exactly the rows that cannot be read are lost and counted; a
   table without such an index is walked through its own tree, which past a damaged part is
   entered again at the lowest rowid it can. Rows that cannot be read are counted, never
   guessed. The copy keeps to the buffer's budget and to the room the disk has beyond its
   reserve; when the disk, not the budget, cuts it short before the acknowledged history,
   nothing is installed (the rest would stay in the damaged file only): DiskFull, and the
   agent's start waits for room as on a full card, then copies again;
4. the new file takes the buffer's name; the markers go.

The counters ``buffer_recoveries`` and ``readings_salvaged`` (in ``status.v1``) and the meta
value ``buffer_recovery`` (what was copied; ``readings_lost``, exact where the file's
``(ts, meter_id)`` index still reads; unreadable rowids by table) tell central and the field
engineer.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edge_agent import failpoints
from edge_agent.buffer.db import BufferDB, DiskFull, is_full

log = logging.getLogger(__name__)

#: Rows read per query while walking a damaged table.
CHUNK_ROWS = 1024
#: The last part copied, the acknowledged readings: a copy cut short there is still installed.
HISTORY = "readings_history"
#: Wait before asking again a card that gave an I/O error during the check.
IO_RETRY_S = 1.0
#: Free bytes under which an I/O error is taken for a full card, not a damaged file.
LOW_FREE_BYTES = 4 * 2**20
#: Progress is reported (to systemd: more time to start) every this many chunks written.
PROGRESS_EVERY = 64
#: Meta keys that belong to one file and are not carried over: the new file is a new incarnation
#: (its batch ids never repeat an old one) and numbers its readings afresh.
OWN_META = frozenset({"incarnation", "batched_upto", "next_seq"})
#: SQLite's answers, reading the file, that mean it is damaged (not busy, not full): a page
#: that makes no sense, a header that is not SQLite's, a sector the card cannot read.
DAMAGED = (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_IOERR)
_SUFFIXES = ("", "-wal", "-shm")
# Rowids a walk tries past a damaged part of a table's tree before it gives up on that table.
_FAR = 1 << 40
_DAMAGED = object()
# Past a damaged part of a table whose highest rowid is known, the walk looks for a way back
# in at most this many rowids apart.
_STEP = 64
# Indexes that list every row of a table (an index entry holds its row's rowid).
_ROWID_INDEXES = {"readings": ("readings_key", "readings_meter_ts")}
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
    # Readings the file's (ts, meter_id) index lists that could not be read: exact where that
    # index reads whole; None where it does not, or where the copy was cut short.
    readings_lost: int | None = None
    cut_short_at: str | None = None  # the table the copy was at when the disk filled up


def damaged(exc: BaseException) -> bool:
    """An SQLite error, reading the buffer, that says the file is damaged; also a text value
    that is not UTF-8 (a flipped bit no page check sees)."""
    if not isinstance(exc, sqlite3.DatabaseError):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    text = str(exc)
    return (
        (code is not None and code & 0xFF in DAMAGED)
        or "malformed" in text
        or "not a database" in text
        or "disk I/O error" in text
        or "Could not decode to UTF-8" in text
    )


def _io(exc: BaseException) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return (code is not None and code & 0xFF == sqlite3.SQLITE_IOERR) or "disk I/O" in str(exc)


def corrupt(exc: BaseException) -> bool:
    """:func:`damaged` by what was read, not by an I/O error (which may pass: a card that
    hesitated, a full one)."""
    return damaged(exc) and not _io(exc)


def damages(exc: BaseException, path: Path) -> bool:
    """:func:`damaged`, but an I/O error on a card with next to no room left is the full card
    (SQLite cannot make its shared-memory file), not damage: the agent waits for room."""
    if not damaged(exc):
        return False
    return not (_io(exc) and shutil.disk_usage(path.parent).free < LOW_FREE_BYTES)


def check(path: Path, *, thorough: bool = False) -> str | None:
    """None when the buffer at ``path`` reads whole (or does not exist); else what is wrong.
    ``quick_check`` reads every page; ``thorough`` (``integrity_check``) also checks that each
    index agrees with its table, which takes longer."""
    if not path.exists():
        return None
    pragma = "integrity_check" if thorough else "quick_check"
    for attempt in (1, 2):
        # read-write, as the agent opens it: closing the last connection folds the write-ahead
        # log in and removes it, as after any run of the agent
        conn = sqlite3.connect(path)
        try:
            rows = conn.execute(f"pragma {pragma}").fetchall()
            break
        except sqlite3.DatabaseError as exc:
            if not damages(exc, path):
                raise
            if attempt == 1 and _io(exc):  # a sector that failed once: ask it again
                time.sleep(IO_RETRY_S)
                continue
            return f"{pragma}: {exc}"
        finally:
            conn.close()
    found = [str(r[0]) for r in rows]
    return None if found == ["ok"] else f"{pragma}: " + "; ".join(found[:5])


def mark_suspect(path: Path | str, reason: str) -> None:
    """The running agent met a damaged page (``damaged``): the next start salvages the buffer
    whatever its check says (a text value that is not UTF-8, an index that disagrees with its
    table: ``quick_check`` sees neither, and the agent would fail on it at every start)."""
    path = Path(path)
    _write_json(_suspect(path), {"reason": reason[:500]})


def open_checked(
    path: Path | str,
    *,
    synchronous: str = "FULL",
    max_bytes: int | None = None,
    reserve_bytes: int = 0,
    on_progress: Callable[[str], None] | None = None,
) -> Recovery | None:
    """Make sure the buffer at ``path`` can be opened: finish a recovery a power cut stopped,
    check the file (thoroughly when the running agent marked it suspect), recover it when
    damaged. The new file holds at most ``max_bytes`` of salvaged rows (the buffer's budget)
    and leaves ``reserve_bytes`` free on the disk, where the damaged file still takes its room.
    Returns what a recovery did, or None."""
    path = Path(path)
    marker, suspect = marker_path(path), _suspect(path)
    state = _read_json(marker)
    if state is None:
        garbled = marker.exists()
        if garbled:
            log.error("recovery marker %s unreadable: removed", marker)
            marker.unlink()
        state = _start(path, suspect, garbled)
        if state is None:
            return None
    aside = path.parent / str(state["aside"])
    salvaging = path.with_name(path.name + ".salvaging")
    recovery = Recovery(reason=str(state.get("reason", "")), aside=aside.name)
    if state["phase"] == "salvage":
        for suffix in _SUFFIXES:  # still at its place: the damaged file (install comes later)
            here = Path(f"{path}{suffix}")
            if here.exists() and not Path(f"{aside}{suffix}").exists():
                os.replace(here, f"{aside}{suffix}")
        _fsync_dir(path.parent)
        failpoints.hit("salvage.aside")
        for suffix in (*_SUFFIXES, "-journal"):  # a salvage a power cut stopped starts again
            Path(f"{salvaging}{suffix}").unlink(missing_ok=True)
        budget, by_disk = _budget(path.parent, max_bytes, reserve_bytes)
        recovery = salvage(aside, salvaging, recovery, synchronous, budget, on_progress)
        if by_disk and recovery.cut_short_at not in (None, HISTORY):
            # Installed now, what did not fit would stay in the damaged file only: wait for
            # room instead (the agent's start waits on DiskFull as on a full card), then copy
            # again from the start. Only the acknowledged history cut short is installed: it is
            # in central already.
            raise DiskFull(
                f"no room on the disk to salvage the buffer {path} (budget {budget} B): "
                "waiting for room"
            )
        failpoints.hit("salvage.copied")
        _write_json(marker, {**state, "phase": "install"})
        failpoints.hit("salvage.install")
    else:  # a power cut after the copy: what it did is recorded in the new file
        recovery = _recorded(salvaging if salvaging.exists() else path) or recovery
    if salvaging.exists():
        os.replace(salvaging, path)
        _fsync_dir(path.parent)
    suspect.unlink(missing_ok=True)
    marker.unlink(missing_ok=True)
    _fsync_dir(path.parent)
    log.error(
        "buffer recovered into a new file: %d pending readings and %d of history salvaged, "
        "%s readings lost, unreadable rowids %s; the damaged file kept as %s",
        recovery.readings_pending,
        recovery.readings_history,
        "?" if recovery.readings_lost is None else recovery.readings_lost,
        recovery.unreadable or "none",
        aside,
    )
    return recovery


def _start(path: Path, suspect: Path, garbled: bool) -> dict[str, Any] | None:
    """The marker of a new recovery (written), or None when the buffer needs none."""
    if not path.exists():
        # The buffer renamed aside and then its marker garbled by the card: go on from the
        # newest damaged file. Without a marker at all, a damaged file beside no buffer is one
        # recovered long ago (the buffer deleted since): it is not salvaged again.
        newest = _newest_aside(path) if garbled else None
        if newest is None:
            return None
        reason = "resumed: the buffer missing beside its damaged copy"
        aside_name = newest.name
    else:
        flagged = _read_json(suspect)
        reason = check(path, thorough=suspect.exists()) or ""
        if flagged is not None or suspect.exists():
            reason = f"{(flagged or {}).get('reason', 'marked suspect')}; {reason or 'check ok'}"
        elif not reason:
            return None
        aside_name = _aside_name(path)
    log.error("the buffer %s is damaged (%s): setting it aside, salvaging it", path, reason)
    state = {"aside": aside_name, "reason": reason, "phase": "salvage"}
    _write_json(marker_path(path), state)
    return state


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
    # A rollback journal, not a write-ahead log, while it is built: a log would hold the whole
    # copy beside the file until a checkpoint (twice the room on a card with little left).
    new.conn.execute("pragma journal_mode = delete")
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
        try:
            with new.transaction():
                new.counters.add(
                    {"buffer_recoveries": 1, "readings_salvaged": recovery.readings_pending}
                )
                new.meta.set("buffer_recovery", json.dumps(asdict(recovery), sort_keys=True))
        except DiskFull as exc:  # the rows copied matter more than their record
            log.error("no room to record the recovery in the new buffer: %s", exc)
    finally:
        new.close()
    return recovery


@dataclass(frozen=True)
class _Reads:
    """The two ways to ask a damaged table for rows: a rowid range, one rowid."""

    between: str
    one: str


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
        self.stage = "batches"

    def run(self) -> None:
        try:
            # the readings acknowledged before keep their seq and are batched; every other one
            # is numbered after all of them, in its old order
            shift = self._top_seq()
            with self.new.transaction():
                self.new.meta.set("batched_upto", shift)
            acked = self._acked_batches()
            self.stage = "readings"
            self._readings(pending=True, shift=shift)
            self.stage = "quarantine"
            self._quarantine(acked)
            for table in ("alerts", "spool_files", "meter_profiles", "models"):
                self.stage = table
                self._plain(table)
            self.stage = "meta"
            self._meta()
            self.stage = "counters"
            self._counters()
            self.stage = HISTORY
            self._readings(pending=False, shift=shift)
            listed = self._indexed_readings()
            copied = self.recovery.readings_pending + self.recovery.readings_history
            self.recovery.readings_lost = None if listed is None else max(0, listed - copied)
        except (DiskFull, sqlite3.OperationalError) as exc:
            if not (isinstance(exc, DiskFull) or is_full(exc)):
                raise
            self.recovery.cut_short_at = self.stage
            log.error("the disk filled up during the salvage, at %s: %s", self.stage, exc)
        finally:
            self._accept_seq_past_copied()

    # --- reading the damaged file --------------------------------------------------------

    def _one(self, sql: str) -> int | None:
        """An integer the damaged file gives, or None (unreadable, absent)."""
        try:
            row = self.old.execute(sql).fetchone()
        except sqlite3.DatabaseError as exc:
            if not damaged(exc) and "no such" not in str(exc):
                raise
            return None
        try:
            return None if row is None or row[0] is None else int(row[0])
        except (TypeError, ValueError):
            return None

    def _top_seq(self) -> int:
        """The highest seq the damaged file used: from the table, else from its (ts, meter_id)
        index (which holds every rowid), else from its meta, else far above any."""
        for sql in (
            "select max(rowid) from readings",
            "select max(rowid) from readings indexed by readings_key",
            "select max(cast(value as integer)) from meta "
            "where key in ('next_seq', 'batched_upto')",
        ):
            top = self._one(sql)
            if top is not None:
                return top
        return _FAR

    def _indexed_readings(self) -> int | None:
        """How many readings the (ts, meter_id) index lists (None: it cannot be read)."""
        return self._one("select count(*) from readings indexed by readings_key")

    def _accept_seq_past_copied(self) -> None:
        """Intake numbers its calls after every copied reading's: it tells a reading stored by
        this call from one stored before (duplicates, conflicts, alerts) by that number."""
        conn = self.new.conn
        (top,) = conn.execute("select coalesce(max(accept_seq), 0) from readings").fetchone()
        if int(top) > self.new.meta.get_int("accept_seq"):
            try:
                with self.new.transaction():
                    self.new.meta.set("accept_seq", int(top))
            except DiskFull as exc:
                log.error("no room to record accept_seq %s: %s", top, exc)

    def _rows(
        self, table: str, columns: list[str], where: str = "1", *, again: bool = False
    ) -> Iterator[tuple[Any, ...]]:
        """(rowid, *columns) of every row that can be read, in rowid order; rows that fail
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
        read = _Reads(
            between=f"select rowid, {cols} from {table} where rowid between ? and ? "
            f"and ({where}) order by rowid",
            one=f"select rowid, {cols} from {table} where rowid = ? and ({where})",
        )
        listed = self._listed_rowids(table)
        if listed is not None:
            yield from self._rows_listed(table, read, listed)
        else:
            yield from self._rows_walked(table, read)

    def _listed_rowids(self, table: str) -> Iterator[list[int]] | None:
        """The table's rowids in order, in chunks, from an index that reads whole (an index
        holds every row's rowid): the rows to ask for, and exactly which ones fail. None when
        the table has no such index."""
        for index in _ROWID_INDEXES.get(table, ()):
            cursor = self.old.cursor()
            try:  # the sort reads the whole index before the first rowid comes
                cursor.execute(f"select rowid from {table} indexed by {index} order by rowid")
                head = [int(r[0]) for r in cursor.fetchmany(CHUNK_ROWS)]
            except sqlite3.DatabaseError as exc:
                if not damaged(exc) and "no such" not in str(exc):
                    raise
                continue

            def chunks(
                cursor: sqlite3.Cursor = cursor, head: list[int] = head
            ) -> Iterator[list[int]]:
                part = head
                while part:
                    yield part
                    part = [int(r[0]) for r in cursor.fetchmany(CHUNK_ROWS)]

            return chunks()
        return None

    def _rows_listed(
        self, table: str, read: _Reads, listed: Iterator[list[int]]
    ) -> Iterator[tuple[Any, ...]]:
        """Range by range between the listed rowids (a row an index lost is read too, and only
        a listed rowid that fails alone counts as lost), then the table's own tree past the
        last one."""
        lo = 0
        for part in listed:
            yield from self._known(table, read, lo, part)
            lo = part[-1] + 1
        yield from self._rows_walked(table, read, start=lo)

    def _known(
        self, table: str, read: _Reads, lo: int, rowids: list[int]
    ) -> Iterator[tuple[Any, ...]]:
        """The rows from ``lo`` to the last of ``rowids`` (sorted, listed by an index) that can
        be read; a range that fails is halved at a listed rowid, down to single listed rows,
        each asked for by ``rowid = ?`` (a range also reads the row after its end, which may
        lie on a damaged page)."""
        try:
            if len(rowids) == 1 and lo == rowids[0]:
                rows = self.old.execute(read.one, (lo,)).fetchall()
            else:  # with the rows an index lost, between the listed ones
                rows = self.old.execute(read.between, (lo, rowids[-1])).fetchall()
        except sqlite3.DatabaseError as exc:
            if not damaged(exc):
                raise
            if len(rowids) == 1:
                try:
                    rows = self.old.execute(read.one, (rowids[0],)).fetchall()
                except sqlite3.DatabaseError as again:
                    if not damaged(again):
                        raise
                    self._unreadable(table, 1)
                    return
                yield from rows
                return
            half = len(rowids) // 2
            yield from self._known(table, read, lo, rowids[:half])
            yield from self._known(table, read, rowids[half - 1] + 1, rowids[half:])
            return
        yield from rows

    def _rows_walked(self, table: str, read: _Reads, start: int = 0) -> Iterator[tuple[Any, ...]]:
        """Without an index to list its rowids: the table's own tree, range by range. Past a
        damaged part the walk enters the tree again at the lowest rowid it can: steps of at
        most ``_STEP`` up to the table's highest rowid when that is known (so that a healthy
        page between two damaged ones is not jumped over), doubling steps when it is not; the
        rowids between are counted as unreadable (more than the rows where numbering has
        gaps)."""
        top = self._one(f"select max(rowid) from {table}")
        at = start
        while True:
            first = self._first_at(table, at)
            if first is _DAMAGED:
                step, probe = 1, at
                while first is _DAMAGED:
                    probe += step
                    if (top is not None and probe > top) or probe - at >= _FAR:
                        self._unreadable(table, 1)
                        return
                    first = self._first_at(table, probe)
                    step = min(2 * step, _STEP) if top is not None else 2 * step
                self._unreadable(table, probe - at)
            if first is None:
                return
            assert isinstance(first, int)
            rowids = range(first, first + CHUNK_ROWS)
            yield from self._range(table, read, rowids.start, rowids.stop - 1)
            at = rowids.stop

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

    def _range(self, table: str, read: _Reads, lo: int, hi: int) -> Iterator[tuple[Any, ...]]:
        try:
            if lo == hi:
                rows = self.old.execute(read.one, (lo,)).fetchall()
            else:
                rows = self.old.execute(read.between, (lo, hi)).fetchall()
        except sqlite3.DatabaseError as exc:
            if not damaged(exc):
                raise
            if lo == hi:
                self._unreadable(table, 1)
                return
            mid = (lo + hi) // 2
            yield from self._range(table, read, lo, mid)
            yield from self._range(table, read, mid + 1, hi)
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
            n = 0
            for rowid, *values in self._rows("readings", data, where, again=not pending):
                row = dict(zip(data, values, strict=True))
                if pending:  # sent again in a batch of the new file
                    n += 1
                    row["batch_id"] = None
                    yield (shift + n, *row.values())
                elif rowid <= shift:
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
    then be read; the zeros read as damaged pages. Only a header SQLite itself would trust (its
    size field valid for the file's change counter) and at most 16 times the file's size: the
    bytes that were there stay as they were."""
    try:
        with open(path, "r+b") as handle:
            header = handle.read(100)
            if len(header) < 100 or not header.startswith(b"SQLite format 3\x00"):
                return
            if header[92:96] != header[24:28]:  # the size field is not valid
                return
            size = int.from_bytes(header[16:18], "big")
            page = 65536 if size == 1 else size
            want = page * int.from_bytes(header[28:32], "big")
            have = handle.seek(0, os.SEEK_END)
            if have < want <= 16 * have:
                handle.truncate(want)
    except OSError as exc:
        log.warning("could not extend %s to its header's size: %s", path, exc)


def marker_path(path: Path) -> Path:
    """The marker of a recovery of the buffer at ``path`` under way."""
    return path.with_name(path.name + ".recovery")


def _suspect(path: Path) -> Path:
    return path.with_name(path.name + ".suspect")


def _aside_name(path: Path) -> str:
    n = 1
    while any(path.with_name(f"{path.name}.corrupt-{n}{s}").exists() for s in _SUFFIXES):
        n += 1
    return f"{path.name}.corrupt-{n}"


def _newest_aside(path: Path) -> Path | None:
    numbered = []
    for candidate in path.parent.glob(f"{path.name}.corrupt-*"):
        tail = candidate.name[len(path.name) + len(".corrupt-") :]
        if tail.isdigit():
            numbered.append((int(tail), candidate))
    return max(numbered)[1] if numbered else None


def _budget(directory: Path, max_bytes: int | None, reserve_bytes: int) -> tuple[int, bool]:
    """The most the new file may take: the buffer's budget, or less when the disk has less
    beyond its reserve (the damaged file stays on it); and whether the disk is the limit."""
    room = max(0, shutil.disk_usage(directory).free - reserve_bytes - _RECORD_BYTES)
    if max_bytes is not None and max_bytes <= room:
        return max_bytes, False
    return room, True


def _read_json(path: Path) -> dict[str, Any] | None:
    """A marker's content; None when it is absent or not one this module wrote."""
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(state, dict):
        return None
    if path.name.endswith(".recovery") and not (
        isinstance(state.get("aside"), str)
        and "/" not in state["aside"]
        and state.get("phase") in ("salvage", "install")
    ):
        return None
    return state


def _write_json(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(state, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
