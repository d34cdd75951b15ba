"""Write a fleet to files: readings (CSV and/or Parquet), labels (CSV), registry (JSON).

Readings are written chunk by chunk, so files of any size stream through bounded memory.
pyarrow is used when installed (fast CSV, required for Parquet) and imported only here.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterable
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from .chunk import Chunk
from .fleet import Fleet
from .labels import FLAG_NAMES, THEFT_LABELS, category

READING_COLUMNS = (
    "meter_id",
    "ts",
    "interval_s",
    "kwh",
    "register_kwh",
    "voltage_v",
    "temperature_c",
    "humidity_pct",
    "wind_ms",
    "supply",
    "flags",
)
TRUTH_COLUMNS = ("true_kwh", "label")
LABEL_COLUMNS = ("meter_id", "ts", "label", "category")
FLAG_SEPARATOR = ";"  # CSV: flags joined; Parquet: list<string>

Progress = Callable[[int, int], None]  # (rows written, intervals done)


def _iso(ts: np.ndarray) -> np.ndarray:
    """Epoch seconds -> 'YYYY-MM-DDTHH:MM:SSZ' (object array), computed once per distinct ts."""
    uniq, inv = np.unique(ts, return_inverse=True)
    text = np.array(
        [datetime.fromtimestamp(int(t), UTC).strftime("%Y-%m-%dT%H:%M:%SZ") for t in uniq],
        dtype=object,
    )
    return text[inv]


def _flag_lists(flags: np.ndarray) -> tuple[np.ndarray, list[list[str]]]:
    """(inverse index per row, list of flag names per distinct mask)."""
    uniq, inv = np.unique(flags, return_inverse=True)
    names = [[n for b, n in enumerate(FLAG_NAMES) if int(m) >> b & 1] for m in uniq]
    return inv, names


def columns(chunk: Chunk, truth: bool) -> dict[str, np.ndarray]:
    """Output columns of a chunk (numpy), rounded to what a meter would report."""
    inv, names = _flag_lists(chunk.flags)
    joined = np.array([FLAG_SEPARATOR.join(n) for n in names], dtype=object)
    cols: dict[str, Any] = {
        "meter_id": chunk.meter_id,
        "ts": _iso(chunk.ts),
        "interval_s": np.full(len(chunk), chunk.interval_s, np.int32),
        "kwh": np.round(chunk.kwh, 6),
        "register_kwh": np.round(chunk.register_kwh, 3),
        "voltage_v": chunk.voltage_v,
        "temperature_c": chunk.temperature_c,
        "humidity_pct": chunk.humidity_pct,
        "wind_ms": chunk.wind_ms,
        "supply": np.where(chunk.supply_on, "on", "off").astype(object),
        "flags": joined[inv],
    }
    if truth:
        cols["true_kwh"] = np.round(chunk.true_kwh, 6)
        cols["label"] = chunk.label
    return cols


class ReadingsWriter:
    """Appends chunks to ``readings.csv`` and/or ``readings.parquet`` and labelled rows to
    ``labels.csv``."""

    def __init__(self, out_dir: Path, formats: Iterable[str], truth: bool = False) -> None:
        self.out_dir = out_dir
        self.formats = set(formats)
        unknown = self.formats - {"csv", "parquet"}
        if unknown or not self.formats:
            raise ValueError(f"formats must be csv and/or parquet, got {sorted(self.formats)}")
        self.truth = truth
        out_dir.mkdir(parents=True, exist_ok=True)
        self.rows = 0
        self.labelled = 0
        self.label_counts: dict[str, int] = {}
        self._pa: Any = None
        try:
            import pyarrow  # noqa: F401

            self._pa = True
        except ImportError:
            if "parquet" in self.formats:
                raise RuntimeError("Parquet output needs pyarrow (pip install pyarrow)") from None
        self._csv_writer: Any = None
        self._csv_file: Any = None
        self._pq_writer: Any = None
        self._labels_file = open(out_dir / "labels.csv", "w", newline="", encoding="utf-8")
        self._labels = csv.writer(self._labels_file)
        self._labels.writerow(LABEL_COLUMNS)

    @property
    def paths(self) -> list[Path]:
        names = [f"readings.{f}" for f in sorted(self.formats)] + ["labels.csv"]
        return [self.out_dir / n for n in names]

    def write(self, chunk: Chunk) -> None:
        cols = columns(chunk, self.truth)
        if "csv" in self.formats:
            self._write_csv(cols)
        if "parquet" in self.formats:
            self._write_parquet(cols, chunk)
        sel = np.flatnonzero(chunk.label_code)
        for i in sel.tolist():
            name = chunk.label[i]
            self._labels.writerow((chunk.meter_id[i], cols["ts"][i], name, category(name)))
            self.label_counts[name] = self.label_counts.get(name, 0) + 1
        self.rows += len(chunk)
        self.labelled += len(sel)

    def _write_csv(self, cols: dict[str, np.ndarray]) -> None:
        if self._pa:
            import pyarrow as pa
            import pyarrow.csv as pacsv

            table = pa.table({k: pa.array(v, from_pandas=True) for k, v in cols.items()})
            if self._csv_writer is None:
                self._csv_file = open(self.out_dir / "readings.csv", "wb")
                self._csv_file.write((",".join(cols) + "\n").encode())
                self._csv_writer = pacsv.CSVWriter(
                    self._csv_file,
                    table.schema,
                    write_options=pacsv.WriteOptions(include_header=False, quoting_style="none"),
                )
            self._csv_writer.write_table(table)
            return
        if self._csv_writer is None:
            self._csv_file = open(self.out_dir / "readings.csv", "w", newline="", encoding="utf-8")
            self._csv_writer = csv.writer(self._csv_file)
            self._csv_writer.writerow(list(cols))
        lists = [c.tolist() for c in cols.values()]
        voltage = list(cols).index("voltage_v")
        lists[voltage] = ["" if v != v else v for v in lists[voltage]]
        self._csv_writer.writerows(zip(*lists, strict=True))

    def _write_parquet(self, cols: dict[str, np.ndarray], chunk: Chunk) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        inv, names = _flag_lists(chunk.flags)
        arrays = {k: pa.array(v, from_pandas=True) for k, v in cols.items()}
        arrays["ts"] = pa.array(chunk.ts, type=pa.timestamp("s", tz="UTC"))
        arrays["flags"] = pa.array(names, type=pa.list_(pa.string())).take(pa.array(inv))
        table = pa.table(arrays)
        if self._pq_writer is None:
            self._pq_writer = pq.ParquetWriter(
                str(self.out_dir / "readings.parquet"), table.schema, compression="zstd"
            )
        self._pq_writer.write_table(table)

    def close(self) -> None:
        if self._csv_writer is not None and self._pa:
            self._csv_writer.close()
        if self._csv_file is not None:
            self._csv_file.close()
        if self._pq_writer is not None:
            self._pq_writer.close()
        self._labels_file.close()

    def __enter__(self) -> ReadingsWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def registry_document(fleet: Fleet) -> dict[str, Any]:
    reg = fleet.registry()
    return {
        "config": asdict(fleet.cfg),
        "gateways": {gid: fleet.meter_ids_for_gateway(gid) for gid in fleet.gateway_ids},
        "assets": reg.assets,
        "meters": reg.meters,
        "supply": fleet.supply_info(),
        "ground_truth": fleet.ground_truth(),
        "theft_labels": list(THEFT_LABELS),
    }


def write_registry_json(fleet: Fleet, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(registry_document(fleet), fh, indent=1)


def write_fleet(
    fleet: Fleet,
    out_dir: Path,
    formats: Iterable[str] = ("csv",),
    gateway: int | str | None = None,
    chunk_intervals: int = 48,
    truth: bool = False,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Write readings, labels and registry.json; return a summary."""
    out_dir = Path(out_dir)
    write_registry_json(fleet, out_dir / "registry.json")
    done = 0
    with ReadingsWriter(out_dir, formats, truth) as writer:
        for chunk in fleet.chunks(gateway=gateway, chunk_intervals=chunk_intervals):
            writer.write(chunk)
            done += len(np.unique(chunk.ts))
            if progress:
                progress(writer.rows, done)
    return {
        "rows": writer.rows,
        "labelled_rows": writer.labelled,
        "label_counts": dict(sorted(writer.label_counts.items())),
        "files": [str(p) for p in [*writer.paths, out_dir / "registry.json"]],
    }
