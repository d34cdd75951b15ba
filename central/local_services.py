"""PostgreSQL and Mosquitto for the demo and the benchmarks on one machine.

Uses the servers that answer on 127.0.0.1 (5432, 1883) when there are any; otherwise starts
private ones from the distribution's binaries (``scripts/system-deps.sh`` installs them), on free
loopback ports, with their data under ``var/``. A laptop convenience, never a production path.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import pwd
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[1]


@dataclass
class Services:
    admin_dsn: str  # a database to connect to for CREATE/DROP DATABASE
    broker_host: str
    broker_port: int

    def dsn(self, dbname: str) -> str:
        return self.admin_dsn.rsplit("/", 1)[0] + "/" + dbname

    def fresh_database(self, dbname: str) -> str:
        """Drop and create ``dbname``; return its DSN."""
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(dbname))
            )
            conn.execute(sql.SQL("create database {}").format(sql.Identifier(dbname)))
        return self.dsn(dbname)


def answers(port: int, host: str = "127.0.0.1") -> bool:
    try:
        socket.create_connection((host, port), timeout=0.5).close()
        return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not answers(port):
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing answers on 127.0.0.1:{port}")
        time.sleep(0.1)


def spawn_python(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """``python <args>`` from the repository, with ``env`` added, output appended to ``log``."""
    with log.open("ab") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [sys.executable, *args],
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )


@contextlib.contextmanager
def local_services(var: Path = REPO / "var") -> Iterator[Services]:
    """The services for a demo or benchmark run; private ones are stopped on exit."""
    stack = contextlib.ExitStack()
    with stack:
        admin = os.environ.get("EIOT_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
        if os.environ.get("EIOT_PRIVATE_SERVICES") or not _pg_usable(admin):
            admin = stack.enter_context(_private_postgres(var / "pg"))
        port = int(os.environ.get("EIOT_BROKER_PORT", "1883"))
        if os.environ.get("EIOT_PRIVATE_SERVICES") or not answers(port):
            port = stack.enter_context(_private_mosquitto(var / "mosquitto"))
        yield Services(admin, "127.0.0.1", port)


def _pg_usable(dsn: str) -> bool:
    try:
        psycopg.connect(dsn, connect_timeout=3).close()
        return True
    except psycopg.Error:
        return False


@contextlib.contextmanager
def _private_postgres(datadir: Path) -> Iterator[str]:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        raise RuntimeError(
            "no PostgreSQL answers on 127.0.0.1:5432 and none is installed: "
            "run scripts/system-deps.sh (installs Debian's postgresql)"
        )
    bindir = Path(found[-1]).parent
    user = None
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root: run it as the postgres user,
        user = "postgres"  # with its data where that user can reach it
        datadir = Path("/var/tmp/eiot-demo-pg")
        datadir.mkdir(parents=True, exist_ok=True)
        pw = pwd.getpwnam(user)
        os.chown(datadir, pw.pw_uid, pw.pw_gid)
    prefix = ["runuser", "-u", user, "--"] if user else []
    if not (datadir / "PG_VERSION").exists():
        subprocess.run(
            [
                *prefix,
                str(bindir / "initdb"),
                "-D",
                str(datadir),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
            ],
            check=True,
            capture_output=True,
        )
    port = free_port()
    opts = f"-p {port} -c listen_addresses=127.0.0.1 -k {datadir} -c fsync=on"
    subprocess.run(
        [
            *prefix,
            str(bindir / "pg_ctl"),
            "-D",
            str(datadir),
            "-o",
            opts,
            "-w",
            "-l",
            str(datadir / "server.log"),
            "start",
        ],
        check=True,
        capture_output=True,
    )
    log.info("started a private PostgreSQL on 127.0.0.1:%d (%s)", port, datadir)
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            [*prefix, str(bindir / "pg_ctl"), "-D", str(datadir), "-m", "fast", "stop"],
            check=False,
            capture_output=True,
        )


def mosquitto_config(workdir: Path, port: int) -> Path:
    """A private broker's configuration: ``mosquitto/mosquitto.conf`` on ``port``, persistence
    and log in ``workdir``. Started by root, it stays root (it would otherwise drop to the
    ``mosquitto`` user, who cannot write into the caller's private directories); it listens on
    loopback only."""
    workdir.mkdir(parents=True, exist_ok=True)
    conf = workdir / "mosquitto.conf"
    text = (
        (REPO / "mosquitto" / "mosquitto.conf")
        .read_text()
        .replace("listener 1883 127.0.0.1", f"listener {port} 127.0.0.1")
        .replace("persistence_location var/mosquitto/", f"persistence_location {workdir}/")
        .replace("log_dest stderr", f"log_dest file {workdir}/mosquitto.log")
    )
    if os.geteuid() == 0:
        text += "\nuser root\n"
    conf.write_text(text)
    return conf


def mosquitto_binary() -> str:
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(binary).exists():
        raise RuntimeError("mosquitto is not installed: run scripts/system-deps.sh")
    return binary


@contextlib.contextmanager
def _private_mosquitto(workdir: Path) -> Iterator[int]:
    port = free_port()
    conf = mosquitto_config(workdir, port)
    proc = subprocess.Popen([mosquitto_binary(), "-c", str(conf)], cwd=workdir)
    wait_port(port)
    log.info("started a private Mosquitto on 127.0.0.1:%d", port)
    try:
        yield port
    finally:
        proc.terminate()
        proc.wait(10)
