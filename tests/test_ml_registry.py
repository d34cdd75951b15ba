"""Model registry and rollout against the real PostgreSQL and Mosquitto on 127.0.0.1: the
ml.models row, idempotent re-publication of a version, and the retained model.v1 message that
a gateway verifies with the public key."""

from __future__ import annotations

import base64
import json
import os
import secrets
import threading
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import psycopg
import pytest

from central.db import migrate
from edge_agent import wire
from edge_agent.features import FEATURE_NAMES
from edge_agent.model import ModelRejected, load_model
from edge_agent.signing import verify_withdrawal
from ml.cli import main as ml_main
from ml.dataset import MeterData, from_fleet, reading_features
from ml.modelset import ModelSet, train_model_set
from ml.publish import generate_keypair, load_private_key, public_key_b64
from ml.registry import (
    Broker,
    VersionConflict,
    clear_retained,
    in_service_version,
    mark_published,
    publish_model_set,
    read_retained,
    register,
    registered,
    service_change,
    sign_member,
)
from simulator import FleetConfig

pytestmark = pytest.mark.services

PG_ADMIN_DSN = os.environ.get(
    "EIOT_TEST_PG_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"
)
BROKER = Broker(
    host="127.0.0.1", port=int(os.environ.get("EIOT_TEST_BROKER_PORT", "1883")), timeout_s=10
)


@pytest.fixture
def ml_dsn() -> Iterator[str]:
    """A throwaway database with the central migrations applied; dropped afterwards."""
    name = f"eiot_mltest_{secrets.token_hex(4)}"
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as admin:
        admin.execute(f"create database {name}")
    dsn = PG_ADMIN_DSN.rsplit("/", 1)[0] + "/" + name
    try:
        assert "0003_ml_models.sql" in migrate(dsn)
        yield dsn
    finally:
        with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as admin:
            admin.execute(f"drop database if exists {name} with (force)")


@pytest.fixture(scope="module")
def model_set() -> ModelSet:
    data = from_fleet(FleetConfig(meters=80, days=9, seed=5, theft_share=0.2))
    return train_model_set(
        data, reading_features(data), variant="global", warmup_days=7, max_rows=20_000
    )


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, str]:
    private = tmp_path / "keys" / "signing.pem"
    public = generate_keypair(private, tmp_path / "keys" / "signing.pub")
    return private, public


def test_migration_is_idempotent(ml_dsn: str) -> None:
    assert migrate(ml_dsn) == []
    with psycopg.connect(ml_dsn) as conn:
        assert conn.execute("select count(*) from ml.models").fetchone() == (0,)


def test_publish_registers_row_and_retained_message_verifies(
    ml_dsn: str, model_set: ModelSet, keys: tuple[Path, str]
) -> None:
    private, public = keys
    root = f"eiot-test/{secrets.token_hex(4)}"
    key = load_private_key(private)
    topic = f"{root}/models/{model_set.name}"
    try:
        first = publish_model_set(model_set, key, dsn=ml_dsn, broker=BROKER, root=root)
        assert [p.topic for p in first] == [topic]
        assert first[0].registered

        with psycopg.connect(ml_dsn) as conn:
            rows = registered(conn)
        assert len(rows) == 1
        row = rows[0]
        member = model_set.members[0]
        assert (row["name"], row["version"]) == (model_set.name, model_set.version)
        assert row["customer_class"] is None and row["variant"] == "global"
        assert list(row["feature_names"]) == list(FEATURE_NAMES)
        assert row["threshold"] == member.threshold
        assert row["score_offset"] == member.offset  # the raw threshold: the output is calibrated
        assert row["sha256"] == member.sha256
        assert row["train_rows"] == member.train_rows > 0
        assert row["train_start"] < row["train_end"]
        assert row["published_at"] is not None and row["topic"] == topic
        assert "f1" in row["metrics"] and row["training"]["source"]["seed"] == 5

        # What a gateway gets when it subscribes: a retained, signed, loadable model.
        payload = read_retained(topic, BROKER)
        assert payload is not None and payload[:1] == wire.ZLIB_HEADER
        loaded = load_model(wire.decode(payload), public)
        assert loaded.version == model_set.version
        assert loaded.threshold == member.threshold
        x = np.zeros((3, len(FEATURE_NAMES)), np.float32)
        assert loaded.score(x).shape == (3,)
        # The signature really is checked: another key refuses the message.
        other = base64.b64encode(bytes(32)).decode()
        with pytest.raises(ModelRejected):
            load_model(wire.decode(payload), other)

        # Publishing the same version again: still one row, the same message re-sent.
        again = publish_model_set(model_set, key, dsn=ml_dsn, broker=BROKER, root=root)
        assert not again[0].registered
        assert again[0].message == first[0].message
        with psycopg.connect(ml_dsn) as conn:
            assert conn.execute("select count(*) from ml.models").fetchone() == (1,)
        assert read_retained(topic, BROKER) == payload
    finally:
        clear_retained(topic, BROKER)
    assert read_retained(topic, BROKER, timeout_s=1.0) is None


