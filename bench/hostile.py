"""Hostile messages against a running ingest worker on the secure broker: it must stay alive,
store none of the bad rows, answer what it can, and keep its memory bounded.

    python -m bench.hostile [--repeat 2]

A gateway identity (the only kind of client that may publish on a gateway's topics) sends
every case below on its readings, alerts and status topics, each as large as the broker lets
through where size is the point; then one good batch, which must be stored. The ingest's peak
RSS is sampled all along. The last line is a JSON object: ``cases``, ``ingest_alive``,
``ingest_peak_rss_mb``, ``stored_bad_rows``, ``good_batch_stored``, ``quarantined``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg

from bench.e2e import PeakRss
from bench.results import report
from central.broker import identity_client
from central.db import migrate
from central.local_services import (
    SecureMosquitto,
    identity_env,
    local_services,
    provision,
    service_login,
    spawn_python,
)
from central.pki import Pki
from central.roles import INGEST
from edge_agent import wire

ROOT = "eiot-hostile/v1"
GW = "gw-h"
# Below the broker's max_packet_size (8,400,000) with the topic and headers.
BIG = 8_300_000


def _z(body: bytes) -> bytes:
    return wire.ZLIB_HEADER + zlib.compress(body, 9)


def _batch(batch_id: str, **fields: Any) -> dict[str, Any]:
    return {
        "schema": "readings.v1",
        "gateway_id": GW,
        "batch_id": batch_id,
        "batch_seq": 1,
        "sent_at": "2026-03-02T00:00:00Z",
        **fields,
    }


def _reading(meter: str, ts: Any, kwh: Any = 0.5, **kw: Any) -> dict[str, Any]:
    return {"meter_id": meter, "ts": ts, "kwh": kwh, **kw}


def cases() -> Iterator[tuple[str, str, bytes]]:
    """(name, topic kind, payload). Every reading in them is named ``evil-*``."""
    yield (
        "zlib bomb of empty objects",
        "readings",
        _z(b'{"schema":"readings.v1","readings":[' + b"{}," * 20_000_000 + b"{}]}"),
    )
    yield (
        "zlib bomb of numbers",
        "readings",
        _z(b'{"schema":"readings.v2","n":1,"columns":{"kwh":[' + b"1," * 30_000_000 + b"1]}}"),
    )
    yield ("deep nesting", "readings", _z(b"[" * 5_000_000 + b"]" * 5_000_000))
    yield ("inflates past the limit", "readings", _z(b'{"a":"' + b"x" * 200_000_000 + b'"}'))
    yield ("huge integer", "readings", b'{"schema":"readings.v1","n":' + b"9" * 100_000 + b"}")
    yield ("NaN and Infinity", "readings", b'{"schema":"readings.v1","x":[NaN,Infinity]}')
    yield ("not UTF-8", "readings", b'{"schema":"\xff\xfe"}')
    yield ("unknown first byte", "readings", b"\x7fELF" + os.urandom(1000))
    yield ("empty", "readings", b"")
    yield ("largest plain message", "readings", b'{"pad":"' + b"x" * (BIG - 10) + b'"}')
    many = [_reading(f"evil-{i}", "2026-03-01T00:30:00Z", kwh=-1) for i in range(50_000)]
    yield (
        "50,000 invalid readings",
        "readings",
        _z(json.dumps(_batch("evil-00000001", readings=many)).encode()),
    )
    quarantine = [
        {"raw": "x" * 16_000, "reason": "r", "received_at": "2026-03-01T00:00:00Z", "source": "s"}
    ] * 2_000
    yield (
        "32 MB of quarantine records",
        "readings",
        _z(json.dumps(_batch("evil-00000002", quarantined=quarantine)).encode()),
    )
    times = [
        "2099-01-01T00:00:00Z",
        "2026-03-02T00:00:00Z",  # tomorrow of a batch sent on the 1st... still after now?
        "1970-01-01T00:30:00Z",
        "1938-05-01T00:00:00Z",
        "2603-03-01T00:00:00Z",
        20_000_000_000,  # an epoch in milliseconds (or seconds in 2603)
        1_772_325_000,
        "2026-03-01T00:30:00.250Z",
        "2026-03-01T00:31:00Z",
    ]
    bad_times = [_reading(f"evil-t{i}", t) for i, t in enumerate(times)]
    bad_times[1]["ts"] = time.strftime("%Y-%m-%dT%H:00:00Z", time.gmtime(time.time() + 86400))
    yield (
        "implausible times",
        "readings",
        json.dumps(_batch("evil-00000003", readings=bad_times)).encode(),
    )
    v2 = _batch("evil-00000004", schema="readings.v2", n=2)
    v2["columns"] = {"meter_id": "evil-d", "ts_delta": [1, 10**30], "kwh": [0.1, 0.1]}
    yield ("v2 delta overflow", "readings", json.dumps(v2).encode())
    v2["batch_id"] = "evil-00000005"
    v2["columns"] = {
        "meter_id": "evil-r",
        "ts_delta": [1772325000, 1800],
        "kwh": [0.1, 0.1],
        "register_kwh_mdelta": [1, 10**400],
    }
    yield ("register overflow", "readings", json.dumps(v2).encode())
    yield (
        "gateway in payload is another",
        "readings",
        json.dumps({**_batch("evil-00000006"), "gateway_id": "gw-other"}).encode(),
    )
    yield (
        "unknown schema",
        "readings",
        json.dumps(_batch("evil-7", schema="readings.v9")).encode(),
    )
    yield ("alert bomb", "alerts", _z(b'{"features":{' + b'"a":1,' * 5_000_000 + b'"b":1}}'))
    yield (
        "alert with NaN",
        "alerts",
        b'{"schema":"alert.v1","alert_id":"x","gateway_id":"gw-h","meter_id":"evil-a",'
        b'"ts":"2026-03-01T00:30:00Z","kind":"tamper","score":NaN}',
    )
    yield ("status bomb", "status", _z(b'{"counters":{' + b'"a":1,' * 5_000_000 + b'"b":1}}'))


class Gateway:
    """A gateway's MQTT 5 connection that waits for the broker's answer to each publish."""

    def __init__(self, pki: Pki, name: str, port: int) -> None:
        import threading

        self._answers: dict[int, Any] = {}
        self._cond = threading.Condition()
        self.client = identity_client(pki, name)
        self.client.on_publish = self._on_publish
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_publish(self, c: Any, u: Any, mid: int, code: Any, props: Any) -> None:
        with self._cond:
            self._answers[mid] = code
            self._cond.notify_all()

    def publish(self, topic: str, payload: bytes, timeout: float = 60) -> Any:
        """The broker's answer, or 'disconnected' when it closed the connection instead."""
        info = self.client.publish(topic, payload, qos=1)
        with self._cond:
            if not self._cond.wait_for(lambda: info.mid in self._answers, timeout):
                return "no answer"
            return self._answers.pop(info.mid)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def run(repeat: int) -> dict[str, Any]:
    with (
        tempfile.TemporaryDirectory(prefix="eiot-hostile-") as tmp,
        local_services(plain_broker=False) as svc,
    ):
        work = Path(tmp)
        dsn = svc.fresh_database("eiot_hostile")
        migrate(dsn)
        pki = provision(work / "pki", [GW])
        broker = SecureMosquitto(work / "broker", pki.dir, ROOT)
        broker.start()
        ingest = spawn_python(
            ["-m", "central", "--log-level", "WARNING", "ingest"],
            {
                **identity_env(pki, "svc-ingest-1", "127.0.0.1", broker.port),
                "EIOT_PROFILE": "production",
                "EIOT_PG_DSN": service_login(svc.admin_dsn, dsn, "eiot_hostile_ingest", INGEST),
                "EIOT_TOPIC_ROOT": ROOT,
                "EIOT_WORKER_ID": "1",
                "EIOT_STATE_DIR": str(work / "ingest-state"),
            },
            work / "ingest.log",
        )
        rss = PeakRss([ingest.pid])
        try:
            time.sleep(1.5)
            gw = Gateway(pki, GW, broker.port)
            n = 0
            for _ in range(repeat):
                for name, kind, payload in cases():
                    code = gw.publish(f"{ROOT}/gw/{GW}/{kind}", payload)
                    print(f"{name:<34} {len(payload):>10,} B  broker: {code}", flush=True)
                    n += 1
            good = _batch(
                "good-00000001",
                readings=[_reading("good-1", "2026-03-01T00:30:00Z", kwh=0.25)],
            )
            gw.publish(f"{ROOT}/gw/{GW}/readings", json.dumps(good).encode())
            deadline = time.monotonic() + 120
            stored = bad = quarantined = 0
            while time.monotonic() < deadline:
                with psycopg.connect(dsn) as conn:
                    stored, bad, quarantined = conn.execute(
                        "select count(*) filter (where meter_id = 'good-1'), "
                        "count(*) filter (where meter_id like 'evil%'), "
                        "(select count(*) from raw.quarantine) from raw.readings"
                    ).fetchone()  # type: ignore[misc]
                if stored:
                    break
                time.sleep(0.5)
            gw.close()
            alive = ingest.poll() is None
        finally:
            peak = rss.stop()[ingest.pid]
            ingest.terminate()
            ingest.wait(10)
            broker.stop()
    print(f"ingest peak RSS {peak:.0f} MB; alive {alive}; good batch stored {bool(stored)}")
    return {
        "cases": n,
        "ingest_alive": alive,
        "ingest_peak_rss_mb": round(peak, 1),
        "stored_bad_rows": bad,
        "good_batch_stored": bool(stored),
        "quarantined": quarantined,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.hostile", description=__doc__)
    parser.add_argument("--repeat", type=int, default=1, help="rounds of every case")
    args = parser.parse_args(argv)
    figures = run(args.repeat)
    report("bench.hostile", figures, argv)
    return 0 if figures["ingest_alive"] and figures["good_batch_stored"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
