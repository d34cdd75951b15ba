from __future__ import annotations

import json
import zlib
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from edge_agent import wire


def test_reading_round_trip_and_utc_z() -> None:
    r = wire.Reading(meter_id="SN-1", ts="2026-03-01T19:30:00+01:00", kwh=0.5)
    assert r.ts == datetime(2026, 3, 1, 18, 30, tzinfo=UTC)
    assert r.to_json_dict()["ts"] == "2026-03-01T18:30:00Z"
    assert wire.Reading.model_validate(r.to_json_dict()) == r


@pytest.mark.parametrize(
    "bad",
    [
        {"meter_id": "has space", "ts": "2026-03-01T00:30:00Z", "kwh": 1},
        {"meter_id": "m", "ts": "2026-03-01T00:30:00", "kwh": 1},  # naive time
        {"meter_id": "m", "ts": "2026-03-01T00:30:00Z", "kwh": -0.1},
        {"meter_id": "m", "ts": "2026-03-01T00:30:00Z", "kwh": float("nan")},
        {"meter_id": "m", "ts": "2026-03-01T00:30:00Z", "kwh": 1e9},
        {"meter_id": "m", "ts": "2026-03-01T00:30:00Z", "kwh": 1, "interval_s": 60},
        {"meter_id": "m", "ts": "2026-03-01T00:30:00Z", "kwh": 1, "power_factor": 1.5},
        {"meter_id": "m", "ts": "2026-03-01T00:30:00Z", "kwh": 1, "supply": "maybe"},
        {"meter_id": "m", "ts": "2026-03-01T00:30:00Z", "kwh": 1, "flags": ["Bad Flag"]},
        {"meter_id": "m", "ts": "2026-03-01T00:30:00Z", "kwh": 1, "unknown": 2},
    ],
)
def test_reading_rejects_bad_values(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        wire.Reading.model_validate(bad)


def test_encode_decode_compressed_and_plain() -> None:
    obj = {"schema": "ack.v1", "batch_id": "b-1", "status": "stored"}
    packed = wire.encode(obj)
    assert packed[:1] == wire.ZLIB_HEADER
    assert wire.decode(packed) == obj
    assert wire.decode(wire.encode(obj, compress=False)) == obj


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"", "empty"),
        (b"\x02abc", "bad_encoding"),
        (b"\x01not zlib", "bad_compression"),
        (wire.ZLIB_HEADER + zlib.compress(b"{}")[:-3], "bad_compression"),
        (b"{not json", "malformed_json"),
        (b"[1,2]", "bad_encoding"),
        (wire.ZLIB_HEADER + zlib.compress(b"[1]"), "malformed_json"),
    ],
)
def test_decode_errors_have_reasons(payload: bytes, reason: str) -> None:
    with pytest.raises(wire.DecodeError) as err:
        wire.decode(payload)
    assert err.value.reason == reason


def test_decode_bounds_inflation() -> None:
    bomb = wire.ZLIB_HEADER + zlib.compress(b"{" + b" " * 5_000_000 + b"}")
    with pytest.raises(wire.DecodeError) as err:
        wire.decode(bomb, wire.Limits(max_bytes=1_000_000))
    assert err.value.reason == "oversize"


@pytest.mark.parametrize(
    "body",
    [
        # 22 M empty objects in 65 kB of zlib once cost the ingest 1.8 GB
        b'{"schema":"readings.v1","readings":[' + b"{}," * 2_000_000 + b"{}]}",
        b'{"schema":"readings.v2","columns":{"kwh":[' + b"1," * 3_000_000 + b"1]}}",
        b'{"a":' + b"[" * 300_000 + b"]" * 300_000 + b"}",
    ],
    ids=["objects", "values", "nesting"],
)
def test_decode_refuses_structures_over_the_limits_before_parsing(body: bytes) -> None:
    payload = wire.ZLIB_HEADER + zlib.compress(body, 9)
    assert len(payload) < 100_000  # small on the wire
    with pytest.raises(wire.DecodeError) as err:
        wire.decode(payload, wire.BATCH_LIMITS)
    assert err.value.reason == "too_complex"


def test_the_largest_legitimate_batch_fits_the_limits() -> None:
    from edge_agent.fields import make_row

    rows = [
        make_row(
            meter_id=f"m{i % 2000:05d}",
            ts=1_772_323_200 + 1800 * (i // 2000 + 1),
            interval_s=1800,
            kwh=0.123,
            register_kwh=1000.5 + i,
            voltage_v=230.1,
            current_a=1.5,
            power_factor=0.9,
            temperature_c=25.5,
            humidity_pct=60.5,
            wind_ms=3.5,
            supply=i % 7,
            flags="cover_open,no_credit" if i % 3 else None,
            score=0.5,
            model_version="v1",
        )
        for i in range(wire.MAX_BATCH_READINGS)
    ]
    records = [("x" * 100, "r", 1.0, "s")] * wire.MAX_BATCH_QUARANTINED
    for schema in wire.READINGS_SCHEMAS:
        payload = wire.readings_payload(
            schema,
            gateway_id="gw",
            batch_id="b-1",
            batch_seq=1,
            sent_at=1.0,
            rows=rows,
            quarantined=records,
        )
        body = wire.encode(payload, compress=True)
        assert wire.decode(body, wire.BATCH_LIMITS)["batch_id"] == "b-1", schema


def test_quarantine_record_escapes_nul_and_truncates() -> None:
    q = wire.QuarantineRecord.of("a\x00b" + "x" * 20000, "r", datetime.now(UTC), "src")
    assert "\x00" not in q.raw
    assert len(q.raw) <= wire.MAX_RAW_CHARS + 3


def test_batch_schema_field_serialises_as_schema() -> None:
    b = wire.ReadingsBatch(
        gateway_id="gw", batch_id="x-1", batch_seq=1, sent_at=datetime.now(UTC), readings=[]
    )
    assert json.loads(json.dumps(b.to_json_dict()))["schema"] == "readings.v1"


def test_a_huge_json_integer_is_a_decode_error_not_a_crash() -> None:
    huge = b'{"schema": "ack.v1", "n": ' + b"9" * 5000 + b"}"
    with pytest.raises(wire.DecodeError) as err:
        wire.decode(huge)
    assert err.value.reason == "malformed_json"


def test_validator_quarantines_a_huge_json_integer() -> None:
    from edge_agent.validate import Validator

    (item,) = Validator(lambda: 0.0).check_json(b'{"kwh": ' + b"1" * 5000 + b"}", "t")
    assert isinstance(item, wire.QuarantineRecord) and item.reason.startswith("malformed_json")