def test_ml_publish_waits_for_another_change_of_the_model_in_service(
    ml_dsn: str, model_set: ModelSet, keys: tuple[Path, str], tmp_path: Path
) -> None:
    """`python -m ml publish` takes the lock a lifecycle run and a rollback hold while they
    check and change which set is in service (ml.registry.service_change)."""
    private, _ = keys
    root = f"eiot-test/{secrets.token_hex(4)}"
    topic = f"{root}/models/{model_set.name}"
    model_set.write(tmp_path / "set")
    argv = ["publish", str(tmp_path / "set"), "--key", str(private), "--dsn", ml_dsn]
    argv += ["--port", str(BROKER.port), "--root", root]
    done = threading.Event()
    try:
        with (
            psycopg.connect(ml_dsn, autocommit=True) as conn,
            service_change(conn, model_set.name) as serving,
        ):
            assert serving is None
            publishing = threading.Thread(target=lambda: (ml_main(argv), done.set()))
            publishing.start()
            assert not done.wait(1.5), "published under another change's lock"
        publishing.join(30)
        assert done.is_set()
        with psycopg.connect(ml_dsn) as conn:
            assert in_service_version(conn, model_set.name) == model_set.version
        assert read_retained(topic, BROKER) is not None
    finally:
        clear_retained(topic, BROKER)


def test_a_new_set_without_a_class_withdraws_that_class_model(
    ml_dsn: str, model_set: ModelSet, keys: tuple[Path, str]
) -> None:
    key = load_private_key(keys[0])
    root = f"eiot-test/{secrets.token_hex(4)}"
    urban = replace(model_set.members[0], name="iforest.urban", customer_class="urban")
    per_class = replace(model_set, variant="per_class", members=[model_set.members[0], urban])
    later = replace(
        model_set,
        version=model_set.version + "-2",
        created_at=model_set.created_at.replace(year=2030),
    )
    try:
        publish_model_set(per_class, key, dsn=ml_dsn, broker=BROKER, root=root)
        assert read_retained(f"{root}/models/iforest.urban", BROKER) is not None
        publish_model_set(later, key, dsn=ml_dsn, broker=BROKER, root=root)  # global only
        withdrawal = read_retained(f"{root}/models/iforest.urban", BROKER, timeout_s=1.0)
        assert withdrawal is not None  # a signed withdrawal, retained for late gateways
        verified = verify_withdrawal(wire.decode(withdrawal), public_key_b64(key))
        assert verified.name == "iforest.urban"
        retained = read_retained(f"{root}/models/iforest", BROKER)
        assert retained is not None and wire.decode(retained)["version"] == later.version
    finally:
        clear_retained(f"{root}/models/iforest", BROKER)
        clear_retained(f"{root}/models/iforest.urban", BROKER)


def test_same_version_with_another_model_is_refused(
    ml_dsn: str, model_set: ModelSet, keys: tuple[Path, str]
) -> None:
    key = load_private_key(keys[0])
    member = model_set.members[0]
    message = sign_member(model_set, member, key)
    with psycopg.connect(ml_dsn, autocommit=True) as conn:
        stored, added = register(conn, message, train_rows=member.train_rows)
        assert added and stored == message
        # Re-signed later (another created_at): the same model, so the stored one comes back.
        later = replace(model_set, created_at=model_set.created_at.replace(year=2030))
        stored2, added2 = register(conn, sign_member(later, member, key))
        assert not added2 and stored2 == message
        changed = replace(member, threshold=member.threshold + 0.01)
        with pytest.raises(VersionConflict):
            register(conn, sign_member(model_set, changed, key))
        assert conn.execute("select count(*) from ml.models").fetchone() == (1,)


