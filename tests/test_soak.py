"""The soak bench counts right: a short run of 40 simulated gateways through real ingest
workers stores every reading once, and its figures add up (a batch dropped anywhere would show
as lost)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.soak import soak

pytestmark = [pytest.mark.services, pytest.mark.slow]


def test_a_short_soak_stores_every_reading_once(tmp_path: Path) -> None:
    r = soak(40, 0.25, meters=10, period_s=5, procs=2, workers=2, ack_timeout_s=5, var=tmp_path)
    assert r["readings"] >= 40 * 10 * 2  # every gateway sent at least twice
    assert r["stored"] == r["readings"]
    assert r["lost"] == 0 and r["duplicates"] == 0 and r["quarantined"] == 0
    assert r["unacked_batches"] == 0
    assert r["ingest_rss_peak_mb"] >= r["ingest_rss_start_mb"] > 0
