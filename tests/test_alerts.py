"""Alerts raised at intake: deterministic ids, the per-meter cooldown, no alert for outages or an
empty prepaid meter, the energy balance per transformer, and central storing each alert once."""

from __future__ import annotations

import base64
import json
import sqlite3
import time
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import psycopg
import pytest

from central.ingest import IngestWorker
from central.settings import CentralSettings
from central.store import AlertOutcome
from edge_agent import scoring, wire
from edge_agent.alerts import Cooldown, alert_id
from edge_agent.buffer import Buffer, BufferFull, DiskFull, ReadingStore
from edge_agent.energy import GridMap
from edge_agent.migrations import LATEST, apply, version
from edge_agent.rollout import ModelManager, models_in_use
from edge_agent.scoring import ActiveModels, Detector
from edge_agent.sources import Intake
from edge_agent.validate import Validator
from ml.publish import build_model_message, build_withdrawal
from tests.support.detection import T0, Gateway, gateway, models, reading, row_of
from tests.support.processes import BROKER_PORT


def day(meters: dict[str, Any], d: int) -> list[Any]:
    """One day (48 intervals) of rows; ``meters[m]`` = None (normal) or extra reading fields."""
    out = []
    for k in range(d * 48, d * 48 + 48):
        for m, extra in meters.items():
            out.append(row_of(reading(m, k, **(extra(k) if callable(extra) else extra or {}))))
    return out


def test_no_alert_for_outage_or_empty_prepaid_meter_but_for_a_bypass(tmp_path: Path) -> None:
    intake = gateway(tmp_path / "b.db", model=models().v1)
    normal = {m: None for m in ("bypass", "outage", "no_credit", "control")}
    for d in range(9):
        intake.take(day(normal, d))
    last = {
        "bypass": {"kwh": 0.0},  # supply on, nothing measured: theft-like
        "outage": {"kwh": 0.0, "supply": "off"},  # load-shedding all day
        "no_credit": {"kwh": 0.0, "flags": ["no_credit"]},  # prepaid meter out of credit
        "control": None,
    }
    intake.take(day(last, 9))
    for d in (10, 11):  # supply and credit come back
        intake.take(day(normal, d))
    got = intake.alerts()
    assert {a["meter_id"] for a in got} == {"bypass"}, got
    assert got[0]["kind"] == "anomaly" and got[0]["model_version"] == "v1"
    assert got[0]["score"] > got[0]["threshold"]
    scored = intake.buffer.db.conn.execute(
        "select count(*), count(score), count(distinct model_version) from readings"
    ).fetchone()
    assert scored == (12 * 48 * 4, 12 * 48 * 4, 1)


def test_a_model_flagging_everything_still_raises_nothing_where_nothing_was_supplied(
    tmp_path: Path,
) -> None:
    """The gate of anomaly alerts is the reading, not the model: with a model whose threshold is
    under every score, readings taken in an outage or out of credit still raise no alert (nobody
    steals what was not supplied), while the same day of a supplied meter does."""
    from ml.publish import message_from_trained
    from ml.synthetic import FLAG_BITS, make_readings
    from ml.train import features_for, train

    r = make_readings(20, 10, seed=5)
    x = features_for(
        r.meter_index, r.ts, r.kwh, r.supply_on, r.flags, r.register_kwh, r.interval_s, FLAG_BITS
    )
    eager = replace(train(x, n_estimators=10), threshold=-1.0, calibration=None)
    message = message_from_trained(eager, name="iforest", version="eager", private_key=models().key)
    intake = gateway(tmp_path / "b.db", model=message, cooldown_s=1)
    meters = ("outage", "no_credit", "supplied")
    for d in range(8):
        intake.take(day(dict.fromkeys(meters), d))
    seen = {a["alert_id"] for a in intake.alerts()}
    last = day(
        {
            "outage": {"kwh": 0.0, "supply": "off"},
            "no_credit": {"kwh": 0.0, "flags": ["no_credit"]},
            "supplied": {"kwh": 0.0},
        },
        8,
    )
    # Led by a reading already stored and a repeated one: the rows scored are not the call's.
    resent = row_of(reading("supplied", 8 * 48 - 1))
    intake.take([resent, last[0], *last])
    fresh = [a for a in intake.alerts() if a["alert_id"] not in seen]
    assert {a["meter_id"] for a in fresh if a["kind"] == "anomaly"} == {"supplied"}
    assert sum(a["kind"] == "anomaly" for a in fresh) == 48