def copy_fleet(dsn: str, cfg: FleetConfig) -> MeterData:
    """The simulated fleet's registry and readings into ``raw`` (as ingest would store them)."""
    from simulator import Fleet, flag_names
    from simulator.registry_db import upsert_registry

    upsert_registry(Fleet(cfg).registry(), dsn)
    sim = from_fleet(cfg)
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        with cur.copy(
            "copy raw.readings (meter_id, ts, interval_s, kwh, register_kwh, supply, flags,"
            " gateway_id, batch_id) from stdin"
        ) as copy:
            for t, ts in enumerate(sim.ts.tolist()):
                when = datetime.fromtimestamp(ts, UTC)
                for m, meter_id in enumerate(sim.meter_ids.tolist()):
                    if not sim.present[t, m]:
                        continue
                    copy.write_row(
                        (
                            meter_id,
                            when,
                            sim.interval_s,
                            float(sim.kwh[t, m]),
                            float(sim.register_kwh[t, m]),
                            "on" if sim.supply_on[t, m] else "off",
                            flag_names(int(sim.flags[t, m])),
                            "gw-01",
                            "b1",
                        )
                    )
    return sim


def test_train_on_postgres_readings(ml_dsn: str) -> None:
    """`train --source postgres`: raw.readings + raw.meters onto the grid, unlabelled training;
    the meters' load shapes (a bursty fleet: intermittent) pick the forests."""
    from ml.dataset import from_postgres

    cfg = FleetConfig.for_style("bursty", meters=40, days=9, seed=6)
    sim = copy_fleet(ml_dsn, cfg)
    end = datetime.fromtimestamp(int(sim.ts[-1]), UTC)
    start = datetime.fromtimestamp(int(sim.ts[0]) - sim.interval_s + 7 * 86400, UTC)
    data = from_postgres(ml_dsn, start, end)
    order = np.argsort(sim.meter_ids)
    assert np.array_equal(data.meter_ids, sim.meter_ids[order])
    assert np.array_equal(data.ts, sim.ts) and data.present.all()
    assert np.allclose(data.kwh, sim.kwh[:, order])
    assert np.array_equal(data.flags != 0, sim.flags[:, order] != 0)
    assert np.array_equal(data.customer_class, sim.customer_class[order])
    assert np.array_equal(data.role, sim.role[order])
    assert np.array_equal(data.load_shapes, sim.load_shapes[order])
    assert set(data.load_shapes[data.customers]) == {"intermittent"}
    assert data.label_code is None

    trained = train_model_set(data, reading_features(data), warmup_days=7, max_rows=20_000)
    assert trained.variant == "global" and not trained.validation  # no labels: no comparison
    assert "quantile" in trained.members[0].threshold_method
    assert [m.name for m in trained.members] == ["iforest", "iforest.intermittent"]


def test_central_features_keep_each_meters_long_memory_from_older_readings(ml_dsn: str) -> None:
    """Central reads a window and its week of feature history, yet compares each meter with
    its months, as its gateway does: the long memory folded in the database from the older
    readings gives the window the same `mean_24h_vs_usual` as reading everything."""
    from ml.dataset import from_postgres

    cfg = FleetConfig(meters=12, days=30, seed=8)
    sim = copy_fleet(ml_dsn, cfg)
    with psycopg.connect(ml_dsn, autocommit=True) as conn:
        # One zone, so that the window's history starts at every meter's local midnight.
        conn.execute("update raw.meters set timezone = 'UTC'")
    first = int(sim.ts[0]) - sim.interval_s
    assert first % 86400 == 0
    end = datetime.fromtimestamp(int(sim.ts[-1]), UTC)
    start = end - timedelta(days=10)
    everything = from_postgres(ml_dsn, datetime.fromtimestamp(first + 7 * 86400, UTC), end)
    assert everything.source["meters_with_long_memory"] == 0  # nothing before its history
    window = from_postgres(ml_dsn, start, end)
    assert window.source["meters_with_long_memory"] == window.n_meters
    short = from_postgres(ml_dsn, start, end, long_memory_days=0)
    assert not short.profiles

    col = FEATURE_NAMES.index("mean_24h_vs_usual")
    rows = slice(window.window_start(7.0), None)  # the window (its week of history before)
    assert window.ts[rows][0] == int(start.timestamp()) + sim.interval_s
    whole = reading_features(everything)[-window.n_intervals :][rows, :, col]
    assert np.array_equal(window.meter_ids, everything.meter_ids)
    np.testing.assert_allclose(reading_features(window)[rows, :, col], whole, atol=1e-5)
    assert not np.allclose(reading_features(short)[rows, :, col], whole, atol=1e-3)


