"""A spool directory of CSV / JSONL files dropped by a head-end, a USB stick or an operator.

Writers drop ``*.csv``, ``*.jsonl`` or ``*.json`` files atomically (write ``name.tmp``, then
rename); other names are left alone. A file is read as a stream and taken ``slice_records``
records at a time: each slice's readings, quarantine rows and the file's ledger row (keyed by the
file's sha256, with the number of records committed so far) go into the buffer in one
transaction. So the agent's memory does not grow with the size of a file, and a power cut
mid-file resumes after the last committed slice: nothing skipped, nothing taken twice. When the
file is finished it is renamed into ``done/``; a power cut between the last commit and the rename
is harmless (the ledger knows the hash, the file is moved without being read again).

A file that cannot be read (not UTF-8, unknown CSV header, larger than ``MAX_FILE_BYTES``) goes to
``failed/`` with a quarantine record saying why and after how many records; the records before the
fault stay accepted (they were valid readings).

CSV columns are the wire field names (``meter_id, ts, kwh, ...``; ``flags`` separated by ``;``);
the seed dataset's CSV format (``Timestamp, Electricity_Consumed, ...``) is accepted too, as the
readings of one meter (``spool_meter_id``), read by ``simulator.seed`` (its timestamps are interval
starts in UTC; its values are min-max normalised and kept as given).
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
from collections.abc import Iterable, Iterator
from functools import partial
from itertools import islice
from pathlib import Path
from typing import Any, BinaryIO

from edge_agent import failpoints, wire
from edge_agent.buffer import BufferFull, SpoolLedger
from edge_agent.buffer.spool_ledger import Outcome
from edge_agent.fields import Row
from edge_agent.sources import Intake
from edge_agent.vocabulary import quarantine_reason

log = logging.getLogger(__name__)

SUFFIXES = {".csv", ".jsonl", ".json"}
MAX_FILE_BYTES = 256 * 1024 * 1024
#: Records committed per transaction: bounds the memory one file takes (~1 kB a record while
#: it is validated, scored and inserted, plus the week of history of its meters), whatever the
#: file's size. Smaller slices lower the agent's peak RSS under a backlog and cost intake speed.
SLICE_RECORDS = 500
SEED_COLUMNS = ("Timestamp", "Electricity_Consumed")


class SpoolSource:
    name = "spool"

    def __init__(
        self,
        directory: Path,
        intake: Intake,
        ledger: SpoolLedger,
        *,
        seed_meter_id: str = "seed-0001",
        slice_records: int = SLICE_RECORDS,
    ) -> None:
        self.dir = Path(directory)
        self.done = self.dir / "done"
        self.failed = self.dir / "failed"
        for d in (self.dir, self.done, self.failed):
            d.mkdir(parents=True, exist_ok=True)
        self.intake = intake
        self.ledger = ledger
        self.seed_meter_id = seed_meter_id
        self.slice_records = max(1, slice_records)

    def close(self) -> None:
        pass

    def exhausted(self) -> bool:
        return not any(p.is_file() and p.suffix in SUFFIXES for p in self.dir.iterdir())

    def poll(self, now: float) -> int:
        handled = 0
        for path in sorted(p for p in self.dir.iterdir() if p.is_file() and p.suffix in SUFFIXES):
            try:
                handled += self._take_file(path)
            except BufferFull:
                log.warning("buffer full: %s stays in the spool", path.name)
                break
        return handled

    def _take_file(self, path: Path) -> int:
        digest = _sha256(path)
        known = self.ledger.get(digest)
        if known is not None and known.outcome in ("done", "failed"):
            # Committed before a power cut; only the rename was missing.
            self._move(path, self.done if known.outcome == "done" else self.failed, digest)
            return 0
        done = 0 if known is None else known.records_done
        source = f"spool:{path.name}"
        records = self._parse(path, source)
        if done:  # resume after the slices committed before a power cut
            records = islice(records, done, None)
        handled = 0
        fault: Exception | None = None
        while fault is None:
            part: list[Row | wire.QuarantineRecord] = []
            try:
                part.extend(islice(records, self.slice_records))
            except (ValueError, csv.Error) as exc:
                fault = exc  # the records of this slice before the fault are still taken
            if not part:
                break
            self._commit(path, digest, part, done + len(part), "partial")
            failpoints.hit("spool.after_slice")
            done += len(part)
            handled += len(part)
        outcome: Outcome = "done"
        if fault is not None:
            v = self.intake.validator
            reason = quarantine_reason("unreadable_file", f"{fault} (after {done} records)")
            with path.open("rb") as f:
                head = f.read(4096)
            self._commit(
                path, digest, [v.quarantine(head, reason, v.clock(), source)], done, "failed"
            )
            outcome = "failed"
            handled += 1
        else:
            self._commit(path, digest, [], done, "done")
        self._move(path, self.done if outcome == "done" else self.failed, digest)
        totals = self.ledger.get(digest)
        log.info(
            "spool %s: %s, %d accepted, %d quarantined",
            path.name,
            outcome,
            totals.readings if totals else 0,
            totals.quarantined if totals else 0,
        )
        return handled

    def _commit(
        self,
        path: Path,
        digest: str,
        part: list[Row | wire.QuarantineRecord],
        records_done: int,
        outcome: Outcome,
    ) -> None:
        """One slice of a file and its ledger row, in one buffer transaction."""
        now = self.intake.validator.clock()
        res = self.intake.take(
            part, also=[partial(self.ledger.record, digest, path.name, now, outcome, records_done)]
        )
        self.ledger.add_totals(digest, res.accepted, res.quarantined)

    def _move(self, path: Path, target_dir: Path, digest: str) -> None:
        target = target_dir / path.name
        if target.exists():
            target = target_dir / f"{path.stem}.{digest[:12]}{path.suffix}"
        os.replace(path, target)

    def _parse(self, path: Path, source: str) -> Iterator[Row | wire.QuarantineRecord]:
        """The file's records, one by one, read as a stream (one line in memory at a time)."""
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise ValueError(f"file of {size} bytes, larger than {MAX_FILE_BYTES}")
        v = self.intake.validator
        if path.suffix in (".jsonl", ".json"):
            with path.open("rb") as f:
                if path.suffix == ".json":
                    yield from v.check_json(f.read(), f"{source}:1")
                    return
                for number, line in enumerate(f, 1):
                    if line.strip():  # a line that is not UTF-8 is quarantined like bad JSON
                        yield from v.check_json(line.rstrip(b"\r\n"), f"{source}:{number}")
            return
        with path.open("rb") as f:
            reader = csv.DictReader(_utf8_lines(f))
            header = tuple(reader.fieldnames or ())
            if not header:
                raise ValueError("empty CSV file")
            if all(c in header for c in SEED_COLUMNS):
                f.seek(0)
                yield from self._parse_seed(_utf8_lines(f), source)
                return
            if not {"meter_id", "ts", "kwh"} <= set(header):
                raise ValueError(f"unknown CSV header: {','.join(header)[:200]}")
            for rec in reader:
                raw = ",".join("" if v is None else str(v) for v in rec.values())
                where = f"{source}:{reader.line_num}"
                if not _is_utf8(raw):  # that record only: the rest of the file goes on
                    shown = raw.encode("utf-8", "surrogateescape")
                    yield v.quarantine(shown, quarantine_reason("not_utf8"), v.clock(), where)
                    continue
                yield v.check(_csv_row(rec), raw, where)

    def _parse_seed(
        self, lines: Iterable[str], source: str
    ) -> Iterator[Row | wire.QuarantineRecord]:
        from simulator.seed import load_seed_csv  # numpy + stdlib, like the agent

        load = load_seed_csv(lines, meter_id=self.seed_meter_id)
        v = self.intake.validator
        for reading in load.readings:
            yield v.check(reading, str(reading), source)
        for line, message, raw in load.errors:
            yield v.quarantine(
                raw, quarantine_reason("invalid", message), v.clock(), f"{source}:{line}"
            )


def _csv_row(rec: dict[str, Any]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in rec.items():
        if key is None:  # more cells than header columns
            obj["_extra_cells"] = value
            continue
        if value is None or value == "":
            continue
        if key == "flags":
            obj[key] = [f for f in value.split(";") if f]
        elif key == "ts":
            obj[key] = _utc_text(value)
        else:
            obj[key] = value
    return obj


def _utf8_lines(f: BinaryIO) -> Iterator[str]:
    """Lines of a binary file as text (endings kept, for ``csv``), a leading BOM dropped. Bytes
    that are not UTF-8 are carried as lone surrogates (``surrogateescape``), so the record that
    holds them can be quarantined alone (:func:`_is_utf8`)."""
    for number, raw in enumerate(f, 1):
        line = raw.decode("utf-8", "surrogateescape")
        yield line.removeprefix("\ufeff") if number == 1 else line


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _utc_text(value: str) -> str:
    """Naive timestamps in files are UTC by convention: say so explicitly for validation."""
    value = value.strip()
    if value and not (value.endswith("Z") or "+" in value[10:] or value[10:].count("-")):
        return value.replace(" ", "T") + "Z"
    return value


__all__ = ["SpoolSource"]
