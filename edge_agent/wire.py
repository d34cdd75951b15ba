"""Wire contracts shared by the agent, central and ml (``docs/contracts.md``).

Every MQTT payload is a JSON object carrying ``"schema": "<name>.v<N>"``. Payloads may be
compressed; the encoding is told by the first byte (works on MQTT 3.1.1 brokers too):

* ``{`` (0x7B): plain UTF-8 JSON;
* ``0x01``: zlib-compressed UTF-8 JSON follows.

Anything else is rejected as ``bad_encoding``. Decompression is bounded so a small hostile payload
cannot blow up into gigabytes.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    StringConstraints,
    ValidationError,
    model_validator,
)

from edge_agent.codec import row_to_wire
from edge_agent.columnar import ColumnError, check_columns, decode_columns, encode_columns
from edge_agent.fields import Row
from edge_agent.localtime import ZONE_PATTERN
from edge_agent.vocabulary import (
    FLAG_PATTERN,
    ID_PATTERN,
    MAX_INTERVAL_S,
    MIN_INTERVAL_S,
    quarantine_reason,
)
from edge_agent.vocabulary import WIRE_MAX_KW as WIRE_MAX_KW

MAX_BATCH_READINGS = 50_000
MAX_BATCH_QUARANTINED = 10_000
MAX_RAW_CHARS = 16_384

READINGS_SCHEMAS = ("readings.v1", "readings.v2")
ZLIB_HEADER = b"\x01"
JSON_HEADER = b"{"

Identifier = Annotated[str, StringConstraints(pattern=ID_PATTERN)]
Flag = Annotated[str, StringConstraints(pattern=FLAG_PATTERN)]


def _to_utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


def iso_z(value: datetime) -> str:
    """An aware datetime as the wire writes it: UTC, ``Z``, milliseconds only when not zero."""
    text = value.astimezone(UTC).isoformat(timespec="milliseconds")
    # Whole seconds are the norm for interval data: keep the wire short.
    text = text.removesuffix(".000+00:00").removesuffix("+00:00")
    return text + "Z"


def epoch_iso_z(epoch_s: float) -> str:
    """Epoch seconds as the wire writes a time (:func:`iso_z`)."""
    return iso_z(datetime.fromtimestamp(epoch_s, UTC))


def _not_a_number(value: Any) -> Any:
    """A time on the wire is an ISO-8601 string with an offset: a number is refused, never
    guessed to be seconds or milliseconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        raise ValueError("a time is an ISO-8601 string with a UTC offset, not a number")
    return value


UtcDatetime = Annotated[
    AwareDatetime,
    BeforeValidator(_not_a_number),
    AfterValidator(_to_utc),
    PlainSerializer(iso_z, return_type=str, when_used="json"),
]

#: Readings end on whole seconds on their interval's grid: a multiple of the interval for
#: intervals up to 15 minutes, of 15 minutes for longer ones (so a daily or hourly reading may
#: end on a local hour or midnight in any time zone).
ALIGN_MAX_S = 900


def ts_problem(ts: datetime, interval_s: int) -> str | None:
    """Why ``ts`` cannot end an interval of ``interval_s`` seconds, or None."""
    if ts.microsecond:
        return "ts must be whole seconds"
    step = min(int(interval_s), ALIGN_MAX_S)
    if int(ts.timestamp()) % step:
        return f"ts {iso_z(ts)} is not on the {step} s grid of its interval"
    return None


FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]


def printable(text: str) -> str:
    """Text safe for any store: NUL (refused by PostgreSQL text) shown as an escape."""
    return text.replace("\x00", "\\x00")


NoNul = Annotated[str, AfterValidator(printable)]


class WireModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def to_json_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


class Reading(WireModel):
    """One interval of one meter. ``ts`` is the end of the interval."""

    meter_id: Identifier
    ts: UtcDatetime
    interval_s: int = Field(default=1800, ge=MIN_INTERVAL_S, le=MAX_INTERVAL_S)
    kwh: FiniteFloat = Field(ge=0)
    register_kwh: FiniteFloat | None = Field(default=None, ge=0)
    voltage_v: FiniteFloat | None = Field(default=None, ge=0, le=300)
    current_a: FiniteFloat | None = Field(default=None, ge=0, le=2000)
    power_factor: FiniteFloat | None = Field(default=None, ge=-1, le=1)
    temperature_c: FiniteFloat | None = Field(default=None, ge=-60, le=70)
    humidity_pct: FiniteFloat | None = Field(default=None, ge=0, le=100)
    wind_ms: FiniteFloat | None = Field(default=None, ge=0, le=100)
    supply: Literal["on", "off"] = "on"
    flags: tuple[Flag, ...] = Field(default=(), max_length=16)
    # Filled by the agent's anomaly model; they travel to central with the reading.
    score: FiniteFloat | None = None
    model_version: str | None = Field(default=None, pattern=ID_PATTERN)

    @model_validator(mode="after")
    def _plausible(self) -> Reading:
        ceiling = WIRE_MAX_KW * self.interval_s / 3600.0
        if self.kwh > ceiling:
            raise ValueError(f"kwh {self.kwh} above {ceiling:g} for a {self.interval_s}s interval")
        problem = ts_problem(self.ts, self.interval_s)
        if problem:
            raise ValueError(problem)
        return self

    @property
    def key(self) -> tuple[str, datetime]:
        return (self.meter_id, self.ts)

    def measured(self) -> dict[str, Any]:
        """The values that define the reading (what a conflict is judged on)."""
        return self.model_dump(mode="json", exclude={"score", "model_version"}, exclude_none=True)