def test_the_databases_long_memory_is_the_gateways_across_a_clock_change(ml_dsn: str) -> None:
    """`long_memory_profiles` folds in SQL what `fold` folds on a gateway, hour by hour, for
    meters whose clock moves to summer time in the middle of the days folded."""
    from ml.dataset import from_postgres, long_memory, long_memory_profiles

    sim = copy_fleet(ml_dsn, FleetConfig(meters=8, days=30, seed=9))
    with psycopg.connect(ml_dsn, autocommit=True) as conn:
        conn.execute("update raw.meters set timezone = 'Europe/Berlin'")  # CET to CEST 03-29
    first = datetime.fromtimestamp(int(sim.ts[0]) - sim.interval_s, UTC)
    before = datetime(2026, 3, 30, 22, tzinfo=UTC)  # local midnight, summer time
    assert first < datetime(2026, 3, 29, 1, tzinfo=UTC) < before
    # Up to the first reading of the next local day: fold closes every day before it.
    data = from_postgres(
        ml_dsn, first, before + timedelta(seconds=sim.interval_s), with_history=False
    )
    gateway = long_memory(data).profiles  # as edge_agent.long_memory.fold on a gateway
    with psycopg.connect(ml_dsn) as conn:
        central = long_memory_profiles(conn, data, before.timestamp(), 180)
    assert len(central) == data.n_meters == len(gateway)
    for i, meter_id in enumerate(data.meter_ids.tolist()):
        g, c = gateway[i], central[meter_id]
        assert c.through_day == g.through_day == (before.date() - date(1970, 1, 1)).days
        for name in ("sums", "weights"):
            np.testing.assert_allclose(
                np.frombuffer(getattr(c, name), "<f8"),
                np.frombuffer(getattr(g, name), "<f8"),
                rtol=1e-9,
                err_msg=f"{meter_id} {name}",
            )


