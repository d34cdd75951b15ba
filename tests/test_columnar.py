"""readings.v2 (columns) decodes to exactly the readings v1 would carry."""

from __future__ import annotations

import json
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent import wire
from edge_agent.codec import row_to_wire
from edge_agent.columnar import ColumnError, decode_columns, encode_columns
from edge_agent.validate import reading_to_row

T0 = 1_772_323_200

floats = st.one_of(
    st.none(),
    st.floats(0, 300, allow_nan=False).map(lambda x: round(x, 3)),
    st.floats(0, 300, allow_nan=False),
)
rows = st.lists(
    st.tuples(
        st.sampled_from(["A", "B-2", "c.3"]),
        st.integers(0, 500),
        st.sampled_from([900, 1800, 3600]),
        st.floats(0, 50, allow_nan=False),
        st.one_of(
            st.none(),
            st.floats(0, 1e6, allow_nan=False),
            st.integers(0, 10**6).map(lambda m: m / 1000),
        ),
        floats,
        st.booleans(),
        st.lists(st.sampled_from(["cover_open", "magnetic", "no_credit"]), max_size=2, unique=True),
    ),
    min_size=1,
    max_size=60,
    unique_by=lambda r: (r[0], r[1]),
)


def as_row(t: tuple) -> tuple:  # type: ignore[type-arg]
    meter, k, interval, kwh, reg, volt, on, flags = t
    return (
        meter,
        T0 + 900 * k,
        interval,
        kwh,
        reg,
        volt,
        None,
        None,
        None,
        None,
        None,
        1 if on else 0,
        ",".join(flags) or None,
        None,
        None,
    )


@settings(max_examples=200, deadline=None)
@given(rows)
def test_round_trip_is_lossless(sample: list[tuple]) -> None:  # type: ignore[type-arg]
    buffer_rows = [as_row(t) for t in sample]
    n, cols = encode_columns(buffer_rows)
    decoded = decode_columns(n, json.loads(json.dumps(cols)))
    got = sorted(reading_to_row(wire.Reading.model_validate(d)) for d in decoded)
    want = sorted(reading_to_row(wire.Reading.model_validate(row_to_wire(r))) for r in buffer_rows)
    assert got == want


def test_v2_is_smaller_than_v1() -> None:
    rows_ = [
        (
            f"SN{m:04d}",
            T0 + 1800 * (k + 1),
            1800,
            round(0.05 + 0.001 * ((m * k) % 97), 3),
            round(1000 + m + 0.1 * k, 3),
            round(228 + (m + k) % 7 * 0.3, 1),
            None,
            None,
            None,
            None,
            None,
            1,
            None,
            None,
            None,
        )
        for k in range(10)
        for m in range(500)
    ]
    v1 = zlib.compress(json.dumps([row_to_wire(r) for r in rows_]).encode(), 9)
    n, cols = encode_columns(rows_)
    v2 = zlib.compress(json.dumps(cols).encode(), 9)
    assert len(v2) < len(v1) / 2


@pytest.mark.parametrize(
    ("n", "cols", "message"),
    [
        (2, {"meter_id": "a", "ts_delta": [1]}, "has 1 values"),
        (1, {"meter_id": "a"}, "ts_delta is required"),
        (1, {"meter_id": "a", "ts_delta": 5}, "must be a list"),
        (1, {"meter_id": "a", "ts_delta": ["x"]}, "integers"),
        (1, {"meter_id": "a", "ts_delta": [1], "bogus": 1}, "unknown columns"),
        (-1, {}, "non-negative"),
        (1, [], "must be an object"),
    ],
)
def test_malformed_columns_are_refused(n: object, cols: object, message: str) -> None:
    with pytest.raises(ColumnError, match=message):
        decode_columns(n, cols)


def test_envelope_expands_v2_and_refuses_mixed() -> None:
    n, cols = encode_columns([as_row(("m", 1, 1800, 0.5, None, None, True, []))])
    base = {
        "schema": "readings.v2",
        "gateway_id": "g",
        "batch_id": "b-1",
        "batch_seq": 1,
        "sent_at": "2026-03-01T00:00:00Z",
    }
    env = wire.BatchEnvelope.model_validate({**base, "n": n, "columns": cols})
    assert env.reading_items()[0]["meter_id"] == "m"
    with pytest.raises(ValueError, match="columns, not readings"):
        wire.BatchEnvelope.model_validate({**base, "readings": []})


column_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 10**6),
    st.floats(allow_nan=True),
    st.text(max_size=6),
    st.lists(st.sampled_from(["cover_open", "BAD", "x"]), max_size=3),
)


@settings(max_examples=300, deadline=None)
@given(
    sample=rows,
    tweaks=st.lists(
        st.tuples(
            st.sampled_from(
                sorted(
                    [
                        "meter_id",
                        "interval_s",
                        "kwh",
                        "register_kwh",
                        "voltage_v",
                        "supply",
                        "flags",
                        "score",
                        "model_version",
                        "power_factor",
                    ]
                )
            ),
            st.integers(0, 59),
            column_values,
        ),
        max_size=3,
    ),
)
def test_column_fast_path_agrees_with_reading_validation(
    sample: list[tuple], tweaks: list[tuple]
) -> None:  # type: ignore[type-arg]
    """The fast path accepts a batch exactly when every reading validates, with equal rows."""
    from pydantic import ValidationError

    from central.rows import reading_row, validated_rows
    from edge_agent.columnar import check_columns

    n, cols = encode_columns([as_row(t) for t in sample])
    cols = json.loads(json.dumps(cols))
    for name, i, value in tweaks:  # corrupt some values, perhaps
        if name in cols:
            if not isinstance(cols[name], list):
                cols[name] = [cols[name]] * n
            cols[name][i % n] = value
    try:
        check_columns(n, cols)
    except ColumnError:
        return
    fast = validated_rows(n, cols)
    try:
        slow = [reading_row(wire.Reading.model_validate(d)) for d in decode_columns(n, cols)]
    except ValidationError:
        slow = None
    assert fast == slow
