"""``central registry``: load shapes pinned in raw.meters; a gateway's registry file from it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from central import roles
from central.cli import main
from central.meter_registry import MAX_PROPOSALS_BYTES
from edge_agent.energy import GridMap
from edge_agent.registry import REGISTRY_KEYS, load_meters, meter_model_keys, meter_zones
from ml.load_shape import Proposal
from simulator.raw_db import scratch_database
from simulator.registry import METER_KEYS, Registry
from simulator.registry_db import upsert_registry
from tests.support.detection import gateway
from tests.support.logins import logins

pytestmark = pytest.mark.services  # real PostgreSQL

METERS = [  # meter_id, meter_role, transformer_id, customer_class, load_shape, timezone, gateway
    ("T1", "transformer", "TX1", None, None, None, "GW1"),
    ("c1", "customer", "TX1", "residential", "intermittent", None, "GW1"),
    ("c2", "customer", "TX1", "residential", None, "Africa/Nairobi", "GW1"),
    ("c3", "customer", "TX1", "commercial", "continuous", None, "GW1"),
    ("o1", "customer", "TX9", "residential", "intermittent", None, "GW2"),
]


ROW = Proposal("c2", None, "intermittent", 0.41, 60.0).as_row()


@pytest.fixture
def dsn() -> Iterator[str]:
    with scratch_database("reg_test") as dsn, psycopg.connect(dsn, autocommit=True) as pg:
        pg.execute(
            "insert into raw.grid_assets (asset_id, asset_type) "
            "values ('TX1', 'transformer'), ('TX9', 'transformer')"
        )
        for row in METERS:
            pg.execute(
                "insert into raw.meters (meter_id, meter_role, transformer_id, customer_class,"
                " load_shape, timezone, gateway_id) values (%s, %s, %s, %s, %s, %s, %s)",
                row,
            )
        yield dsn


def export(dsn: str, gateway_id: str, out: Path) -> int:
    return main(["registry", "export", "--gateway", gateway_id, "--out", str(out), "--dsn", dsn])


def test_the_export_is_the_gateways_registry_as_the_agent_reads_it(
    dsn: str, tmp_path: Path
) -> None:
    out = tmp_path / "etc" / "registry.json"
    assert export(dsn, "GW1", out) == 0
    meters = load_meters(out)
    assert [m["meter_id"] for m in meters] == ["T1", "c1", "c2", "c3"]  # not GW2's meter
    assert all(tuple(m) == REGISTRY_KEYS for m in meters)
    assert meter_model_keys(meters) == {
        "c1": ("residential.intermittent", "intermittent", "residential"),
        "c2": ("residential",),
        "c3": ("commercial",),
    }
    assert meter_zones(meters) == {"c2": "Africa/Nairobi"}
    grid = GridMap.from_meters(meters)
    assert grid.transformer_meter == {"TX1": "T1"}
    assert grid.customers == {"TX1": ("c1", "c2", "c3")}
    # An agent started on it subscribes to the shape and class models its meters use.
    intake = gateway(tmp_path / "b.db", meters=meters)
    assert intake.models.names == {
        "iforest",
        "iforest.residential",
        "iforest.residential.intermittent",
        "iforest.intermittent",
        "iforest.commercial",
    }
    intake.close()


def test_a_shape_pinned_centrally_reaches_the_next_export(dsn: str, tmp_path: Path) -> None:
    out = tmp_path / "registry.json"
    assert export(dsn, "GW1", out) == 0
    with psycopg.connect(dsn, autocommit=True) as pg:
        pg.execute("update raw.meters set load_shape = 'intermittent' where meter_id = 'c2'")
    assert export(dsn, "GW1", out) == 0
    shapes = {m["meter_id"]: m["load_shape"] for m in load_meters(out)}
    assert shapes == {"T1": None, "c1": "intermittent", "c2": "intermittent", "c3": "continuous"}
    assert not [p for p in tmp_path.iterdir() if p.name != "registry.json"]  # no temporary left


@pytest.mark.parametrize(
    ("gateway_id", "change", "error"),
    [
        ("GW7", None, "no meter of gateway 'GW7'"),
        ("gw/#", None, "not a gateway id"),
        ("GW1", "customer_class = 'intermittent'", "names a load shape"),
        ("GW1", "timezone = 'Africa/Atlantis'", "unknown time zone"),
    ],
)
def test_a_registry_the_agent_would_refuse_is_not_written(
    dsn: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    gateway_id: str,
    change: str | None,
    error: str,
) -> None:
    out = tmp_path / "registry.json"
    out.write_text('{"meters": []}\n')  # the file in place stays as it was
    if change is not None:
        with psycopg.connect(dsn, autocommit=True) as pg:
            pg.execute(f"update raw.meters set {change} where meter_id = 'c3'")
    assert export(dsn, gateway_id, out) == 1
    assert error in capsys.readouterr().err
    assert json.loads(out.read_text()) == {"meters": []}


def pin(dsn: str, proposals: Path, *extra: str) -> int:
    return main(["registry", "pin-shapes", str(proposals), "--dsn", dsn, *extra])


def shapes_and_stamps(dsn: str) -> dict[str, tuple[str | None, Any]]:
    with psycopg.connect(dsn) as pg:
        rows = pg.execute("select meter_id, load_shape, updated_at from raw.meters").fetchall()
    return {m: (shape, at) for m, shape, at in rows}


def test_the_proposed_shapes_of_unpinned_meters_are_pinned_and_nothing_else(
    dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    proposals = [  # as `python -m ml load-shapes --out` writes them
        Proposal("c2", None, "intermittent", 0.41, 60.0),  # set
        Proposal("c3", None, "intermittent", 0.35, 60.0),  # set, but c3 was pinned meanwhile
        Proposal("nobody", None, "continuous", 0.01, 60.0),  # set, not registered
        Proposal("T1", None, "continuous", 0.0, 60.0),  # set, but a transformer meter
        Proposal("c1", "intermittent", "continuous", 0.02, 60.0),  # review
        Proposal("o1", "intermittent", "intermittent", 0.6, 60.0),  # keep
        Proposal("c9", None, "continuous", 0.0, 2.0),  # wait
    ]
    actions = [p.action for p in proposals]
    assert actions == ["set", "set", "set", "set", "review", "keep", "wait"]
    path = tmp_path / "proposals.json"
    path.write_text(json.dumps([p.as_row() for p in proposals]))
    before = shapes_and_stamps(dsn)

    assert pin(dsn, path, "--dry-run") == 0
    assert "would pin c2 intermittent" in capsys.readouterr().out
    assert shapes_and_stamps(dsn) == before

    assert pin(dsn, path) == 0
    out = capsys.readouterr().out
    after = shapes_and_stamps(dsn)
    assert after["c2"][0] == "intermittent" and after["c2"][1] > before["c2"][1]
    assert {m: v for m, v in after.items() if m != "c2"} == {
        m: v for m, v in before.items() if m != "c2"
    }
    assert "not pinned c3: continuous is pinned already" in out
    assert "not pinned nobody: not registered" in out
    assert "not pinned T1: a transformer meter" in out
    assert "review c1: pinned intermittent, its readings say continuous" in out
    assert "c9" not in out
    # The next export carries the new pin to the gateway.
    registry = tmp_path / "registry.json"
    assert export(dsn, "GW1", registry) == 0
    assert {m["meter_id"]: m["load_shape"] for m in load_meters(registry)}["c2"] == "intermittent"


@pytest.mark.parametrize(
    ("content", "error"),
    [
        (b"{not json", "Invalid JSON"),
        (b'{"meter_id": "c2"}', "first at top"),
        (json.dumps([{**ROW, "decided": "Intermittent"}]).encode(), "first at 0.decided"),
        (json.dumps([{**ROW, "meter_id": "c2/../x"}]).encode(), "first at 0.meter_id"),
        (json.dumps([{**ROW, "meter_id": "m" * 100}]).encode(), "first at 0.meter_id"),
        (json.dumps([ROW, {**ROW, "action": "drop table"}]).encode(), "first at 1.action"),
        (json.dumps([{**ROW, "pinned": "continuous"}]).encode(), "does not fit pinned"),
        (json.dumps([{**ROW, "action": "keep"}]).encode(), "does not fit pinned"),
        (
            json.dumps([ROW, {**ROW, "decided": "continuous"}]).encode(),
            "meter 'c2' proposed twice",
        ),
    ],
)
def test_a_bad_proposals_file_changes_nothing_and_says_why(
    dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes, error: str
) -> None:
    path = tmp_path / "proposals.json"
    path.write_bytes(content)
    before = shapes_and_stamps(dsn)
    assert pin(dsn, path) == 1
    assert error in capsys.readouterr().err
    assert shapes_and_stamps(dsn) == before


def test_a_dry_run_only_reads_and_the_ml_role_cannot_pin(
    dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The role that proposes (ml) may see what would be pinned, never pin: only the registry's
    owner writes raw.meters."""
    path = tmp_path / "proposals.json"
    path.write_text(json.dumps([ROW]))
    before = shapes_and_stamps(dsn)
    with logins(dsn) as login:
        ml = login(roles.ML)
        assert pin(ml, path, "--dry-run") == 0
        assert "would pin c2 intermittent" in capsys.readouterr().out
        assert pin(ml, path) == 1
        assert "permission denied" in capsys.readouterr().err
        assert shapes_and_stamps(dsn) == before
        # Any role that reads raw.meters may export; the dashboard's may not.
        assert export(ml, "GW1", tmp_path / "registry.json") == 0
        assert export(login(roles.DASHBOARD), "GW1", tmp_path / "other.json") == 1
        assert "permission denied" in capsys.readouterr().err
        assert not (tmp_path / "other.json").exists()


