"""Agent settings: a TOML file (``--config`` or ``EIOT_CONFIG``) and ``EIOT_*`` variables.

Precedence, strongest first: explicit arguments, environment, TOML file, defaults. Defaults are
safe on a laptop (loopback broker, buffer under ``var/``); a production gateway sets
``profile = "production"``, its ``gateway_id``, ``timezone`` and broker credentials.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from edge_agent.localtime import check_zone
from edge_agent.meters import BAUD_RATES, UNIT_IDS
from edge_agent.settings_base import BrokerSettings, TomlEnvSettings, build
from edge_agent.topics import DEFAULT_ROOT
from edge_agent.vocabulary import ID_PATTERN, MAX_INTERVAL_S, MIN_INTERVAL_S


class SimSourceSettings(BaseModel):
    """The simulated fleet source (demo, tests, benchmarks)."""

    meters: int = Field(default=200, ge=1)
    days: float = Field(default=3, gt=0)
    start: str = "2026-03-01"
    seed: int = 7
    gateways: int = Field(default=1, ge=1)
    gateway_index: int = Field(default=0, ge=0)
    interval_s: int = 1800
    theft_share: float = Field(default=0.06, ge=0, le=1)
    # Interval blocks (all meters of one interval) emitted per second; 0 = as fast as possible.
    intervals_per_s: float = Field(default=0, ge=0)
    chunk_intervals: int = Field(default=4, ge=1)
    # Share of readings the meters garble, as failing meters do (edge_agent.sources.sim.garble):
    # the agent quarantines them, as it would a real meter's.
    garbled_share: float = Field(default=0, ge=0, le=0.1)


def _check_schedule(interval_s: int, offset_name: str, offset_s: int) -> None:
    """A polled source's interval divides a day; its offset after a boundary is shorter."""
    if 86400 % interval_s:
        raise ValueError(f"interval_s {interval_s} does not divide a day")
    if offset_s >= interval_s:
        raise ValueError(f"{offset_name} must be shorter than interval_s")


def _unique(what: str, names: list[str | None]) -> None:
    seen = set()
    for name in names:
        if name in seen:
            raise ValueError(f"{what} {name} appears twice")
        seen.add(name)


class ModbusMeterSettings(BaseModel):
    """A meter on a Modbus bus."""

    model_config = ConfigDict(extra="forbid")

    meter_id: str = Field(pattern=ID_PATTERN)
    unit: int = Field(ge=min(UNIT_IDS), le=max(UNIT_IDS))  # its Modbus address on the bus
    model: str  # a register map (edge_agent/meters/maps, or [modbus] maps_dir)