def test_rank_customers_from_postgres_with_the_registered_model_set(
    ml_dsn: str, model_set: ModelSet, keys: tuple[Path, str]
) -> None:
    """`python -m ml rank`: the newest registered model set (global + a class member) rebuilt
    from ml.models, every customer of the window ranked and stored; thieves come first."""
    from ml.ranking import model_set_from_registry, run
    from simulator import THEFT_LABELS

    key = load_private_key(keys[0])
    with psycopg.connect(ml_dsn, autocommit=True) as conn:
        glob = model_set.members[0]
        klass = replace(glob, name="iforest.solar_home_payg", customer_class="solar_home_payg")
        shape = replace(klass, name="iforest.solar_home_payg.intermittent")
        every = replace(glob, name="iforest.intermittent")
        published = (glob, klass, shape, every)
        for member in published:
            register(
                conn, sign_member(model_set, member, key), customer_class=member.customer_class
            )
        assert model_set_from_registry(conn, "iforest") is None  # registered, not published
        for member in published:
            mark_published(conn, member.name, model_set.version, f"t/models/{member.name}")
        rebuilt = model_set_from_registry(conn, "iforest")
    assert rebuilt is not None and rebuilt.version == model_set.version
    # Each member's class and load shape are read back from its name.
    assert {(m.name, m.customer_class, m.load_shape) for m in rebuilt.members} == {
        ("iforest", "", "continuous"),
        ("iforest.intermittent", "", "intermittent"),
        ("iforest.solar_home_payg", "solar_home_payg", "continuous"),
        ("iforest.solar_home_payg.intermittent", "solar_home_payg", "intermittent"),
    }
    assert rebuilt.member_for("solar_home_payg", "intermittent").name == shape.name
    assert rebuilt.member_for("residential_urban", "intermittent").name == every.name
    assert rebuilt.member_for("solar_home_payg").name == klass.name

    sim = copy_fleet(ml_dsn, FleetConfig(meters=300, days=21, seed=8, theft_share=0.15))
    with psycopg.connect(ml_dsn) as conn:  # readings of a meter the registry does not know
        conn.execute(
            "insert into raw.readings (meter_id, ts, interval_s, kwh, supply, gateway_id,"
            " batch_id) select 'unknown-1', ts, interval_s, kwh * 50, supply, gateway_id,"
            " batch_id from raw.readings where meter_id = %s",
            (str(sim.meter_ids[0]),),
        )
    run_id, ranking = run(ml_dsn, days=14)
    assert ranking.model == ("iforest", model_set.version)
    assert ranking.members == [m.name for m in sorted(published, key=lambda m: m.name)]
    assert ranking.unregistered == 1 and "unknown-1" not in ranking.meter_ids
    customers = int(sim.customers.sum())
    assert len(ranking.meter_ids) == customers
    assert list(ranking.scores) == sorted(ranking.scores, reverse=True)

    # Truth: customers with theft-labelled readings inside the 14-day window.
    assert sim.label_code is not None
    codes = [sim.label_names.index(n) for n in THEFT_LABELS]
    window = sim.ts > sim.ts[-1] - 14 * 86400
    thieves = set(sim.meter_ids[np.isin(sim.label_code[window], codes).any(axis=0)].tolist())
    thieves &= set(sim.meter_ids[sim.customers].tolist())
    k = 10
    hits = len(thieves & set(ranking.meter_ids[:k]))
    base_rate = len(thieves) / customers
    print(f"top-{k}: {hits} thieves; {len(thieves)} of {customers} customers steal")
    assert hits / k >= max(0.6, 3 * base_rate), (hits, len(thieves), customers)
    assert all(ranking.reasons[i] for i in range(k)), "the top of the list says why"

    with psycopg.connect(ml_dsn) as conn:
        listed = conn.execute(
            "select run_id, count(*), min(rank), max(rank), count(distinct meter_id)"
            " from ml.inspection_list group by run_id"
        ).fetchall()
        top = conn.execute(
            "select meter_id, reasons from ml.inspection_list order by rank limit 1"
        ).fetchone()
    assert listed == [(run_id, customers, 1, customers, customers)]
    assert top is not None and top[0] == ranking.meter_ids[0] and top[1][0]["signal"]


def test_load_shapes_are_proposed_from_the_database_and_nothing_is_written(
    ml_dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`python -m ml load-shapes`: the database's decision is ``ml.load_shape.decide``'s on the
    same readings; a pinned shape the readings disagree with is for review, not changed."""
    from ml.cli import main
    from ml.load_shape import decide, near_zero_share

    cfg = FleetConfig.for_style("bursty", meters=30, days=12, seed=7, theft_share=0.0)
    sim = copy_fleet(ml_dsn, cfg)  # its registry pins every customer intermittent
    customers = sim.meter_ids[sim.customers].tolist()
    a, b = customers[:2]
    with psycopg.connect(ml_dsn, autocommit=True) as conn:
        conn.execute("update raw.meters set load_shape = null where meter_id <> all(%s)", ([a, b],))
        conn.execute("update raw.meters set load_shape = 'continuous' where meter_id = %s", (a,))
        before = conn.execute("select * from raw.meters order by meter_id").fetchall()
    out = tmp_path / "proposals.json"
    assert main(["load-shapes", "--dsn", ml_dsn, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    rows = {r["meter_id"]: r for r in json.loads(out.read_text())}
    assert sorted(rows) == sorted(customers)  # customers only, transformers left out

    share = near_zero_share(sim.kwh, sim.valid)
    decided = decide(sim.kwh, sim.valid, sim.intervals_per_day)
    for j, meter in enumerate(sim.meter_ids.tolist()):
        if meter in rows:
            assert rows[meter]["near_zero_share"] == pytest.approx(share[j], abs=1e-4)
            assert rows[meter]["decided"] == decided[j]
    assert rows[a]["decided"] == "intermittent" and rows[a]["action"] == "review"
    assert rows[b]["action"] == "keep"
    assert {rows[m]["action"] for m in customers[2:]} == {"set"}
    assert f"review  {a}" in printed and f"set     {customers[2]}" in printed
    with psycopg.connect(ml_dsn) as conn:
        assert conn.execute("select * from raw.meters order by meter_id").fetchall() == before
