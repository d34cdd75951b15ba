"""Shared fixtures: a fresh database on the real PostgreSQL, a topic root per test, a private
broker and TCP proxies for the fault tests, and the processes a test started (killed at the end).
The classes and constants behind them live in ``tests/support/``."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg
import pytest

from central.db import migrate
from central.local_services import SecureMosquitto
from central.netproxy import TcpProxy
from central.pki import Pki
from tests.support.processes import PG_ADMIN_DSN, Mosquitto, Proc

if TYPE_CHECKING:  # imported by the fixture: tests.support.secure must load as a plugin first
    from tests.support.rig import Rig

# The session PKI and the secure private broker (tests/support/secure.py).
pytest_plugins = ["tests.support.secure"]

# --- PostgreSQL ---------------------------------------------------------------------------


def _dsn_for(name: str) -> str:
    return PG_ADMIN_DSN.rsplit("/", 1)[0] + "/" + name


@pytest.fixture
def pg_dsn() -> Iterator[str]:
    """A fresh, migrated database on the real PostgreSQL; dropped afterwards."""
    name = f"eiot_test_{secrets.token_hex(4)}"
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as admin:
        admin.execute(f"create database {name}")
    dsn = _dsn_for(name)
    migrate(dsn)
    yield dsn
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as admin:
        admin.execute(f"drop database if exists {name} with (force)")


@pytest.fixture
def pg(pg_dsn: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        yield conn


# --- MQTT ---------------------------------------------------------------------------------


@pytest.fixture
def topic_root() -> str:
    """A topic root of its own per test: retained messages of other tests never leak in."""
    return f"eiot-test/{secrets.token_hex(4)}"


@pytest.fixture
def private_broker(tmp_path: Path) -> Iterator[Mosquitto]:
    broker = Mosquitto(tmp_path / "mosquitto")
    broker.start()
    yield broker
    broker.kill()


@pytest.fixture
def proxy_factory() -> Iterator[type[TcpProxy]]:
    made: list[TcpProxy] = []

    class _Factory(TcpProxy):
        def __init__(self, target_port: int) -> None:
            super().__init__("127.0.0.1", target_port)
            made.append(self)

    yield _Factory
    for p in made:
        p.close()


# --- processes ----------------------------------------------------------------------------


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    started: list[Proc] = []
    yield started
    for p in started:
        p.kill()


@pytest.fixture
def rig(
    tmp_path: Path,
    pg_dsn: str,
    topic_root: str,
    procs: list[Proc],
    secure_broker: SecureMosquitto,
    pki: Pki,
) -> Rig:
    """The reading path on the secure broker: TLS, client certificates, the shipped ACL."""
    from tests.support.rig import Rig

    return Rig(tmp_path, pg_dsn, secure_broker.port, topic_root, procs, pki=pki)