def test_alert_ids_are_deterministic(tmp_path: Path) -> None:
    """Same readings, same model → same ids, in two separate buffers; a resent reading raises
    nothing new."""
    ids = []
    for name in ("a", "b"):
        intake = gateway(tmp_path / f"{name}.db", model=models().v1)
        for d in range(9):
            intake.take(day({"m1": None, "m2": None}, d))
        tamper = {"m1": lambda k: {"flags": ["cover_open"]} if k % 48 == 20 else {}}
        intake.take(day({"m2": {"kwh": 0.0}, **tamper}, 9))
        again = intake.take(day({"m2": {"kwh": 0.0}, **tamper}, 9))  # the source resends
        assert again.accepted == 0 and again.alert_ids == ()
        ids.append([(a["alert_id"], a["kind"], a["meter_id"]) for a in intake.alerts()])
    assert ids[0] == ids[1]
    kinds = {(k, m) for _, k, m in ids[0]}
    assert kinds == {("tamper", "m1"), ("anomaly", "m2")}
    tamper_ts = T0 + 1800 * (9 * 48 + 20 + 1)
    assert ("tamper", "m1") in kinds
    assert alert_id("tamper", "m1", tamper_ts) in [i for i, _, _ in ids[0]]


def test_tamper_alerts_without_model_and_cooldown_across_restart(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    intake = gateway(path)
    # The cover stays open from interval 10 on: every reading carries the flag.
    cover = {"m1": lambda k: {"flags": ["cover_open"]} if k >= 10 else {}, "m2": None}
    res = intake.take(day(cover, 0))
    assert len(res.alert_ids) == 1
    assert intake.buffer.counters.all()["alerts_suppressed_cooldown"] == 37
    intake.close()

    intake = gateway(path)  # restart: the cooldowns come back
    intake.take(day(cover, 1)[: 2 * 10])  # intervals 48..57: less than 24 h after interval 10
    assert intake.buffer.alerts.undelivered() == 1
    intake.take(day(cover, 1)[2 * 10 :])
    got = [wire.Alert.model_validate(a) for a in intake.alerts()]
    assert [(a.kind, a.meter_id) for a in got] == [("tamper", "m1")] * 2
    assert got[1].detail == "meter flags: cover_open"
    assert (got[1].ts - got[0].ts).total_seconds() == 86400
    assert got[0].ts.timestamp() == T0 + 1800 * 11


def test_conflicting_reading_raises_no_alert(tmp_path: Path) -> None:
    intake = gateway(tmp_path / "b.db")
    intake.take([row_of(reading("m1", 0))])
    res = intake.take([row_of(reading("m1", 0, kwh=5.0, flags=["magnetic"]))])
    assert res.conflicts == 1 and res.alert_ids == () and intake.buffer.alerts.undelivered() == 0


# --- energy balance -----------------------------------------------------------------------

GRID = [
    {"meter_id": "TX-1", "meter_role": "transformer", "transformer_id": "DT-1"},
    {"meter_id": "TX-2", "meter_role": "transformer", "transformer_id": "DT-2"},
    *(
        {"meter_id": f"c1-{i}", "meter_role": "customer", "transformer_id": "DT-1"}
        for i in range(3)
    ),
    *(
        {"meter_id": f"c2-{i}", "meter_role": "customer", "transformer_id": "DT-2"}
        for i in range(3)
    ),
]


def balance_day(d: int, hookup_kwh: float = 0.0, drop: str | None = None) -> list[Any]:
    """Customers use 0.2 kWh per interval each; each transformer meter sees their sum plus 5 %
    technical loss, plus ``hookup_kwh`` per interval of unmetered load on DT-1."""
    out = []
    for k in range(d * 48, d * 48 + 48):
        for tx, extra in (("1", hookup_kwh), ("2", 0.0)):
            customers = [f"c{tx}-{i}" for i in range(3)]
            supplied = round(0.6 * 1.05 + extra, 3)
            out.append(row_of(reading(f"TX-{tx}", k, kwh=supplied)))
            out.extend(row_of(reading(c, k, kwh=0.2)) for c in customers if c != drop)
    return out


def test_energy_balance_names_the_transformer(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    grid = GridMap.from_meters(GRID)
    assert grid.transformer_meters == {"TX-1", "TX-2"}
    intake = gateway(path, meters=GRID)
    assert intake.energy is not None and intake.energy.grid == grid
    intake.take(balance_day(0))
    intake.take(balance_day(1, hookup_kwh=0.1))  # ~16 % of DT-1's energy unaccounted
    intake.take(balance_day(2, drop="c2-0"))  # a customer meter silent: not judged
    intake.take(balance_day(3))  # makes day 2 complete (grace)
    got = intake.alerts()
    assert [(a["kind"], a["meter_id"]) for a in got] == [("energy_balance", "TX-1")], got
    alert = got[0]
    assert "DT-1" in alert["detail"]
    assert alert["ts"] == wire.iso_z(wire.Alert.model_validate(alert).ts)
    assert wire.Alert.model_validate(alert).ts.timestamp() == T0 + 2 * 86400  # window's end
    f = alert["features"]
    assert f["supplied_kwh"] == pytest.approx(48 * 0.73)
    assert f["billed_kwh"] == pytest.approx(48 * 0.6)
    assert alert["alert_id"] == alert_id("energy_balance", "TX-1", T0 + 2 * 86400, "window=86400")
    counters = intake.buffer.counters.all()
    assert counters["energy_balance_windows"] == 5  # days 0, 1 of both; day 2 of DT-1
    assert counters["energy_balance_incomplete"] == 1  # day 2 of DT-2
    intake.close()

    # A restart judges nothing twice; the next day is judged once it is complete.
    intake = gateway(path, meters=GRID)
    assert intake.energy is not None and intake.energy.check(time.time()) == ()
    intake.take(balance_day(4, hookup_kwh=0.1))
    assert len(intake.alerts()) == 1  # day 3 judged (balanced), day 4 not complete yet
    intake.take(balance_day(5))
    assert [a["meter_id"] for a in intake.alerts()] == ["TX-1", "TX-1"]


def test_a_full_disk_after_the_readings_committed_does_not_offer_them_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The energy-balance alert is written after the readings' transaction: a full disk there
    must not tell the source 'nothing written' (it would offer the slice again and its quarantine
    rows twice). The window is judged again with the next readings."""
    intake = gateway(tmp_path / "b.db", meters=GRID)
    assert intake.energy is not None
    full: list[BufferFull] = []
    intake.intake.on_full = full.append
    for d in range(2):
        intake.take(balance_day(d))
    add = intake.energy.alerts.add

    def disk_full(*args: Any, **kwargs: Any) -> Any:
        raise DiskFull("database or disk is full")

    monkeypatch.setattr(intake.energy.alerts, "add", disk_full)
    bad = wire.QuarantineRecord.model_validate(
        {
            "raw": "x",
            "reason": "malformed_json: x",
            "received_at": "2026-03-01T00:00:00Z",
            "source": "t",
        }
    )
    result = intake.take([*balance_day(2, hookup_kwh=0.1), bad])  # no exception: committed
    assert result.accepted == len(balance_day(2)) and result.quarantined == 1
    assert len(full) == 1 and intake.alerts() == []
    monkeypatch.setattr(intake.energy.alerts, "add", add)
    intake.take(balance_day(3))
    intake.take(balance_day(4))  # makes day 3 complete: days 1 and 2 were judged meanwhile
    assert [(a["kind"], a["meter_id"]) for a in intake.alerts()] == [("energy_balance", "TX-1")]
    assert intake.buffer.db.conn.execute("select count(*) from quarantine").fetchone() == (1,)
    intake.close()


def test_grid_map_from_simulator_registry(tmp_path: Path) -> None:
    from simulator import Fleet, FleetConfig
    from simulator.writers import write_registry_json

    fleet = Fleet(FleetConfig(meters=60, days=1, seed=3))
    write_registry_json(fleet, tmp_path / "registry.json")
    grid = GridMap.load(tmp_path / "registry.json")
    assert grid and all(m.startswith("TX-") for m in grid.transformer_meters)
    reg = fleet.registry().meters
    customers = [m for m in reg if m["meter_role"] == "customer" and m["transformer_id"]]
    assert sum(len(c) for c in grid.customers.values()) == len(customers)

    # The agent with the simulated source derives the same mapping without a file.
    from edge_agent.agent import Agent
    from edge_agent.settings import AgentSettings, SimSourceSettings

    agent = Agent(
        AgentSettings(
            db_path=tmp_path / "agent.db",
            broker_port=BROKER_PORT,
            sim=SimSourceSettings(meters=60, days=1, seed=3),
        )
    )
    try:
        assert agent.energy is not None and agent.energy.grid == grid
    finally:
        agent.buffer.close()


def test_buffer_v1_file_migrates_to_latest(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path, isolation_level=None)
    apply(conn, 1)
    conn.execute(
        "insert into readings (meter_id, ts, interval_s, kwh, supply_on, accepted_at) "
        "values ('m', 1, 1800, 0.5, 1, 0)"
    )
    conn.close()
    buffer = Buffer(path)
    assert version(buffer.db.conn) == LATEST == 7
    assert buffer.readings.keys() == {("m", 1)}
    assert buffer.alerts.undelivered() == 0 and buffer.models.current() == []
    assert buffer.profiles.load(["m"]) == {}


# --- central ------------------------------------------------------------------------------


def test_central_stores_each_alert_once_and_quarantines_bad_ones(pg_dsn: str) -> None:
    intake_alerts: list[str] = []
    worker = IngestWorker(CentralSettings(pg_dsn=pg_dsn, broker_port=BROKER_PORT))
    good = {
        "schema": "alert.v1",
        "alert_id": alert_id("tamper", "m1", T0),
        "gateway_id": "gw1",
        "meter_id": "m1",
        "ts": "2026-03-01T00:30:00Z",
        "kind": "tamper",
        "features": {"tamper_flag": 1.0},
        "detail": "meter flags: cover_open",
    }
    topic = "eiot/v1/gw/gw1/alerts"
    bad = [
        (b"{oops", "malformed_json"),
        (json.dumps({**good, "schema": "alert.v9"}).encode(), "unknown_schema"),
        (json.dumps({**good, "kind": "nonsense"}).encode(), "invalid_alert"),
        (json.dumps({**good, "gateway_id": "gw2"}).encode(), "gateway_mismatch"),
    ]
    ack_topic = "eiot/v1/gw/gw1/ack"
    with psycopg.connect(pg_dsn) as conn:
        for _ in range(3):  # resent: same id, answered each time (the answer may be lost)
            answer = worker.handle(conn, topic, json.dumps(good).encode())
            stored_ack = wire.AlertAck(alert_id=good["alert_id"], status="stored")
            assert answer == (ack_topic, AlertOutcome(stored_ack))
        for payload, reason in bad:
            got_topic, outcome = worker.handle(conn, topic, payload)
            if payload == b"{oops":  # no id to address: not answered, resent, quarantined once
                assert (got_topic, outcome) == (None, None)
                continue
            assert got_topic == ack_topic and outcome is not None  # stop resending it
            assert isinstance(outcome.ack, wire.AlertAck)
            assert outcome.ack.alert_id == good["alert_id"] and outcome.ack.status == "rejected"
            assert outcome.ack.reason is not None and outcome.ack.reason.startswith(reason)
        stored = conn.execute(
            "select alert_id, gateway_id, kind, features from raw.alerts"
        ).fetchall()
        reasons = [r for (r,) in conn.execute("select reason from raw.quarantine order by 1")]
    intake_alerts = [s[0] for s in stored]
    assert intake_alerts == [good["alert_id"]]
    assert stored[0][1:] == ("gw1", "tamper", {"tamper_flag": 1.0})
    assert sorted(r.split(":")[0] for r in reasons) == sorted(r for _, r in bad)
    assert worker.counters["alerts_stored"] == 1 and worker.counters["alerts_duplicate"] == 2


def class_gateway(
    path: Path,
    meter_class: dict[str, str],
    *,
    classes: list[str] | None = None,
    cooldown_s: int = 86400,
    model_file: Path | None = None,
) -> tuple[Gateway, ModelManager]:
    """A gateway whose registry gives the meters' classes (and, with ``classes``, meters of those
    classes too), its models loaded from the buffer (and ``model_file``)."""
    registry = [{"meter_id": m, "customer_class": c} for m, c in meter_class.items()]
    served = set(meter_class.values())
    registry += [
        {"meter_id": f"other-{i}", "customer_class": c}
        for i, c in enumerate(sorted(set(classes or ()) - served))
    ]
    gw = gateway(path, cooldown_s=cooldown_s, meters=registry, model_file=model_file)
    return gw, gw.models


def test_per_class_models_score_their_class_and_the_global_one_the_rest(tmp_path: Path) -> None:
    m = models()
    path = tmp_path / "b.db"

    def intake_with(offers: list[dict[str, Any]]) -> tuple[Gateway, ModelManager]:
        intake, manager = class_gateway(
            path,
            {"u1": "urban", "x1": "industrial"},
            classes=["urban", "industrial", "bad/class"],
        )
        for message in offers:
            assert manager.offer(json.dumps(message).encode(), "test"), manager.error
        return intake, manager

    intake, manager = intake_with([m.v1, m.urban])
    assert manager.names == {"iforest", "iforest.urban", "iforest.industrial"}
    # A class model for a class this gateway does not serve is refused, the others kept.
    commercial = build_model_message(
        base64.b64decode(m.urban["onnx_b64"]),
        name="iforest.commercial",
        version="c1",
        feature_names=m.urban["feature_names"],
        threshold=m.urban["threshold"],
        private_key=m.key,
    )
    assert not manager.offer(json.dumps(commercial).encode(), "test")
    assert manager.error is not None and manager.error.startswith("name_mismatch")
    assert [(s.name, s.version) for s in manager.states()] == [
        ("iforest", "v1"),
        ("iforest.urban", "c1"),
    ]
    meters = {"u1": None, "x1": None, "m1": None}
    for d in range(9):
        intake.take(day(meters, d))

    def versions() -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for meter, model_version in intake.buffer.db.conn.execute(
            "select meter_id, model_version from readings"
        ):
            out.setdefault(meter, set()).add(model_version)
        return out

    # u1 (urban) by the urban model; x1 (no industrial model) and m1 (no class) by the global.
    assert versions() == {"u1": {"c1"}, "x1": {"v1"}, "m1": {"v1"}}
    # The scores are the class model's: the same features give other scores under v1.
    u1 = intake.buffer.db.conn.execute(
        "select score from readings where meter_id = 'u1' order by ts"
    ).fetchall()
    m1 = intake.buffer.db.conn.execute(
        "select score from readings where meter_id = 'm1' order by ts"
    ).fetchall()
    assert u1 != m1  # same consumption, different forests
    intake.close()

    # Restart: both stored models come back, each under its name.
    intake, manager = intake_with([])
    assert [(s.name, s.version) for s in manager.states()] == [
        ("iforest", "v1"),
        ("iforest.urban", "c1"),
    ]
    intake.take(day(meters, 9))
    assert versions() == {"u1": {"c1"}, "x1": {"v1"}, "m1": {"v1"}}
    intake.close()


def member_message(m: Any, name: str, version: str) -> dict[str, Any]:
    """The urban forest of ``models()`` signed as the model set member ``name``."""
    return build_model_message(
        base64.b64decode(m.urban["onnx_b64"]),
        name=name,
        version=version,
        feature_names=m.urban["feature_names"],
        threshold=m.urban["threshold"],
        private_key=m.key,
    )


def test_intermittent_meters_take_their_shape_models_first(tmp_path: Path) -> None:
    """An intermittent meter is scored by its class's intermittent forest, else by the one of
    every class, else by its class's, else by the global one; its shape comes from the registry
    only."""
    m = models()
    member = partial(member_message, m)

    registry = [
        {"meter_id": "u1", "customer_class": "urban"},
        {"meter_id": "u2", "customer_class": "urban", "load_shape": "continuous"},
        {"meter_id": "u3", "customer_class": "urban", "load_shape": ""},  # an export's null
        {"meter_id": "ui", "customer_class": "urban", "load_shape": "intermittent"},
        {"meter_id": "xi", "customer_class": "industrial", "load_shape": "intermittent"},
        {"meter_id": "ni", "load_shape": "intermittent"},
        {"meter_id": "t1", "meter_role": "transformer", "load_shape": "intermittent"},
    ]
    intake = gateway(tmp_path / "b.db", meters=registry, max_models=0)  # no limit
    manager = intake.models
    assert manager.names == {
        "iforest",
        "iforest.urban",
        "iforest.urban.intermittent",
        "iforest.intermittent",
        "iforest.industrial",
        "iforest.industrial.intermittent",
    }
    offers = [m.v1, m.urban, member("iforest.urban.intermittent", "ui1")]
    offers.append(member("iforest.intermittent", "i1"))
    for message in offers:
        assert manager.offer(json.dumps(message).encode(), "test"), manager.error
    meters = {meter: None for meter in ("u1", "u2", "u3", "ui", "xi", "ni", "m1")}
    for d in range(9):
        intake.take(day(meters, d))
    got = dict(
        intake.buffer.db.conn.execute(
            "select meter_id, group_concat(distinct model_version) from readings group by 1"
        ).fetchall()
    )
    assert got == {
        "u1": "c1",
        "u2": "c1",
        "u3": "c1",
        "ui": "ui1",
        "xi": "i1",
        "ni": "i1",
        "m1": "v1",
    }
    # Every model scored some meter, so each opened its onnxruntime session.
    assert all(m.session_open for m in manager.active.book.models.values())
    intake.close()

    # A gateway whose meters all have a class and a member of their own never opens the
    # global model's session: it is held for a fallback none of them reaches.
    intake = gateway(tmp_path / "c.db", meters=registry[:4], max_models=0)
    for message in offers:
        assert intake.models.offer(json.dumps(message).encode(), "test"), intake.models.error
    assert not intake.models.active.book.models["iforest"].session_open
    intake.take(day({"u1": None, "ui": None}, 0))
    book = intake.models.active.book.models
    assert book["iforest.urban"].session_open and book["iforest.urban.intermittent"].session_open
    assert not book["iforest"].session_open and not book["iforest.intermittent"].session_open
    intake.close()


def test_a_limit_on_models_keeps_the_members_that_serve_most_meters(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``max_models`` caps the models that score (the global one counted): the members kept
    are those that move the most meters off their fallback; the others are held, not used, and
    a member that a newer one displaces closes its session."""
    m = models()
    member = partial(member_message, m)

    def scored_by(intake: Gateway, d: int) -> dict[str, str]:
        rows = intake.buffer.db.conn.execute(
            "select meter_id, model_version from readings where ts > ? and ts <= ?",
            (T0 + d * 86400, T0 + (d + 1) * 86400),
        ).fetchall()
        out: dict[str, set[str]] = {}
        for meter, model in rows:
            out.setdefault(meter, set()).add(model)
        return {meter: ",".join(sorted(v)) for meter, v in out.items()}

    registry = [
        {"meter_id": "u1", "customer_class": "urban"},
        {"meter_id": "u2", "customer_class": "urban"},
        {"meter_id": "ui", "customer_class": "urban", "load_shape": "intermittent"},
        {"meter_id": "xi", "customer_class": "industrial", "load_shape": "intermittent"},
        {"meter_id": "ni", "load_shape": "intermittent"},
        {"meter_id": "ni2", "load_shape": "intermittent"},
    ]
    meters = {r["meter_id"]: None for r in registry}
    # The default limit (3): the global model and two members. ``iforest.intermittent`` serves
    # ui, xi, ni and ni2 (4 meters, against 3 for ``iforest.urban``: u1, u2, ui); then
    # ``iforest.urban`` moves u1 and u2, ``iforest.urban.intermittent`` only ui: left out.
    intake = gateway(tmp_path / "a.db", meters=registry)
    offers = [m.v1, m.urban, member("iforest.urban.intermittent", "ui1")]
    offers.append(member("iforest.intermittent", "i1"))
    with caplog.at_level("WARNING", logger="edge_agent.rollout"):
        for message in offers:
            assert intake.models.offer(json.dumps(message).encode(), "test"), intake.models.error
    assert "iforest.urban.intermittent held but not used" in caplog.text
    for d in range(8):
        intake.take(day(meters, d))
    intermittent = {"ui": "i1", "xi": "i1", "ni": "i1", "ni2": "i1"}
    assert scored_by(intake, 7) == {"u1": "c1", "u2": "c1", **intermittent}
    book = intake.models.active.book
    assert book.usable == {"iforest.urban", "iforest.intermittent"}
    states = intake.models.states()  # status.v1: the models in use, not those left out
    assert [s.name for s in states] == ["iforest", "iforest.intermittent", "iforest.urban"]
    assert not book.models["iforest.urban.intermittent"].session_open
    assert not book.models["iforest"].session_open  # every meter has a member of its own
    in_use = {"iforest": "v1", "iforest.intermittent": "i1", "iforest.urban": "c1"}
    assert models_in_use(intake.buffer.meta) == in_use  # what `edge-agent status` shows
    assert caplog.text.count("held but not used") == 1
    intake.close()
    # A restart loads the stored models one by one and says once what the limit leaves out.
    caplog.clear()
    with caplog.at_level("WARNING", logger="edge_agent.rollout"):
        intake = gateway(tmp_path / "a.db", meters=registry)
    assert caplog.text.count("iforest.urban.intermittent held but not used") == 1
    assert caplog.text.count("held but not used") == 1
    assert models_in_use(intake.buffer.meta) == in_use
    intake.close()

    # A class's own forest before the shared one: five urban intermittent meters and three
    # industrial ones. ``iforest.urban.intermittent`` and ``iforest.intermittent`` would both
    # take the five; the class's own is kept, and the second member is the industrial one (a
    # shared forest left with no meter would waste the slot).
    registry2 = [
        *(
            {"meter_id": f"ui{i}", "customer_class": "urban", "load_shape": "intermittent"}
            for i in range(5)
        ),
        *({"meter_id": f"x{i}", "customer_class": "industrial"} for i in range(3)),
    ]
    intake = gateway(tmp_path / "d.db", meters=registry2)
    for message in [*offers, member("iforest.industrial", "x1")]:
        assert intake.models.offer(json.dumps(message).encode(), "test"), intake.models.error
    assert intake.models.active.book.usable == {"iforest.urban.intermittent", "iforest.industrial"}
    # Neither iforest.urban nor iforest.intermittent would score a meter: none left out.
    assert intake.models.active.book.left_out == []
    intake.take(day({r["meter_id"]: None for r in registry2}, 0))
    got = scored_by(intake, 0)
    assert got == {**{f"ui{i}": "ui1" for i in range(5)}, **{f"x{i}": "x1" for i in range(3)}}
    intake.close()

    # Two models: one member. ``iforest.urban`` is in use until ``iforest.intermittent``
    # arrives, which serves more meters (4 against 3): the urban meters fall back to the global
    # model and the urban session is closed.
    intake = gateway(tmp_path / "b.db", meters=registry, max_models=2)
    for message in offers[:2]:
        assert intake.models.offer(json.dumps(message).encode(), "test"), intake.models.error
    for d in range(8):
        intake.take(day(meters, d))
    assert scored_by(intake, 7) == {
        "u1": "c1",
        "u2": "c1",
        "ui": "c1",
        "xi": "v1",
        "ni": "v1",
        "ni2": "v1",
    }
    assert intake.models.active.book.models["iforest.urban"].session_open
    assert intake.models.offer(json.dumps(offers[3]).encode(), "test"), intake.models.error
    book = intake.models.active.book
    assert book.usable == {"iforest.intermittent"}
    assert not book.models["iforest.urban"].session_open
    intake.take(day(meters, 8))
    assert scored_by(intake, 8) == {"u1": "v1", "u2": "v1", **intermittent}
    intake.close()

    # One model: the global one alone scores, whatever members come.
    intake = gateway(tmp_path / "c.db", meters=registry, max_models=1)
    for message in offers:
        assert intake.models.offer(json.dumps(message).encode(), "test"), intake.models.error
    intake.take(day(meters, 0))
    assert set(scored_by(intake, 0).values()) == {"v1"}
    assert intake.models.active.book.usable == frozenset()
    intake.close()


@pytest.mark.parametrize(
    ("entry", "error"),
    [
        ({"meter_id": "a", "load_shape": "Intermittent"}, "load_shape must be one of"),
        ({"meter_id": "a", "load_shape": 1}, "load_shape must be one of"),
        ({"meter_id": "a", "customer_class": "intermittent"}, "names a load shape"),
        ({"meter_id": "a", "customer_class": "x.intermittent"}, "names a load shape"),
    ],
)
def test_a_misspelt_load_shape_stops_the_agent_with_a_clear_error(
    tmp_path: Path, entry: dict[str, Any], error: str
) -> None:
    with pytest.raises(ValueError, match=error) as raised:
        gateway(tmp_path / "b.db", meters=[entry])
    assert "registry meter 'a'" in str(raised.value)


class CountingHistory:
    """The readings' history, counting the queries."""

    def __init__(self, readings: ReadingStore) -> None:
        self.readings = readings
        self.queries = 0

    def history(self, *args: Any, **kwargs: Any) -> Any:
        self.queries += 1
        return self.readings.history(*args, **kwargs)


def test_scores_do_not_depend_on_how_many_meters_one_call_takes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    m = models()
    stored = []
    for n, per_call in enumerate((1000, 3)):
        if n:  # history arrays reserved too small, read in small chunks: they grow as it is read
            monkeypatch.setattr(scoring, "_HISTORY_ROWS_RESERVED", 16)
            monkeypatch.setattr(scoring, "_HISTORY_CHUNK", 100)
        buffer = Buffer(tmp_path / f"b{n}.db")
        history = CountingHistory(buffer.readings)
        active = ActiveModels("iforest")
        detector = Detector(
            "gw1", history, active, cooldown=Cooldown(0, {}), meters_per_call=per_call
        )
        manager = ModelManager(
            buffer.models,
            buffer.counters,
            buffer.meta,
            active,
            name="iforest",
            public_key=m.public_key,
            clock=time.time,
        )
        assert manager.offer(json.dumps(m.v1).encode(), "test"), manager.error
        intake = Intake(buffer.readings, buffer.meta, Validator(time.time), detector)
        meters: dict[str, Any] = {f"m{i}": None for i in range(7)}
        meters["m3"] = lambda k: {"kwh": 0.0} if k > 8 * 48 else {}
        for d in range(10):
            intake.take(day(meters, d))
        # One history query per call, however the meters are split for the features (a query
        # per group of meters would scan the whole week of the gateway once per group).
        assert history.queries == 10
        stored.append(
            buffer.db.conn.execute(
                "select meter_id, ts, score, model_version from readings order by meter_id, ts"
            ).fetchall()
        )
        buffer.close()
    assert len(stored[0]) == 10 * 48 * 7 and all(r[2] is not None for r in stored[0])
    assert stored[0] == stored[1]


def test_class_models_withdrawn_superseded_or_broken(tmp_path: Path) -> None:
    m = models()
    path = tmp_path / "b.db"
    model_file = tmp_path / "set.json"
    commercial = dict(m.urban, name="iforest.commercial")  # not served here: skipped, no error
    model_file.write_text(json.dumps([commercial, m.v1, m.urban]))

    def build(from_file: bool = True) -> tuple[Gateway, ModelManager]:
        return class_gateway(
            path,
            {"u1": "urban", "u2": "urban"},
            cooldown_s=0,
            model_file=model_file if from_file else None,
        )

    intake, manager = build()
    assert manager.error is None, manager.error
    assert [s.name for s in manager.states()] == ["iforest", "iforest.urban"]
    meters: dict[str, Any] = {"u1": None, "m1": None}

    def versions_of(d: int) -> dict[str, str]:
        intake.take(day(meters, d))
        rows = intake.buffer.db.conn.execute(
            "select meter_id, model_version from readings where ts > ?",
            (T0 + d * 86400,),
        ).fetchall()
        return dict(rows)

    for d in range(8):
        intake.take(day(meters, d))
    assert versions_of(8) == {"u1": "c1", "m1": "v1"}

    # A newer global model (a newer set without an urban member): the older urban model is stale.
    assert manager.offer(json.dumps(m.v2).encode(), "test")
    assert versions_of(9) == {"u1": "v2", "m1": "v2"}

    # A model that fails to score leaves only its own rows unscored.
    class Broken:
        name, version, created_at, threshold = "iforest.urban", "c9", None, 0.5

        def score(self, x: Any) -> Any:
            raise RuntimeError("corrupt session")

    active = intake.detector.models
    good = active.book
    active.book = good.with_model(Broken())  # type: ignore[arg-type]
    assert versions_of(10) == {"u1": None, "m1": "v2"}
    assert intake.buffer.counters.all()["readings_unscored_model_error"] == 48
    active.book = good

    # An empty retained message (anybody could send one) withdraws nothing.
    manager.on_message(b"", "eiot/v1/models/iforest.urban")
    assert not manager.drain()
    assert [s.name for s in manager.states()] == ["iforest", "iforest.urban"]
    assert intake.buffer.counters.all()["models_clear_ignored"] == 1
    # Central withdraws the urban model, signed: it is dropped, and stays dropped.
    withdrawal = build_withdrawal("iforest.urban", private_key=m.key)
    manager.on_message(json.dumps(withdrawal).encode(), "eiot/v1/models/iforest.urban")
    assert manager.drain()
    assert [s.name for s in manager.states()] == ["iforest"] and manager.error is None
    manager.on_message(json.dumps(m.urban).encode(), "eiot/v1/models/iforest.urban")
    manager.drain()  # the urban model, replayed: created before the withdrawal
    assert [s.name for s in manager.states()] == ["iforest"]
    assert (manager.error or "").startswith("rollback")
    manager.on_message(json.dumps(withdrawal).encode(), "eiot/v1/models/iforest.urban")
    manager.drain()  # the same withdrawal again: not newer than itself
    assert (manager.error or "").startswith("stale_withdrawal")
    intake.close()
    intake, manager = build(from_file=False)  # a restart does not bring it back
    assert [(s.name, s.version) for s in manager.states()] == [("iforest", "v2")]
    intake.close()