class QuarantineRecord(WireModel):
    """Input that could not become a reading: kept with its reason, never dropped."""

    raw: NoNul = Field(max_length=MAX_RAW_CHARS)
    reason: NoNul = Field(max_length=500)
    received_at: UtcDatetime
    source: NoNul = Field(max_length=200)

    @classmethod
    def of(
        cls, raw: str | bytes, reason: str, received_at: datetime, source: str
    ) -> QuarantineRecord:
        if isinstance(raw, bytes):
            raw = raw.decode("utf-8", errors="backslashreplace")
        return cls(
            raw=printable(raw)[:MAX_RAW_CHARS],
            reason=printable(reason)[:500],
            received_at=received_at,
            source=printable(source)[:200],
        )


class ReadingsBatch(WireModel):
    schema_: Literal["readings.v1"] = Field(default="readings.v1", alias="schema")
    gateway_id: Identifier
    batch_id: str = Field(pattern=ID_PATTERN)
    batch_seq: int = Field(ge=0)
    sent_at: UtcDatetime
    readings: list[Reading] = Field(default_factory=list, max_length=MAX_BATCH_READINGS)
    quarantined: list[QuarantineRecord] = Field(
        default_factory=list, max_length=MAX_BATCH_QUARANTINED
    )

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    def to_json_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True, by_alias=True)


class BatchEnvelope(WireModel):
    """A readings batch (v1 rows or v2 columns) whose readings are not yet validated one by one.

    Central validates the envelope first (for v2: the shape of the columns), then the readings,
    so that one bad reading goes to quarantine and the rest of the batch is stored.
    """

    schema_: Literal["readings.v1", "readings.v2"] = Field(alias="schema")
    gateway_id: Identifier
    batch_id: str = Field(pattern=ID_PATTERN)
    batch_seq: int = Field(ge=0)
    sent_at: UtcDatetime
    readings: list[Any] = Field(default_factory=list, max_length=MAX_BATCH_READINGS)
    n: int | None = Field(default=None, ge=0, le=MAX_BATCH_READINGS)
    columns: dict[str, Any] | None = None
    quarantined: list[Any] = Field(default_factory=list, max_length=MAX_BATCH_QUARANTINED)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _one_layout(self) -> BatchEnvelope:
        if self.schema_ == "readings.v2":
            if "readings" in self.model_fields_set:
                raise ValueError("readings.v2 carries columns, not readings")
            if self.n is None or self.columns is None:
                raise ValueError("readings.v2 needs n and columns")
            try:
                check_columns(self.n, self.columns)
            except ColumnError as exc:
                raise ValueError(str(exc)) from None
        elif self.n is not None or self.columns is not None:
            raise ValueError("readings.v1 carries readings, not columns")
        return self

    @property
    def size(self) -> int:
        return self.n if self.n is not None else len(self.readings)

    def reading_items(self) -> list[Any]:
        """The readings as v1 objects (v2 columns expanded), not yet validated."""
        if self.columns is not None and self.n is not None:
            return decode_columns(self.n, self.columns)
        return self.readings


def readings_payload(
    schema: str,
    *,
    gateway_id: str,
    batch_id: str,
    batch_seq: int,
    sent_at: float,
    rows: Sequence[Row],
    quarantined: Sequence[tuple[str, str, float, str]],
    presorted: bool = False,
) -> dict[str, Any]:
    """A readings batch as its JSON object, from buffer rows and quarantine rows (``raw,
    reason, received_at`` epoch seconds, ``source``). readings.v2 sorts the rows by
    ``(meter_id, ts)`` unless ``presorted`` says they already are."""
    if schema not in READINGS_SCHEMAS:
        raise ValueError(f"unknown readings schema {schema!r}")
    payload: dict[str, Any] = {
        "schema": schema,
        "gateway_id": gateway_id,
        "batch_id": batch_id,
        "batch_seq": batch_seq,
        "sent_at": epoch_iso_z(sent_at),
    }
    if schema == "readings.v2":
        payload["n"], payload["columns"] = encode_columns(rows, presorted=presorted)
    else:
        payload["readings"] = [row_to_wire(r) for r in rows]
    payload["quarantined"] = [
        {"raw": raw, "reason": reason, "received_at": epoch_iso_z(at), "source": source}
        for raw, reason, at, source in quarantined
    ]
    return payload