class ModbusBusSettings(BaseModel):
    """A Modbus TCP endpoint (a meter, or a TCP-to-RS-485 gateway) or an RTU serial port."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=ID_PATTERN)
    kind: Literal["tcp", "rtu"]
    host: str | None = None  # tcp
    port: int = Field(default=502, ge=1, le=65535)
    device: str | None = None  # rtu, e.g. /dev/ttyUSB0
    baudrate: int = 9600
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    timeout_s: float = Field(default=1.0, gt=0, le=30)
    retries: int = Field(default=2, ge=0, le=5)
    meters: list[ModbusMeterSettings] = Field(min_length=1)

    @model_validator(mode="after")
    def _addressed(self) -> ModbusBusSettings:
        if self.kind == "tcp" and not self.host:
            raise ValueError(f"bus {self.name}: a tcp bus needs host")
        if self.kind == "rtu" and not self.device:
            raise ValueError(f"bus {self.name}: an rtu bus needs device")
        if self.kind == "rtu" and self.baudrate not in BAUD_RATES:
            raise ValueError(f"bus {self.name}: baudrate must be one of {BAUD_RATES}")
        units = [m.unit for m in self.meters]
        if len(set(units)) != len(units):
            raise ValueError(f"bus {self.name}: two meters with one unit id")
        return self


class ModbusSettings(BaseModel):
    """Meters the agent reads itself over Modbus (``[modbus]`` and ``[[modbus.buses]]``)."""

    model_config = ConfigDict(extra="forbid")

    # Readings every interval_s, at multiples of it (UTC): a divisor of a day.
    interval_s: int = Field(default=900, ge=MIN_INTERVAL_S, le=MAX_INTERVAL_S)
    # A boundary is read only this long after it (a late read would put later energy into it);
    # one missed (the agent started or stalled past it) is merged into the next reading.
    poll_window_s: int = Field(default=60, ge=1)
    unreachable_after: int = Field(default=3, ge=1)  # missed boundaries before the alert
    workers: int = Field(default=4, ge=1, le=32)  # buses polled at once
    maps_dir: Path | None = None  # register maps of the site's own meter models
    buses: list[ModbusBusSettings] = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> ModbusSettings:
        _check_schedule(self.interval_s, "poll_window_s", self.poll_window_s)
        _unique("bus name", [b.name for b in self.buses])
        _unique("meter_id", [m.meter_id for b in self.buses for m in b.meters])
        _unique("serial device", [b.device for b in self.buses if b.kind == "rtu"])
        return self


class DlmsMeterSettings(BaseModel):
    """A DLMS/COSEM meter reached over TCP (WRAPPER): its own IP, or a port of a modem."""

    model_config = ConfigDict(extra="forbid")

    meter_id: str = Field(pattern=ID_PATTERN)
    host: str
    port: int = Field(default=4059, ge=1, le=65535)
    client_sap: int = Field(default=16, ge=1, le=0xFFFF)  # 16: public client, no security
    server_sap: int = Field(default=1, ge=1, le=0xFFFF)  # 1: the management logical device
    password: SecretStr | None = None  # LOW authentication; none: no security
    timeout_s: float = Field(default=5.0, gt=0, le=60)
    energy_register: str = "1.0.1.8.0.255"  # active energy import (class 3)
    profile: str = "1.0.99.1.0.255"  # load profile (class 7): the clock and that register

    @field_validator("energy_register", "profile")
    @classmethod
    def _obis(cls, value: str) -> str:
        from edge_agent.meters.axdr import obis  # only where DLMS meters are read

        obis(value)
        return value


class DlmsSettings(BaseModel):
    """Meters the agent reads itself over DLMS/COSEM (``[dlms]``, ``[[dlms.meters]]``)."""

    model_config = ConfigDict(extra="forbid")

    # Each meter's load profile is read every interval_s (UTC multiples), read_delay_s after
    # the boundary so the meter has captured the entry that ends there.
    interval_s: int = Field(default=900, ge=MIN_INTERVAL_S, le=MAX_INTERVAL_S)
    read_delay_s: int = Field(default=30, ge=0)
    # A meter clock further than this from the gateway's (trusted) clock: its entries are
    # quarantined (meter_clock_off), not stamped wrong.
    max_clock_skew_s: int = Field(default=300, ge=1)
    # How far back the first read of a meter goes (its profile memory permitting).
    catch_up_days: float = Field(default=7.0, gt=0, le=90)
    unreachable_after: int = Field(default=3, ge=1)
    workers: int = Field(default=4, ge=1, le=32)  # meters read at once
    meters: list[DlmsMeterSettings] = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> DlmsSettings:
        _check_schedule(self.interval_s, "read_delay_s", self.read_delay_s)
        _unique("meter_id", [m.meter_id for m in self.meters])
        return self


class AgentSettings(TomlEnvSettings, BrokerSettings):
    """The broker_* settings are the uplink to central (``BrokerSettings``)."""

    profile: Literal["laptop", "production"] = "laptop"
    gateway_id: str = Field(default="gw-laptop", pattern=ID_PATTERN)

    topic_root: str = DEFAULT_ROOT
    keepalive_s: int = Field(default=30, ge=5)
    session_expiry_s: int = Field(default=7 * 24 * 3600, ge=0)
    backoff_min_s: float = Field(default=0.5, gt=0)
    backoff_max_s: float = Field(default=60.0, gt=0)

    # Buffer.
    db_path: Path = Path("var/edge/buffer.db")
    synchronous: Literal["FULL", "NORMAL"] = "FULL"
    buffer_cap_readings: int = Field(default=2_000_000, ge=1)
    # The buffer's data may take this much (SQLite pages in use, ~190 B a reading with its
    # indexes); then intake pauses until sending and pruning make room (edge_agent/capacity.py).
    buffer_max_mb: int = Field(default=512, ge=4)
    # Intake pauses when the buffer's file system has less than this free (at least 1 MB:
    # recording acks and pruning need a few pages of their own).
    disk_reserve_mb: int = Field(default=64, ge=1)
    cap_policy: Literal["refuse", "evict_oldest"] = "refuse"
    retention_s: int = Field(default=8 * 24 * 3600, ge=0)

    # Sync.
    batch_max_readings: int = Field(default=10_000, ge=1, le=50_000)
    batch_max_age_s: float = Field(default=5.0, ge=0)
    inflight_window: int = Field(default=4, ge=1, le=20)
    ack_timeout_s: float = Field(default=20.0, gt=0)
    ack_timeout_max_s: float = Field(default=300.0, gt=0)
    compress: bool = True
    # readings.v2 (columns, ~10 B/reading) by default; readings.v1 for a central not upgraded yet.
    wire_schema: Literal["readings.v1", "readings.v2"] = "readings.v2"
    # A status is ~0.7 kB on the wire with TCP and TLS: every 5 min is ~6 MB a month of 3G.
    status_interval_s: float = Field(default=300.0, gt=0)
    # The agent's own /metrics for an engineer on site (edge_agent/local_metrics.py): off unless
    # a port is set (0: any free port, logged). Loopback unless the host says otherwise: it has
    # no authentication.
    local_metrics_port: int | None = Field(default=None, ge=0, le=65535)
    local_metrics_host: str = "127.0.0.1"

    # Validation.
    max_future_s: int = 300
    max_kw: float = Field(default=1000.0, gt=0)

    # Sources (any combination).
    source_topic: str | None = None  # e.g. "meters/+/reading" on the source broker
    # The local broker meters or a head-end publish to (plain MQTT on the gateway itself).
    source_broker_host: str = "127.0.0.1"
    source_broker_port: int = 1883
    spool_dir: Path | None = None
    spool_meter_id: str = Field(default="seed-0001", pattern=ID_PATTERN)
    sim: SimSourceSettings | None = None
    modbus: ModbusSettings | None = None
    dlms: DlmsSettings | None = None

    # The gateway's local clock (IANA name, e.g. "Africa/Lagos"): time-of-day and calendar-day
    # features use it, daylight saving included; a registry meter with its own "timezone" uses
    # that. Unset means UTC, which the production profile refuses: set it, even to "UTC".
    timezone: str | None = None

    # Anomaly model (model.v1 on {topic_root}/models/{model_name}, retained, signed).
    model_name: str = Field(default="iforest", pattern=ID_PATTERN)
    # Raw 32-byte Ed25519 public key, base64 or hex. Unset: every model is refused
    # ("no_public_key") and reported in status.v1.
    model_public_key: str | None = None
    model_path: Path | None = None  # a signed model.v1 JSON file to load at start (offline)
    model_threads: int = Field(default=1, ge=1, le=8)
    # At most this many models score the gateway's meters, the global one counted (0: no
    # limit). Each is an onnxruntime session of a few MB: three keep the agent at about its
    # 90 MB budget. Beyond it, the class and load-shape members that serve the fewest meters
    # are held but not used, and their meters fall back to their next model (the log says
    # which).
    max_models: int = Field(default=3, ge=0, le=64)

    # Alerts (alert.v1 on {topic_root}/gw/{gateway_id}/alerts, QoS1, outbox in the buffer).
    alert_cooldown_s: int = Field(default=86400, ge=0)  # per meter and kind, in reading time
    # Not answered by central (alert_ack.v1) after this long: send again, the wait doubling per
    # unanswered send up to alert_resend_max_s.
    alert_resend_s: float = Field(default=30.0, gt=0)
    alert_resend_max_s: float = Field(default=900.0, gt=0)

    # Energy balance per transformer. The meter -> transformer mapping comes from a registry
    # JSON file (the simulator's registry.json: meters with meter_id, meter_role, transformer_id)
    # or, for the simulated source, from the simulated fleet itself.
    registry_path: Path | None = None
    energy_balance_window_s: int = Field(default=86400, ge=3600)
    energy_balance_expected_loss: float = Field(default=0.06, ge=0, lt=1)
    energy_balance_gap_share: float = Field(default=0.04, gt=0, lt=1)
    energy_balance_min_kwh: float = Field(default=1.0, ge=0)
    energy_balance_min_completeness: float = Field(default=0.99, gt=0, le=1)
    energy_balance_grace_s: int = Field(default=3600, ge=0)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str | None) -> str | None:
        return None if value is None else check_zone(value)

    @model_validator(mode="after")
    def _one_source_per_meter(self) -> AgentSettings:
        modbus = {m.meter_id for b in self.modbus.buses for m in b.meters} if self.modbus else set()
        dlms = {m.meter_id for m in self.dlms.meters} if self.dlms else set()
        both = sorted(modbus & dlms)
        if both:
            raise ValueError(f"meters read over both Modbus and DLMS: {', '.join(both)}")
        return self

    @model_validator(mode="after")
    def _production_is_secure(self) -> AgentSettings:
        if self.profile == "production":
            problems = self.broker_problems()
            if self.gateway_id == "gw-laptop":
                problems.insert(0, "production profile needs its own gateway_id")
            if self.timezone is None:
                problems.append("production profile needs the gateway's timezone (IANA name)")
            if problems:
                raise ValueError("; ".join(problems))
        return self


def load_settings(config_file: Path | str | None = None, **overrides: Any) -> AgentSettings:
    """Build the settings from a TOML file (if any), the environment and ``overrides``."""
    return build(AgentSettings, config_file, **overrides)
