"""Publishing checked marts (central/warehouse/publish.py) on a real embedded ClickHouse: the
served tables are replaced only once every copy is complete, the build database keeps its state,
and what cannot be published changes nothing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from clickhouse_connect.driver.client import Client

from central.warehouse.client import connect
from central.warehouse.publish import PublishError, publish_marts
from central.warehouse.settings import get_settings


@pytest.fixture
def ch(tmp_path: Path) -> Iterator[Client]:
    client = connect(f"chdb://{tmp_path / 'warehouse'}")
    for db in ("build", "served"):
        client.command(f"create database {db}")
    yield client
    client.close()


def rows(client: Client, table: str) -> list[tuple[object, ...]]:
    return list(client.query(f"select * from {table} order by 1").result_rows)


def tables(client: Client, db: str) -> list[str]:
    return [
        str(n)
        for (n,) in client.query(
            "select name from system.tables where database = {db:String} order by name",
            parameters={"db": db},
        ).result_rows
    ]


def test_publish_replaces_the_served_tables_and_keeps_the_build(ch: Client) -> None:
    ch.command("create table build.mart_a (k UInt32, v Float64) engine = MergeTree order by k")
    ch.command("insert into build.mart_a values (1, 1.5), (2, 2.5)")
    ch.command("create table build.mart_b (k UInt32) engine = ReplacingMergeTree order by k")
    ch.command("insert into build.mart_b values (7)")
    ch.command("create table served.mart_a (k UInt32, v Float64) engine = MergeTree order by k")
    ch.command("insert into served.mart_a values (9, 9.0)")
    ch.command("create table served.mart_old (k UInt32) engine = MergeTree order by k")

    assert publish_marts(ch, "build", "served") == {"mart_a": 2, "mart_b": 1}
    assert rows(ch, "served.mart_a") == [(1, 1.5), (2, 2.5)]
    assert rows(ch, "served.mart_b") == [(7,)]
    # nothing staged is left behind; a table the build no longer makes is left alone
    assert tables(ch, "served") == ["mart_a", "mart_b", "mart_old"]
    # the build database keeps its rows (incremental models continue from them)
    assert rows(ch, "build.mart_a") == [(1, 1.5), (2, 2.5)]
    engine = ch.query("select engine from system.tables where database='served' and name='mart_b'")
    assert engine.result_rows == [("ReplacingMergeTree",)]

    ch.command("insert into build.mart_a values (3, 3.5)")  # the next refresh
    assert publish_marts(ch, "build", "served")["mart_a"] == 3
    assert tables(ch, "served") == ["mart_a", "mart_b", "mart_old"]


def test_what_cannot_be_published_changes_nothing(ch: Client) -> None:
    ch.command("create table served.mart_a (k UInt32) engine = MergeTree order by k")
    ch.command("insert into served.mart_a values (1)")
    with pytest.raises(PublishError, match="no tables"):
        publish_marts(ch, "build", "served")
    ch.command("create table build.mart_a (k UInt32) engine = MergeTree order by k")
    ch.command("create view build.mart_v as select 1 as k")
    with pytest.raises(PublishError, match="views"):
        publish_marts(ch, "build", "served")
    with pytest.raises(PublishError, match="same database"):
        publish_marts(ch, "served", "served")
    with pytest.raises(PublishError, match="plain ClickHouse name"):
        publish_marts(ch, "build", "served`; drop database served; --")
    assert rows(ch, "served.mart_a") == [(1,)]
    assert tables(ch, "served") == ["mart_a"]


def test_a_copy_that_fails_leaves_every_served_table_as_it_was(ch: Client) -> None:
    ch.command("create table build.mart_a (k UInt32) engine = MergeTree order by k")
    ch.command("insert into build.mart_a values (2)")
    # mart_b's copy is refused by the server (a row that breaks a constraint of its table)
    ch.command(
        "create table build.mart_b (k UInt32, constraint small check k < 10) "
        "engine = MergeTree order by k"
    )
    ch.command("insert into build.mart_b settings optimize_on_insert = 0 select 5")
    ch.command("alter table build.mart_b drop constraint small")
    ch.command("alter table build.mart_b add constraint tiny check k < 3")
    ch.command("create table served.mart_a (k UInt32) engine = MergeTree order by k")
    ch.command("insert into served.mart_a values (1)")
    with pytest.raises(Exception, match="(?i)constraint"):
        publish_marts(ch, "build", "served")
    assert rows(ch, "served.mart_a") == [(1,)], "mart_a was swapped before every copy was done"


def test_the_build_and_served_marts_are_two_databases() -> None:
    with pytest.raises(ValueError, match="must differ"):
        get_settings(marts_schema="marts", marts_build_schema="marts")
    with pytest.raises(ValueError):
        get_settings(marts_build_schema="marts; drop")