SHA256_HEX = r"^[0-9a-f]{64}$"


class Ack(WireModel):
    """Central's answer to a readings batch, sent after the transaction that stored it.

    ``ack.v2`` adds ``batch_sha256``: the sha256 of the batch message it answers (the exact
    bytes central received), so an agent applies an ack only to the batch it sent; ``ack.v1``
    (no digest) is still read."""

    schema_: Literal["ack.v1", "ack.v2"] = Field(default="ack.v2", alias="schema")
    batch_id: str = Field(max_length=200)
    status: Literal["stored", "rejected"]
    inserted: int = Field(default=0, ge=0)
    duplicates: int = Field(default=0, ge=0)
    conflicts: int = Field(default=0, ge=0)
    quarantined: int = Field(default=0, ge=0)
    reason: str | None = Field(default=None, max_length=300)
    batch_sha256: str | None = Field(default=None, pattern=SHA256_HEX)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    def to_json_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True, by_alias=True)


class BufferState(WireModel):
    pending_readings: int = 0
    inflight_batches: int = 0
    total_readings: int = 0
    oldest_pending_ts: UtcDatetime | None = None
    full: bool = False  # intake paused (``intake`` says why)
    intake: Literal["open", "buffer_full", "disk_full"] | None = None
    data_bytes: int | None = Field(default=None, ge=0)  # the buffer's data (pages in use)
    budget_bytes: int | None = Field(default=None, ge=0)  # buffer_max_mb
    wal_bytes: int | None = Field(default=None, ge=0)
    disk_free_bytes: int | None = Field(default=None, ge=0)


class ModelState(WireModel):
    name: str
    version: str
    loaded_at: UtcDatetime


class Status(WireModel):
    schema_: Literal["status.v1"] = Field(default="status.v1", alias="schema")
    gateway_id: Identifier
    state: Literal["online", "offline"]
    sent_at: UtcDatetime
    agent_version: str = ""
    buffer: BufferState | None = None
    last_ack_at: UtcDatetime | None = None
    counters: dict[str, int] = Field(default_factory=dict)
    model: ModelState | None = None  # the global model (else the first class model)
    models: list[ModelState] | None = None  # every model in use, by name (per-class models)
    model_error: str | None = None
    # The wall clock stepped lately, or is behind the latest time the gateway saw: sent_at and
    # the reading times it stamps may be wrong (edge_agent/clock.py).
    clock_suspect: bool | None = None
    clock_last_step_s: FiniteFloat | None = None
    # The zone of the gateway's local clock (its ``timezone`` setting, IANA name): central
    # trains meters whose registry names no zone on this one, as the gateway scores them.
    timezone: str | None = Field(default=None, pattern=ZONE_PATTERN)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    def to_json_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True, by_alias=True)


AlertKind = Literal[
    "anomaly",
    "tamper",
    "register_rollback",
    "supply_loss",
    "energy_balance",
    "buffer_full",
    "disk_full",
    "clock_suspect",
    "scoring_off",
    "meter_unreachable",
]


class Alert(WireModel):
    schema_: Literal["alert.v1"] = Field(default="alert.v1", alias="schema")
    alert_id: str = Field(max_length=80)
    gateway_id: Identifier
    meter_id: Identifier
    ts: UtcDatetime
    kind: AlertKind
    score: FiniteFloat | None = None
    threshold: FiniteFloat | None = None
    model_version: str | None = None
    features: dict[str, float] = Field(default_factory=dict)
    detail: str | None = Field(default=None, max_length=500)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    def to_json_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True, by_alias=True)


class AlertAck(WireModel):
    """Central's answer to an alert, on the gateway's ack topic, sent after the transaction that
    stored it in ``raw.alerts`` (``stored``, also for an alert it already had) or quarantined
    it (``rejected``, with the reason). A broker's PUBACK only says the broker has the alert;
    the agent keeps it in its outbox, and sends it again, until this answer arrives."""

    schema_: Literal["alert_ack.v1"] = Field(default="alert_ack.v1", alias="schema")
    alert_id: str = Field(max_length=80)
    status: Literal["stored", "rejected"]
    reason: str | None = Field(default=None, max_length=300)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    def to_json_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True, by_alias=True)


