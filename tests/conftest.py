"""Shared fixtures: the real PostgreSQL and Mosquitto on 127.0.0.1, private brokers and proxies
for the fault tests, and helpers that run the agent and the ingest worker as real processes."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from central.db import migrate
from central.local_services import free_port, mosquitto_binary, mosquitto_config, wait_port
from tests.support.proxy import TcpProxy

REPO = Path(__file__).resolve().parents[1]
PG_ADMIN_DSN = os.environ.get(
    "EIOT_TEST_PG_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"
)
BROKER_HOST = "127.0.0.1"
BROKER_PORT = int(os.environ.get("EIOT_TEST_BROKER_PORT", "1883"))


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


class Mosquitto:
    """A private broker on a free loopback port, with persistence, that a test may stop."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.conf = mosquitto_config(workdir, self.port)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([mosquitto_binary(), "-c", str(self.conf)], cwd=self.workdir)
        wait_port(self.port)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


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


class Proc:
    """A real agent or ingest process, its output in a log file."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.args = args
        self.env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, extra_env: dict[str, str] | None = None) -> Proc:
        with self.log.open("ab") as out:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(
                [sys.executable, *self.args],
                env={**self.env, **(extra_env or {})},
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=REPO,
            )
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    started: list[Proc] = []
    yield started
    for p in started:
        p.kill()
