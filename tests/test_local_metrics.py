"""The agent's own /metrics (``edge_agent.local_metrics``): the names and values central's exporter
gives the same status, Prometheus' own linter, and a real agent serving it while its uplink is
down, to clients that misbehave."""

from __future__ import annotations

import logging
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from central.local_services import free_port
from central.metrics.collector import FleetCollector
from central.metrics.state import ExporterState
from edge_agent import status, wire
from edge_agent.agent import Agent
from edge_agent.buffer import Buffer
from edge_agent.health import GATEWAY_COUNTERS, view_of
from edge_agent.local_metrics import CLIENT_TIMEOUT_S, exposition
from edge_agent.settings import AgentSettings, SimSourceSettings
from tests.support.prometheus import tool

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _samples(text: str) -> Samples:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def _full_status(tmp_path: Path) -> dict[str, object]:
    """A status.v1 with every field the metrics read set, each to a value of its own."""
    buffer = Buffer(tmp_path / "b.db")
    try:
        doc = status.build(buffer, "gw-7", 1_790_000_000.0).to_json_dict()
    finally:
        buffer.close()
    doc["buffer"] = {
        "pending_readings": 1234,
        "inflight_batches": 3,
        "total_readings": 9000,
        "oldest_pending_ts": "2026-09-20T10:00:00Z",
        "full": False,
        "intake": "open",
        "data_bytes": 4_000_000,
        "budget_bytes": 512 * 2**20,
        "wal_bytes": 1000,
        "disk_free_bytes": 2_000_000_000,
    }
    doc["last_ack_at"] = "2026-09-21T11:00:00Z"
    doc["clock_suspect"] = True
    doc["counters"] = {key: 100 + i for i, key in enumerate(GATEWAY_COUNTERS)}
    models = [
        {"name": "iforest", "version": "2026-09-01.1", "loaded_at": "2026-09-02T00:00:00Z"},
        {"name": 'iforest.commercial"x', "version": "v\\2", "loaded_at": "2026-09-02T00:00:00Z"},
    ]
    doc["models"], doc["model"] = models, models[0]
    return wire.Status.model_validate(doc).to_json_dict()  # a valid status.v1, as sent


def test_the_agent_shows_what_central_shows_of_the_same_status(tmp_path: Path) -> None:
    """Same names, labels and values as central's exporter, but for central's own clock
    (last seen) and the fleet count. Catches a metric renamed, added or dropped on one side."""
    doc = _full_status(tmp_path)
    state = ExporterState(max_gateways=10, max_reasons=10)
    state.see_status("gw-7", view_of(doc, received_at=1_790_000_100.0))
    registry = CollectorRegistry()
    registry.register(FleetCollector(state))
    central = {
        key: v
        for key, v in _samples(generate_latest(registry).decode()).items()
        if key[0].startswith("eiot_gateway_")
        and key[0] != "eiot_gateway_last_seen_timestamp_seconds"
    }
    local = _samples(exposition(doc).decode())
    assert local == central
    assert len(local) == 12 + len(GATEWAY_COUNTERS) + 2  # every gauge, counter and model set
    label = dict(next(k for k in local if k[0] == "eiot_gateway_model_info")[1])
    assert label["gateway_id"] == "gw-7"


def test_prometheus_lints_the_exposition_clean(tmp_path: Path) -> None:
    for doc in (_full_status(tmp_path), status.offline("gw-7", 1_790_000_000.0).to_json_dict()):
        done = subprocess.run(
            [tool("promtool"), "check", "metrics"],
            input=exposition(doc),
            capture_output=True,
            timeout=30,
        )
        assert done.returncode == 0, done.stdout + done.stderr


class _Running:
    def __init__(self, agent: Agent, port: int) -> None:
        self.agent, self.port = agent, port

    def get(self, path: str = "/metrics") -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=10) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as exc:
            exc.close()
            return exc.code, ""

    def metrics(self) -> Samples:
        code, text = self.get()
        assert code == 200
        return {(name, labels): v for (name, labels), v in _samples(text).items()}

    def value(self, name: str) -> float:
        return self.metrics()[(name, (("gateway_id", "gw-site"),))]


def _settings(tmp_path: Path, port: int, **kw: object) -> AgentSettings:
    return AgentSettings(
        gateway_id="gw-site",
        db_path=tmp_path / "buffer.db",
        broker_port=free_port(),  # nobody there: the uplink is down, as on a bad field day
        backoff_max_s=1.0,
        sim=SimSourceSettings(meters=20, days=2, seed=3, intervals_per_s=8, chunk_intervals=1),
        local_metrics_port=port,
        **kw,  # type: ignore[arg-type]
    )


