"""A spool directory of CSV / JSONL files dropped by a head-end, a USB stick or an operator.

Writers drop ``*.csv``, ``*.jsonl`` or ``*.json`` files atomically (write ``name.tmp``, then
rename); other names are left alone. Each file is read whole, its readings and quarantine rows and
its ledger row (keyed by the file's sha256) committed in one buffer transaction, then the file is
renamed into ``done/``. A file that cannot be read at all goes to ``failed/`` with a quarantine
record saying why. A power cut between commit and rename is harmless: on restart the ledger knows
the file's hash and it is moved without being read again.

CSV columns are the wire field names (``meter_id, ts, kwh, ...``; ``flags`` separated by ``;``);
the seed dataset's CSV format (``Timestamp, Electricity_Consumed, ...``) is accepted too, as the
readings of one meter (``spool_meter_id``), read by ``simulator.seed`` (its timestamps are interval
starts in UTC; its values are min-max normalised and kept as given).
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edge_agent import wire
from edge_agent.buffer import BufferFull
from edge_agent.rows import Row
from edge_agent.sources import Intake

log = logging.getLogger(__name__)

SUFFIXES = {".csv", ".jsonl", ".json"}
MAX_FILE_BYTES = 256 * 1024 * 1024
_FLOAT_FIELDS = {
    "kwh",
    "register_kwh",
    "voltage_v",
    "current_a",
    "power_factor",
    "temperature_c",
    "humidity_pct",
    "wind_ms",
}
SEED_COLUMNS = ("Timestamp", "Electricity_Consumed")


class SpoolSource:
    name = "spool"

    def __init__(
        self, directory: Path, intake: Intake, *, seed_meter_id: str = "seed-0001"
    ) -> None:
        self.dir = Path(directory)
        self.done = self.dir / "done"
        self.failed = self.dir / "failed"
        for d in (self.dir, self.done, self.failed):
            d.mkdir(parents=True, exist_ok=True)
        self.intake = intake
        self.seed_meter_id = seed_meter_id

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
        data = path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        buffer = self.intake.buffer
        known = buffer.conn.execute(
            "select outcome from spool_files where sha256 = ?", (digest,)
        ).fetchone()
        if known is not None:  # committed before a power cut; only the rename was missing
            self._move(path, self.done if known[0] == "done" else self.failed, digest)
            return 0
        source = f"spool:{path.name}"
        try:
            if len(data) > MAX_FILE_BYTES:
                raise ValueError(f"file larger than {MAX_FILE_BYTES} bytes")
            text = data.decode("utf-8-sig")
            results = list(self._parse(path.suffix, text, source))
            outcome = "done"
        except (UnicodeDecodeError, ValueError, csv.Error) as exc:
            results = [
                self.intake.validator._quarantine(
                    data[:4096], f"unreadable_file: {exc}", self.intake.validator.clock(), source
                )
            ]
            outcome = "failed"
        res = self.intake.take(
            results,
            also=[
                (
                    "insert into spool_files (sha256, name, processed_at, readings, quarantined, "
                    "outcome) values (?, ?, ?, ?, ?, ?)",
                    (digest, path.name, self.intake.validator.clock(), 0, 0, outcome),
                )
            ],
        )
        buffer.conn.execute(
            "update spool_files set readings = ?, quarantined = ? where sha256 = ?",
            (res.accepted, res.quarantined, digest),
        )
        self._move(path, self.done if outcome == "done" else self.failed, digest)
        log.info(
            "spool %s: %s, %d accepted, %d quarantined",
            path.name,
            outcome,
            res.accepted,
            res.quarantined,
        )
        return len(results)

    def _move(self, path: Path, target_dir: Path, digest: str) -> None:
        target = target_dir / path.name
        if target.exists():
            target = target_dir / f"{path.stem}.{digest[:12]}{path.suffix}"
        os.replace(path, target)

    def _parse(self, suffix: str, text: str, source: str) -> Iterator[Row | wire.QuarantineRecord]:
        check = self.intake.validator.check
        if suffix in (".jsonl", ".json"):
            lines = text.splitlines() if suffix == ".jsonl" else [text]
            for number, line in enumerate(lines, 1):
                if line.strip():
                    yield from self.intake.validator.check_json(line, f"{source}:{number}")
            return
        reader = csv.DictReader(io.StringIO(text))
        header = tuple(reader.fieldnames or ())
        if not header:
            raise ValueError("empty CSV file")
        if all(c in header for c in SEED_COLUMNS):
            yield from self._parse_seed(text, source)
            return
        if not {"meter_id", "ts", "kwh"} <= set(header):
            raise ValueError(f"unknown CSV header: {','.join(header)[:200]}")
        for number, rec in enumerate(reader, 2):
            raw = ",".join("" if v is None else str(v) for v in rec.values())
            yield check(_csv_row(rec), raw, f"{source}:{number}")

    def _parse_seed(self, text: str, source: str) -> Iterator[Row | wire.QuarantineRecord]:
        from simulator.seed import load_seed_csv  # numpy + stdlib, like the agent

        load = load_seed_csv(io.StringIO(text), meter_id=self.seed_meter_id)
        v = self.intake.validator
        for reading in load.readings:
            yield v.check(reading, str(reading), source)
        for line, message, raw in load.errors:
            yield v._quarantine(raw, f"invalid: {message}", v.clock(), f"{source}:{line}")


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


def _utc_text(value: str) -> str:
    """Naive timestamps in files are UTC by convention: say so explicitly for validation."""
    value = value.strip()
    if value and not (value.endswith("Z") or "+" in value[10:] or value[10:].count("-")):
        return value.replace(" ", "T") + "Z"
    return value


__all__ = ["SpoolSource"]