class ModelMessage(WireModel):
    schema_: Literal["model.v1"] = Field(default="model.v1", alias="schema")
    name: Identifier
    version: str = Field(pattern=ID_PATTERN)
    created_at: UtcDatetime
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    feature_names: list[str]
    threshold: FiniteFloat
    onnx_b64: str
    signature: str

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    def to_json_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True, by_alias=True)


class ModelWithdrawal(WireModel):
    """Central stops the use of a model: published retained on the model's topic, signed like
    a model (``edge_agent.signing``). ``created_at`` is after the model it withdraws; no model
    of that name created before it is accepted afterwards."""

    schema_: Literal["model_withdrawal.v1"] = Field(default="model_withdrawal.v1", alias="schema")
    name: Identifier
    created_at: UtcDatetime
    signature: str = Field(max_length=200)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    def to_json_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True, by_alias=True)


# --- encoding -------------------------------------------------------------------------------


class DecodeError(ValueError):
    """A payload that cannot be decoded; ``reason`` is a short machine-readable word."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(quarantine_reason(reason, detail))  # central quarantines it so
        self.reason = reason
        self.detail = detail


def encode(obj: dict[str, Any], compress: bool = True, level: int = 6) -> bytes:
    body = json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()
    if not compress:
        return body
    return ZLIB_HEADER + zlib.compress(body, level)


def encode_model(model: WireModel, compress: bool = True) -> bytes:
    return encode(model.to_json_dict(), compress=compress)


@dataclass(frozen=True)
class Limits:
    """How much one message may cost before it is parsed: its inflated size, and an upper bound
    on the JSON values it holds (objects and arrays; items, counted by their separators), so a
    small hostile payload cannot make the parser build millions of objects."""

    max_bytes: int = 1024 * 1024
    max_containers: int = 10_000
    max_items: int = 100_000


#: A readings batch: 50,000 readings of every field (v1 rows or v2 columns, flags as lists)
#: plus 10,000 quarantine records.
BATCH_LIMITS = Limits(
    max_bytes=32 * 1024 * 1024,
    max_containers=2 * MAX_BATCH_READINGS + MAX_BATCH_QUARANTINED + 64,
    max_items=20 * MAX_BATCH_READINGS + 6 * MAX_BATCH_QUARANTINED,
)
#: A model.v1 message: one object, its ONNX graph as one base64 string.
MODEL_LIMITS = Limits(max_bytes=48 * 1024 * 1024, max_containers=64, max_items=4_096)


def decode(payload: bytes, limits: Limits = Limits()) -> dict[str, Any]:
    """Bytes → JSON object, within ``limits``. Raises :class:`DecodeError` with a reason, never
    anything else."""
    max_bytes = limits.max_bytes
    if not payload:
        raise DecodeError("empty")
    if payload[:1] == ZLIB_HEADER:
        inflater = zlib.decompressobj()
        try:
            body = inflater.decompress(payload[1:], max_bytes)
        except zlib.error as exc:
            raise DecodeError("bad_compression", str(exc)) from None
        if inflater.unconsumed_tail:
            raise DecodeError("oversize", f"inflates past {max_bytes} bytes")
        if not inflater.eof:
            raise DecodeError("bad_compression", "truncated zlib stream")
    elif payload[:1] == JSON_HEADER:
        if len(payload) > max_bytes:
            raise DecodeError("oversize", f"{len(payload)} bytes")
        body = payload
    else:
        raise DecodeError("bad_encoding", f"unknown first byte 0x{payload[0]:02x}")
    # Upper bounds, counted on the bytes (a brace inside a string counts too): cheap, and the
    # parser never sees a structure that would cost more than the limits allow.
    containers = body.count(b"{") + body.count(b"[")
    if containers > limits.max_containers:
        raise DecodeError("too_complex", f"{containers} objects or arrays")
    if body.count(b",") + 1 > limits.max_items:
        raise DecodeError("too_complex", "too many values")
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError) as exc:  # incl. JSONDecodeError, huge integers
        raise DecodeError("malformed_json", str(exc)[:200]) from None
    if not isinstance(obj, dict):
        raise DecodeError("malformed_json", "top level is not an object")
    return obj


def schema_of(obj: dict[str, Any]) -> str:
    schema = obj.get("schema")
    return schema if isinstance(schema, str) else ""


def explain(exc: ValidationError, limit: int = 3) -> str:
    """A short, human-readable reason from a pydantic error (field: message; ...)."""
    parts = []
    for err in exc.errors()[:limit]:
        loc = ".".join(str(p) for p in err["loc"]) or "value"
        parts.append(f"{loc}: {err['msg']}")
    more = exc.error_count() - limit
    if more > 0:
        parts.append(f"+{more} more")
    return "; ".join(parts)