def test_an_unwritable_registry_path_or_an_unreachable_database_is_a_clear_error(
    dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "a-file").write_text("")
    for out in (tmp_path, tmp_path / "a-file" / "registry.json"):
        assert export(dsn, "GW1", out) == 1
        assert capsys.readouterr().err.startswith("registry export: ")
    assert not tmp_path.with_name(tmp_path.name + ".tmp").exists()  # its temporary is removed
    unreachable = "postgresql://nobody@127.0.0.1:1/none?connect_timeout=2"
    assert export(unreachable, "GW1", tmp_path / "registry.json") == 1
    assert capsys.readouterr().err.startswith("registry export: ")
    assert not (tmp_path / "registry.json").exists()


def test_an_oversized_proposals_file_is_refused_unread(
    dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "proposals.json"
    with path.open("wb") as f:
        f.truncate(MAX_PROPOSALS_BYTES + 1)  # sparse: costs no disk
    assert pin(dsn, path) == 1
    assert "more than" in capsys.readouterr().err
    # A device has no size to check first: it is read up to the limit, no further.
    assert pin(dsn, Path("/dev/zero")) == 1
    assert "more than" in capsys.readouterr().err


def test_an_agent_is_told_when_its_registry_names_another_gateway(
    dsn: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "registry.json"
    assert export(dsn, "GW1", out) == 0
    with caplog.at_level("WARNING", logger="edge_agent.registry"):
        assert load_meters(out, "GW1") == load_meters(out, "GW2")
    assert caplog.text.count("is the registry of gateway 'GW1', this is 'GW2'") == 1


def test_the_simulators_registry_upsert_keeps_a_shape_pinned_centrally(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as pg:
        pg.execute("update raw.meters set load_shape = 'intermittent' where meter_id = 'c2'")
    row = {k: None for k in METER_KEYS}
    meters = [
        {**row, "meter_id": "c2", "meter_role": "customer", "gateway_id": "GW1"},
        {**row, "meter_id": "c3", "meter_role": "customer", "load_shape": "intermittent"},
        {**row, "meter_id": "n1", "meter_role": "customer", "load_shape": "continuous"},
    ]
    upsert_registry(Registry(meters=meters, assets=[]), dsn)
    with psycopg.connect(dsn) as pg:
        shapes = dict(pg.execute("select meter_id, load_shape from raw.meters").fetchall())
    # c2's pin stays; c3 keeps the shape it had, n1 (new) gets the simulator's.
    assert (shapes["c2"], shapes["c3"], shapes["n1"]) == (
        "intermittent",
        "continuous",
        "continuous",
    )
