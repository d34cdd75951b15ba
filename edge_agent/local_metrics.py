"""The agent's own ``/metrics``, for an engineer on site (off unless ``local_metrics_port`` is set).

Central cannot scrape a gateway (NAT, a metered link): the fleet's metrics are central's, from
the ``status.v1`` messages. When the uplink is down, though, central hears nothing, and the
engineer beside the gateway wants the same numbers: this endpoint shows the agent's status under
the names central's exporter uses (``edge_agent.health``), with ``eiot_gateway_up`` meaning "the
uplink to central is connected".

Costs nothing until scraped: the main loop, which alone reads the buffer, builds a snapshot when
a scrape asks for one, at most once a second (``MIN_REFRESH_S``); a scrape waits for it up to
``WAIT_S`` and otherwise gets the previous one (its ``eiot_gateway_status_sent_timestamp_seconds``
says how old). One request at a time on one thread, each bounded by ``CLIENT_TIMEOUT_S``: a slow
or hostile client can hold up the endpoint, never the agent's loop, and it costs no memory per
connection. The standard library only (``http.server``), imported when the endpoint is on.
"""

from __future__ import annotations

import logging
import math
import socket
import threading
import time
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

from edge_agent.health import GATEWAY_COUNTERS, GATEWAY_GAUGES, MODEL_INFO, counter_metric, view_of

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MIN_REFRESH_S = 1.0  # a scrape older than this asks the loop for a new snapshot
WAIT_S = 2.0  # how long a scrape waits for it
CLIENT_TIMEOUT_S = 5.0  # to send a request, or to read the answer

_LOCAL_GAUGES = [g for g in GATEWAY_GAUGES if g[2] != "received_at"]  # central's clock


def _value(v: float) -> str:
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(float(v))


def _label(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _help(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n")


def exposition(status: Mapping[str, Any]) -> bytes:
    """Prometheus' text format (0.0.4) of a ``status.v1`` as JSON, one gateway's series."""
    view = view_of(status, received_at=0.0)
    gw = f'gateway_id="{_label(str(status.get("gateway_id", "")))}"'
    out: list[str] = []

    def family(name: str, doc: str, kind: str, samples: list[tuple[str, float]]) -> None:
        out.append(f"# HELP {name} {_help(doc)}")
        out.append(f"# TYPE {name} {kind}")
        out.extend(f"{name}{{{labels}}} {_value(v)}" for labels, v in samples)

    for name, doc, attr in _LOCAL_GAUGES:
        value = getattr(view, attr)
        family(name, doc, "gauge", [] if value is None else [(gw, float(value))])
    for i, key in enumerate(GATEWAY_COUNTERS):
        name, doc = counter_metric(key)
        value = view.counters[i]
        family(f"{name}_total", doc, "counter", [] if value is None else [(gw, value)])
    info, doc = MODEL_INFO
    models = [(f'{gw},model="{_label(m)}",version="{_label(v)}"', 1.0) for m, v in view.models]
    family(f"{info}_info", doc, "gauge", models)
    return ("\n".join(out) + "\n").encode()


class LocalMetrics:
    """The endpoint: a server thread answering scrapes, fed snapshots by the main loop
    (:meth:`wanted`, then :meth:`show`)."""

    def __init__(
        self, host: str, port: int, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self.host, self.port = host, port
        self.monotonic = monotonic
        self._body: bytes | None = None
        self._at = -math.inf  # monotonic time of the snapshot
        self._wanted = threading.Event()
        self._fresh = threading.Condition()
        self._server: HTTPServer | None = None

    def start(self) -> int:
        """Bind and serve in a daemon thread; the port (``port`` 0: a free one). OSError when
        the address cannot be bound."""
        server_class = _Server6 if ":" in self.host else HTTPServer
        server = server_class((self.host, self.port), _Handler)
        server.metrics = self  # type: ignore[attr-defined]
        self._server = server
        threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.5},
            name="local-metrics",
            daemon=True,
        ).start()
        self.port = int(server.server_address[1])
        return self.port

    # --- the main loop's side ----------------------------------------------------------------

    def wanted(self) -> bool:
        return self._wanted.is_set()

    def show(self, status: Mapping[str, Any]) -> None:
        """Publish the snapshot of ``status`` (a ``status.v1`` as JSON)."""
        self.publish(exposition(status))

    def publish(self, body: bytes) -> None:
        with self._fresh:
            self._body = body
            self._at = self.monotonic()
            self._wanted.clear()
            self._fresh.notify_all()

    # --- the server's side -------------------------------------------------------------------

    def snapshot(self) -> bytes | None:
        """The newest snapshot, asking the loop for a new one when the last is stale."""
        with self._fresh:
            if self.monotonic() - self._at >= MIN_REFRESH_S:
                before = self._at
                self._wanted.set()
                self._fresh.wait_for(lambda: self._at != before, timeout=WAIT_S)
            return self._body

    def close(self) -> None:
        """Stop serving (after the request in hand, if any) and release the port."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class _Server6(HTTPServer):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    timeout = CLIENT_TIMEOUT_S
    server_version = "eiot-agent"
    sys_version = ""

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        if self.path.split("?", 1)[0] != "/metrics":
            self.send_error(404, "only /metrics here")
            return
        body = self.server.metrics.snapshot()  # type: ignore[attr-defined]
        if body is None:
            self.send_error(503, "the agent has not made a snapshot yet")
            return
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPE)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base's name)
        log.debug("local metrics: %s %s", self.address_string(), format % args)
