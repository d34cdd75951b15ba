"""Publish marts built and checked in one database to the database readers use.

The orchestrated refresh builds the marts into ``marts_build_schema``, runs the quality gate on
them there, and only when it passes calls :func:`publish_marts`: every table is first copied
next to its served twin (``__next_<name>``), and only once every copy is complete is each one
swapped in with ``EXCHANGE TABLES`` (atomic per table). A failure while copying leaves the
served marts untouched; a failed gate never gets here, so readers keep the last good marts.
The build database is left as it is: incremental models keep their state there.
"""

from __future__ import annotations

import logging
import re

from clickhouse_connect.driver.client import Client

log = logging.getLogger(__name__)

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,200}$")
NEXT_PREFIX = "__next_"


class PublishError(RuntimeError):
    """The build database cannot be published (nothing was changed in the served one)."""


def _ident(name: str) -> str:
    if not _NAME.match(name):
        raise PublishError(f"not a plain ClickHouse name: {name!r}")
    return f"`{name}`"


def built_tables(client: Client, schema: str) -> list[str]:
    """The tables of ``schema``; a view there is refused (a copy would not be a snapshot)."""
    rows = client.query(
        "select name, engine from system.tables where database = {db:String} "
        "and not is_temporary order by name",
        parameters={"db": schema},
    ).result_rows
    views = [str(name) for name, engine in rows if "View" in str(engine)]
    if views:
        raise PublishError(f"{schema} holds views, which cannot be published: {views}")
    return [str(name) for name, _ in rows if not str(name).startswith(NEXT_PREFIX)]


def publish_marts(client: Client, source: str, target: str) -> dict[str, int]:
    """Copy every table of ``source`` into ``target``, then swap the copies in. Returns the rows
    of each published table."""
    if source == target:
        raise PublishError("source and target are the same database")
    src, dst = _ident(source), _ident(target)
    tables = built_tables(client, source)
    if not tables:
        raise PublishError(f"{source} holds no tables: nothing to publish")
    client.command(f"create database if not exists {dst}")
    rows: dict[str, int] = {}
    for name in tables:
        table, staged = _ident(name), _ident(NEXT_PREFIX + name)
        client.command(f"drop table if exists {dst}.{staged}")
        client.command(f"create table {dst}.{staged} as {src}.{table}")
        client.command(f"insert into {dst}.{staged} select * from {src}.{table}")
        rows[name] = int(client.query(f"select count() from {dst}.{staged}").result_rows[0][0])
    served = {
        str(n)
        for (n,) in client.query(
            "select name from system.tables where database = {db:String}",
            parameters={"db": target},
        ).result_rows
    }
    for name in tables:
        table, staged = _ident(name), _ident(NEXT_PREFIX + name)
        if name in served:
            client.command(f"exchange tables {dst}.{staged} and {dst}.{table}")
            client.command(f"drop table {dst}.{staged}")
        else:
            client.command(f"rename table {dst}.{staged} to {dst}.{table}")
        log.info("published %s.%s (%d rows)", target, name, rows[name])
    return rows
