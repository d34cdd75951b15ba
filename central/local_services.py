"""PostgreSQL and Mosquitto for the demo and the benchmarks on one machine.

Uses the servers that answer on 127.0.0.1 (5432, 1883) when there are any; otherwise starts
private ones from the distribution's binaries (``scripts/system-deps.sh`` installs them), on free
loopback ports, with their data under ``var/`` (as root, PostgreSQL's under /var/tmp, where its
``postgres`` user can reach it). A laptop convenience, never a production path.
:class:`PrivatePostgres` also serves the fault tests that crash and restart the database.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import psycopg
from psycopg import sql

from central.pki import Pki

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
def local_services(var: Path = REPO / "var", plain_broker: bool = True) -> Iterator[Services]:
    """The services for a demo or benchmark run; private ones are stopped on exit. Without
    ``plain_broker`` only PostgreSQL (the caller runs a :class:`SecureMosquitto`)."""
    stack = contextlib.ExitStack()
    with stack:
        admin = os.environ.get("EIOT_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
        if os.environ.get("EIOT_PRIVATE_SERVICES") or not _pg_usable(admin):
            server = PrivatePostgres(_demo_pg_datadir(var / "pg"))
            stack.callback(server.stop)  # also if it fails half-way through starting
            server.start()
            admin = server.admin_dsn
        port = int(os.environ.get("EIOT_BROKER_PORT", "1883"))
        if plain_broker and (os.environ.get("EIOT_PRIVATE_SERVICES") or not answers(port)):
            port = stack.enter_context(_private_mosquitto(var / "mosquitto"))
        yield Services(admin, "127.0.0.1", port if plain_broker else 0)


def _demo_pg_datadir(wanted: Path) -> Path:
    """Where the demo's private cluster lives (kept from run to run): ``wanted``, or, as root,
    ``/var/tmp/eiot-demo-pg``, a place the ``postgres`` user can reach."""
    if postgres_user() is None:
        return wanted
    datadir = Path("/var/tmp/eiot-demo-pg")
    datadir.mkdir(parents=True, exist_ok=True)
    pw = pwd.getpwnam("postgres")
    os.chown(datadir, pw.pw_uid, pw.pw_gid)
    return datadir


def _pg_usable(dsn: str) -> bool:
    try:
        psycopg.connect(dsn, connect_timeout=3).close()
        return True
    except psycopg.Error:
        return False


def postgres_bindir() -> Path:
    """The newest installed PostgreSQL's ``bin`` directory (Debian layout)."""
    found = glob.glob("/usr/lib/postgresql/*/bin/initdb")
    if not found:
        raise RuntimeError(
            "PostgreSQL's server programs are not installed (no /usr/lib/postgresql/*/bin): "
            "run scripts/system-deps.sh (installs Debian's postgresql)"
        )
    newest = max(found, key=lambda p: float(Path(p).parents[1].name))
    return Path(newest).parent


def postgres_user() -> str | None:
    """The user a private server runs as: ``postgres`` when we are root (PostgreSQL refuses to
    run as root), else None (ourselves)."""
    return "postgres" if os.geteuid() == 0 else None


def reachable_by(user: str | None, path: Path) -> bool:
    """True if ``user`` (None: ourselves) may enter ``path``: search permission on it and every
    parent (e.g. pytest's ``/tmp/pytest-of-root`` is 0700, closed to ``postgres``)."""
    if user is None:
        return os.access(path, os.X_OK)
    probe = subprocess.run(["runuser", "-u", user, "--", "test", "-x", str(path)], check=False)
    return probe.returncode == 0


PgStopMode = Literal["smart", "fast", "immediate"]


