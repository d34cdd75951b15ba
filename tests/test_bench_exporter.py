"""The exporter bench counts right: a short run of 30 gateways through the real ingest and
exporter stores their statuses, and the exporter serves every gateway it stored."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.exporter import run

pytestmark = [pytest.mark.services, pytest.mark.slow]


def test_a_short_exporter_bench_sees_every_gateway(tmp_path: Path) -> None:
    r = run(30, minutes=0.3, poll_s=1, scrape_every_s=1, period_s=6, var=tmp_path)
    assert r["status_msgs_sent"] >= 30 * 2  # every gateway twice at least
    assert r["gateways_seen"] == 30
    assert 2.5 <= r["status_msgs_per_s"] <= 7.5  # 30 per 6 s, measured over a short window
    assert r["exporter_rss_mb"] > 0 and r["scrape_ms"] > 0 and r["exporter_cpu_pct"] >= 0
