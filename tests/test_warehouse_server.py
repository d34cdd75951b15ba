"""The owner server: unmodified clickhouse-connect against the embedded engine over HTTP."""

from __future__ import annotations

import http.client
import statistics
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError

from central.warehouse.client import connect, resolve_dsn, spawn_owner, stop_owner


@pytest.fixture(scope="module")
def owner(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    path = tmp_path_factory.mktemp("owner") / "warehouse"
    proc, url = spawn_owner(path)
    try:
        yield path, url
    finally:
        stop_owner(proc)
    assert proc.returncode == 0, "the owner stops cleanly on SIGTERM"
    assert not (path / "eiot-owner.json").exists()


@pytest.fixture
def clients() -> Iterator[Callable[..., Client]]:
    """Open clients through this factory: they are closed (sockets and all) after the test."""
    opened: list[Client] = []

    def open_client(dsn: str, **kwargs: object) -> Client:
        opened.append(connect(dsn, **kwargs))
        return opened[-1]

    yield open_client
    for client in opened:
        client.close()


@pytest.mark.parametrize("compress", [True, False])
def test_clickhouse_connect_round_trip(
    owner: tuple[Path, str], compress: bool, clients: Callable[..., Client]
) -> None:
    _, url = owner
    client = clients(url, compress=compress)
    table = f"default.rt_{int(compress)}"
    client.command(f"drop table if exists {table}")
    client.command(
        f"create table {table} (id String, ts DateTime64(3, 'UTC'), v Float64, "
        "tags Array(LowCardinality(String)), note Nullable(String)) "
        "engine = ReplacingMergeTree order by (id, ts)"
    )
    ts = datetime(2026, 3, 1, 18, 30, tzinfo=UTC)
    columns = ["id", "ts", "v", "tags", "note"]
    client.insert(table, [["a", ts, 1.5, ["x"], None]], column_names=columns)
    client.insert_df(
        table,
        pd.DataFrame(
            {
                "id": ["b"] * 3,
                "ts": pd.date_range("2026-03-02", periods=3, freq="30min", tz="UTC"),
                "v": [1.0, 2.0, 3.0],
                "tags": [[], ["y"], ["y", "z"]],
                "note": ["n", None, "tab\there"],
            }
        ),
    )
    client.insert_arrow(
        table,
        pa.table(
            {
                "id": ["c", "c"],
                "ts": pa.array([0, 1800_000], pa.timestamp("ms", "UTC")),
                "v": [10.0, 20.0],
                "tags": [["q"], []],
                "note": [None, "x"],
            }
        ),
    )
    assert client.command(f"select count() from {table}") == 6
    assert client.query(f"select sum(v) from {table}").result_rows == [(37.5,)]
    rows = client.query(
        f"select id, ts, tags, note from {table} where id = {{id:String}} order by ts",
        parameters={"id": "b"},
    ).result_rows
    assert [r[2] for r in rows] == [[], ["y"], ["y", "z"]]
    assert rows[2][3] == "tab\there"
    assert rows[0][1].replace(tzinfo=UTC) == datetime(2026, 3, 2, tzinfo=UTC)
    df = client.query_df(f"select id, count() as n from {table} group by id order by id")
    assert df["n"].tolist() == [1, 3, 2]
    arrow = client.query_arrow(f"select * from {table} where v > %(v)s", parameters={"v": 5})
    assert arrow.num_rows == 2
    assert client.query(f"select * from {table} limit 0").column_names == (
        "id",
        "ts",
        "v",
        "tags",
        "note",
    )


def test_errors_sessions_and_settings(
    owner: tuple[Path, str], clients: Callable[..., Client]
) -> None:
    _, url = owner
    client = clients(url)
    with pytest.raises(DatabaseError) as err:
        client.query("select * from default.no_such_table")
    assert "UNKNOWN_TABLE" in str(err.value)
    assert client.command("select 1") == 1, "a failed query leaves the session usable"
    # The client's session keeps temporary tables; another client does not see them.
    client.command("create temporary table tmp_session (x Int32)")
    client.command("insert into tmp_session values (1), (2), (3)")
    assert client.command("select sum(x) from tmp_session") == 6
    other = clients(url)
    with pytest.raises(DatabaseError):
        other.command("select count() from tmp_session")
    # Per-query settings apply to that query only.
    sql = "select value from system.settings where name = 'max_threads'"
    assert client.query(sql, settings={"max_threads": 1}).result_rows == [("1",)]
    assert client.query(sql).result_rows != [("1",)]
    assert client.command("select timezone()") == "UTC"


def test_plain_http_interface(owner: tuple[Path, str]) -> None:
    _, url = owner
    with urllib.request.urlopen(f"{url}/ping", timeout=10) as response:
        assert response.read() == b"Ok.\n"
    request = urllib.request.Request(
        url + "/?default_format=JSONEachRow", data=b"select 40 + 2 as x"
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.read() == b'{"x":42}\n'
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(urllib.request.Request(url, data=b"selec 1"), timeout=10)
    assert err.value.code == 500
    assert err.value.headers["X-ClickHouse-Exception-Code"] == "62"
    err.value.close()


def test_a_kept_alive_connection_is_not_held_up_by_delayed_acks(owner: tuple[Path, str]) -> None:
    """Clients (clickhouse-connect, so dbt and Superset) keep connections alive. An answer leaves
    in two writes, headers then body; with Nagle's algorithm on, the body waits for the
    client's delayed ACK of the headers, at least 40 ms on Linux, on every answer after the
    first. A small query answers in a few milliseconds."""
    _, url = owner
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    seconds = []
    sockets: set[int] = set()
    try:
        for _ in range(12):
            started = time.perf_counter()
            conn.request("POST", "/", body=b"select 1")
            response = conn.getresponse()
            assert response.read() == b"1\n"
            seconds.append(time.perf_counter() - started)
            sockets.add(conn.sock.getsockname()[1])  # a reconnection has another port
    finally:
        conn.close()
    assert len(sockets) == 1, "the connection was not kept alive"
    assert statistics.median(seconds[1:]) < 0.025, seconds


def test_concurrent_clients(owner: tuple[Path, str]) -> None:
    _, url = owner
    results: list[int] = []
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            client = connect(url)
            try:
                results.append(int(client.command(f"select sum(number) from numbers({10**6 + i})")))
            finally:
                client.close()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert sorted(results) == sorted((10**6 + i) * (10**6 + i - 1) // 2 for i in range(4))


def test_embedded_dsn_goes_through_the_owner(
    owner: tuple[Path, str], clients: Callable[..., Client]
) -> None:
    path, url = owner
    assert resolve_dsn(f"chdb://{path}") == url
    client = clients(f"chdb://{path}")
    assert client.command("select 1") == 1


def test_a_configuration_file_the_engine_would_not_read_is_refused(tmp_path: Path) -> None:
    from central.warehouse.server import Engine

    # chDB itself says nothing about a file it cannot find or a path its connection string
    # mangles (& ends the option, % is decoded): the engine would start without the config
    with pytest.raises(FileNotFoundError):
        Engine(tmp_path / "engine", config_file=tmp_path / "missing.xml")
    odd = tmp_path / "a&b.xml"
    odd.write_text("<clickhouse/>")
    with pytest.raises(ValueError, match="without &"):
        Engine(tmp_path / "engine", config_file=odd)