@pytest.fixture
def running(tmp_path: Path) -> Iterator[_Running]:
    port = free_port()
    agent = Agent(_settings(tmp_path, port))
    stop = threading.Event()
    thread = threading.Thread(target=agent.run, args=(stop,))
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while agent.local_metrics is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert agent.local_metrics is not None
        yield _Running(agent, port)
    finally:
        stop.set()
        thread.join(30)
        assert not thread.is_alive()


def test_an_engineer_on_site_sees_the_backlog_grow_while_central_is_unreachable(
    running: _Running,
) -> None:
    first = running.metrics()
    gw = (("gateway_id", "gw-site"),)
    assert first[("eiot_gateway_up", gw)] == 0.0  # the uplink is down
    assert ("eiot_gateway_last_seen_timestamp_seconds", gw) not in first  # central's clock
    time.sleep(1.5)  # a snapshot is at most a second old: the next scrape asks for a new one
    later = running.metrics()
    assert (
        later[("eiot_gateway_pending_readings", gw)] > first[("eiot_gateway_pending_readings", gw)]
    )
    accepted = later[("eiot_gateway_readings_accepted_total", gw)]
    assert accepted == later[("eiot_gateway_pending_readings", gw)] > 0  # nothing acked
    assert later[("eiot_gateway_status_sent_timestamp_seconds", gw)] > time.time() - 5
    # the counter is the buffer's: what the agent holds, not what was scraped
    assert accepted <= running.agent.buffer.counters.all()["readings_accepted"]


def test_a_scrape_storm_does_not_rebuild_the_snapshot_more_than_once_a_second(
    running: _Running,
) -> None:
    running.get()
    sent = {running.value("eiot_gateway_status_sent_timestamp_seconds") for _ in range(20)}
    assert len(sent) <= 2  # twenty scrapes within about a second: one or two snapshots


def test_clients_that_misbehave_get_an_error_and_do_not_stop_the_agent(
    running: _Running,
) -> None:
    assert running.get("/")[0] == 404
    assert running.get("/metrics/../etc/passwd")[0] == 404
    post = urllib.request.Request(f"http://127.0.0.1:{running.port}/metrics", data=b"x")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(post, timeout=10)
    assert refused.value.code == 501
    refused.value.close()
    with socket.create_connection(("127.0.0.1", running.port), timeout=10) as s:
        s.sendall(b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.0 414")
    # a client that connects and says nothing holds the endpoint until its timeout, never the
    # agent: readings go on being accepted meanwhile
    before = running.agent.buffer.counters.all().get("readings_accepted", 0)
    with socket.create_connection(("127.0.0.1", running.port), timeout=10) as silent:
        time.sleep(1.0)
        after = running.agent.buffer.counters.all().get("readings_accepted", 0)
        assert after > before
        silent.settimeout(CLIENT_TIMEOUT_S + 5)
        assert silent.recv(100) == b""  # closed by the server's timeout
    assert running.get()[0] == 200  # and it answers again


def test_a_port_already_taken_is_logged_and_the_agent_runs_without_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        agent = Agent(_settings(tmp_path, port))
        stop = threading.Event()
        with caplog.at_level(logging.ERROR, logger="edge_agent.agent"):
            thread = threading.Thread(target=agent.run, args=(stop,))
            thread.start()
            try:
                deadline = time.monotonic() + 20
                while agent.buffer.readings.pending == 0 and time.monotonic() < deadline:
                    time.sleep(0.05)
                assert agent.buffer.readings.pending > 0  # collecting all the same
            finally:
                stop.set()
                thread.join(30)
    assert agent.local_metrics is None
    assert f"local /metrics not served: cannot listen on 127.0.0.1:{port}" in caplog.text


def test_off_unless_a_port_is_set_and_loopback_by_default() -> None:
    s = AgentSettings()
    assert s.local_metrics_port is None
    assert s.local_metrics_host == "127.0.0.1"
    with pytest.raises(ValueError):
        AgentSettings(local_metrics_port=70_000)


def test_an_ipv6_loopback_address_serves_too() -> None:
    from edge_agent.local_metrics import LocalMetrics

    metrics = LocalMetrics("::1", 0)
    port = metrics.start()
    try:
        metrics.publish(b"# nothing\n")
        with urllib.request.urlopen(f"http://[::1]:{port}/metrics", timeout=10) as r:
            assert r.read() == b"# nothing\n"
    finally:
        metrics.close()
