"""The seed dataset's CSV loads; a corrupted copy gives one clear error per bad row."""

from __future__ import annotations

from pathlib import Path

import pytest

from simulator.seed import load_seed_csv

SEED = (
    Path(__file__).resolve().parents[2] / "shared" / "data" / "seed-kaggle" / "smart_meter_data.csv"
)
HEADER = (
    "Timestamp,Electricity_Consumed,Temperature,Humidity,Wind_Speed,"
    "Avg_Past_Consumption,Anomaly_Label"
)
needs_seed = pytest.mark.skipif(not SEED.exists(), reason=f"seed dataset not at {SEED}")


@needs_seed
def test_the_seed_csv_loads_completely() -> None:
    load = load_seed_csv(SEED)
    assert load.errors == []
    assert len(load.readings) == 5000 and len(load.labels) == 5000
    assert sum(1 for _, _, label in load.labels if label == "Abnormal") == 250
    assert load.interval_s == 1800
    first = load.readings[0]
    # Timestamp 2024-01-01 00:00:00 is the start of the interval; the wire ts is its end.
    assert first["ts"] == "2024-01-01T00:30:00Z" and first["interval_s"] == 1800
    assert first["meter_id"] == "seed-0001"
    assert set(first) == {
        "meter_id",
        "ts",
        "interval_s",
        "kwh",
        "temperature_c",
        "humidity_pct",
        "wind_ms",
    }
    assert abs(first["kwh"] - 0.4577856921685388) < 1e-12  # kept as given (normalised)
    assert load.labels[0] == ("seed-0001", "2024-01-01T00:30:00Z", "Normal")
    assert load.readings[-1]["ts"] == "2024-04-14T04:00:00Z"


@needs_seed
def test_seed_readings_are_valid_wire_readings() -> None:
    from edge_agent.wire import Reading

    load = load_seed_csv(SEED, meter_id="kaggle.ziya07")
    for row in load.readings[:500]:
        Reading(**row)


def _lines() -> list[str]:
    if SEED.exists():
        return SEED.read_text(encoding="utf-8").splitlines()[:41]
    rows = [HEADER]
    for i in range(40):
        rows.append(f"2024-01-01 {i // 2:02d}:{30 * (i % 2):02d}:00,0.5,0.4,0.3,0.2,0.6,Normal")
    return rows


def test_a_corrupted_copy_gives_one_clear_error_per_bad_row() -> None:
    lines = _lines()

    def row(line_no: int, **changes: str) -> str:
        cols = dict(zip(HEADER.split(","), lines[line_no - 1].split(","), strict=True))
        cols.update(changes)
        return ",".join(cols.values())

    bad = {
        3: (row(3, Timestamp="2024-13-01 00:00:00"), "Timestamp"),
        5: (row(5, Electricity_Consumed="abc"), "not a number"),
        7: (row(7, Electricity_Consumed="nan"), "finite"),
        9: (row(9, Electricity_Consumed="-0.2"), "negative"),
        11: (",".join(lines[10].split(",")[:4]), "expected 7 fields, got 4"),
        13: (row(13, Anomaly_Label="Maybe"), "Anomaly_Label"),
        15: (row(15, Humidity="250"), "Humidity"),
        17: (lines[1], "duplicate Timestamp"),
        19: (row(19, Timestamp="01/01/2024 09:30"), "YYYY-MM-DD HH:MM:SS"),
    }
    corrupted = list(lines)
    for line_no, (text, _) in bad.items():
        corrupted[line_no - 1] = text
    corrupted.insert(len(corrupted), "")  # a trailing blank line is not an error
    load = load_seed_csv(corrupted)
    assert [e[0] for e in load.errors] == sorted(bad)
    for line_no, message, raw in load.errors:
        assert bad[line_no][1] in message, (line_no, message)
        assert raw == bad[line_no][0]
    assert len(load.readings) == len(lines) - 1 - len(bad)
    assert all(r["ts"].endswith("Z") for r in load.readings)


def test_a_wrong_header_is_reported_and_nothing_loads() -> None:
    load = load_seed_csv(["time,value", "2024-01-01 00:00:00,0.5"])
    assert len(load.errors) == 1 and load.errors[0][0] == 1
    assert "Timestamp" in load.errors[0][1] and load.readings == []
    with pytest.raises(ValueError):
        load_seed_csv([HEADER], meter_id="not a valid id")