class PrivatePostgres:
    """A PostgreSQL server of our own: its data directory, a free loopback port chosen once and
    kept across restarts (clients find it again at the same address), started and stopped on
    demand, e.g. crashed (``stop("immediate")``) and started again by a fault test.

    Run by root, the server runs as ``postgres``: the data directory is chowned to that user,
    whose access to its parents the caller checks (:func:`reachable_by`)."""

    def __init__(self, datadir: Path, port: int | None = None) -> None:
        self.datadir = datadir
        self.port = port or free_port()
        self.bindir = postgres_bindir()
        self.user = postgres_user()

    @property
    def admin_dsn(self) -> str:
        """A database to connect to for CREATE/DROP DATABASE."""
        return self.dsn("postgres")

    def dsn(self, dbname: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    @property
    def log_file(self) -> Path:
        return self.datadir / "server.log"

    def start(self) -> None:
        """Create the cluster on first use, start the server, wait until it takes connections
        (after a crash: once it has replayed its WAL)."""
        if not (self.datadir / "PG_VERSION").exists():
            self._initdb()
        opts = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.datadir} -c fsync=on"
        self._run(
            "pg_ctl", "-D", str(self.datadir), "-o", opts, "-w", "-l", str(self.log_file), "start"
        )
        log.info("started a private PostgreSQL on 127.0.0.1:%d (%s)", self.port, self.datadir)

    def stop(self, mode: PgStopMode = "fast") -> None:
        """Stop the server if it runs. ``fast``: sessions ended, a checkpoint written;
        ``immediate``: a crash, no checkpoint (the next start recovers from the WAL)."""
        if self.running():
            self._run("pg_ctl", "-D", str(self.datadir), "-m", mode, "-w", "stop")
            log.info("stopped the private PostgreSQL on 127.0.0.1:%d (%s)", self.port, mode)

    def running(self) -> bool:
        if not (self.datadir / "PG_VERSION").exists():
            return False
        return self._run("pg_ctl", "-D", str(self.datadir), "status", check=False) == 0

    def _initdb(self) -> None:
        self.datadir.mkdir(parents=True, exist_ok=True)
        if self.user:
            pw = pwd.getpwnam(self.user)
            os.chown(self.datadir, pw.pw_uid, pw.pw_gid)
        self._run("initdb", "-D", str(self.datadir), "-A", "trust", "-U", "postgres", "--no-sync")

    def _run(self, program: str, *args: str, check: bool = True) -> int:
        """Run one of the server's programs as its user; its output in the error if it fails."""
        prefix = ["runuser", "-u", self.user, "--"] if self.user else []
        done = subprocess.run(
            [*prefix, str(self.bindir / program), *args],
            capture_output=True,
            text=True,
            check=False,
            cwd=self.datadir,  # a directory the server's user may enter
        )
        if check and done.returncode != 0:
            output = (done.stdout + done.stderr).strip()[-2000:]
            raise RuntimeError(f"{program} failed ({done.returncode}) for {self}: {output}")
        return done.returncode

    def __repr__(self) -> str:
        return f"PrivatePostgres(127.0.0.1:{self.port}, {self.datadir})"


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


class SecureMosquitto:
    """A private broker with the secure configuration (``central.broker``): TLS with client
    certificates from ``pki_dir``, the Dynamic Security plugin for ``topic_root``, persistence in
    ``state_dir``. The port is chosen once and kept across restarts."""

    def __init__(
        self, state_dir: Path, pki_dir: Path, topic_root: str, port: int | None = None
    ) -> None:
        from central.broker import BrokerFiles

        self.files = BrokerFiles(pki_dir=pki_dir, state_dir=state_dir)
        self.topic_root = topic_root
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def log_file(self) -> Path:
        return self.files.state_dir / "mosquitto.log"

    def start(self) -> None:
        from central.broker import write_broker

        conf = write_broker(
            self.files,
            self.topic_root,
            port=self.port,
            bind="127.0.0.1",
            user="root" if os.geteuid() == 0 else None,
            log_dest=f"file {self.log_file}",
        )
        self.proc = subprocess.Popen(
            [mosquitto_binary(), "-c", str(conf)], cwd=self.files.state_dir
        )
        wait_port(self.port)
        log.info("started a secure Mosquitto on 127.0.0.1:%d", self.port)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def provision(
    pki_dir: Path, gateways: list[str], workers: int = 1, alerts: tuple[str, ...] = ()
) -> Pki:
    """A PKI with what a laptop stack needs: the broker's certificate (localhost, 127.0.0.1),
    one identity per gateway, ``workers`` ingest identities, the model publisher, the admin and
    ``alerts`` subscribers. Identities already issued are kept."""
    pki = Pki(pki_dir)
    pki.init("eiot laptop CA")
    pki.ensure("localhost", "broker", hosts=("127.0.0.1",))
    for gw in gateways:
        pki.ensure(gw, "gateway")
    for n in range(1, workers + 1):
        pki.ensure(f"svc-ingest-{n}", "ingest")
    pki.ensure("svc-models", "models")
    pki.ensure("svc-models-keeper", "models")  # python -m ml keep-published
    pki.ensure("svc-ops", "ops")  # gateway_watch's operational alerts
    pki.ensure("svc-admin", "admin")
    for name in alerts:
        pki.ensure(f"svc-alerts-{name}", "alerts")
    return pki


def service_login(admin_dsn: str, dsn: str, name: str, role: str) -> str:
    """A PostgreSQL login ``name`` in group ``role`` (``central.roles``) with a new random
    password; returns its DSN for ``dsn``'s database."""
    from central.roles import create_login, dsn_for

    password = secrets.token_urlsafe(24)
    create_login(admin_dsn, name, role, password)
    return dsn_for(dsn, name, password)


def identity_env(pki: Pki, name: str, host: str, port: int) -> dict[str, str]:
    """``EIOT_*`` variables that connect a part to the secure broker as ``name``."""
    return {
        "EIOT_BROKER_HOST": host,
        "EIOT_BROKER_PORT": str(port),
        "EIOT_BROKER_TLS": "true",
        "EIOT_BROKER_CA_FILE": str(pki.ca_cert_path),
        "EIOT_BROKER_CERT_FILE": str(pki.cert_path(name)),
        "EIOT_BROKER_KEY_FILE": str(pki.key_path(name)),
    }
