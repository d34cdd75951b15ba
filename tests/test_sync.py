from __future__ import annotations

from pathlib import Path

from edge_agent import wire
from edge_agent.backoff import Backoff
from edge_agent.buffer import Buffer
from edge_agent.publisher import MemoryPublisher
from edge_agent.sync import Sync, SyncPolicy
from tests.support.builders import Clock, row


def make(tmp_path: Path, **policy: float) -> tuple[Buffer, MemoryPublisher, Clock, Sync]:
    buf = Buffer(tmp_path / "b.db")
    pub = MemoryPublisher()
    clock = Clock()
    sync = Sync(
        buf.batches,
        pub,
        clock,
        gateway_id="gw",
        policy=SyncPolicy(**policy),  # type: ignore[arg-type]
        monotonic=clock,  # the wall clock never steps in these tests
    )
    return buf, pub, clock, sync


def batch_ids(pub: MemoryPublisher) -> list[str]:
    return [wire.decode(m.payload)["batch_id"] for m in pub.sent]


def test_batches_bounded_by_size_and_window(tmp_path: Path) -> None:
    buf, pub, clock, sync = make(tmp_path, batch_max_readings=10, inflight_window=3)
    buf.readings.accept([row("m", k) for k in range(55)], now=clock())
    assert sync.tick() == 3  # window full
    assert len(pub.sent) == 3
    assert all(wire.decode(m.payload)["n"] == 10 for m in pub.sent)
    assert sync.tick() == 0
    sync.on_ack(wire.Ack(batch_id=batch_ids(pub)[0], status="stored"))
    assert sync.tick() == 1


def test_small_batch_waits_for_age(tmp_path: Path) -> None:
    buf, pub, clock, sync = make(tmp_path, batch_max_readings=100, batch_max_age_s=5)
    clock.advance(0)
    buf.readings.accept([row("m", 0)], now=clock())
    assert sync.tick() == 0
    clock.advance(5)
    assert sync.tick() == 1


def test_resend_same_bytes_after_timeout_with_growing_wait(tmp_path: Path) -> None:
    buf, pub, clock, sync = make(
        tmp_path, batch_max_readings=5, ack_timeout_s=10, inflight_window=1
    )
    buf.readings.accept([row("m", k) for k in range(5)], now=clock())
    sync.tick()
    pub.confirm()  # the broker's PUBACK: the wait for central's ack starts
    first = pub.sent[-1].payload
    clock.advance(9)
    assert sync.tick() == 0
    clock.advance(1)
    assert sync.tick() == 1 and pub.sent[-1].payload == first  # same batch id, same content
    pub.confirm()
    clock.advance(10)
    assert sync.tick() == 0  # second wait is 20 s
    clock.advance(10)
    assert sync.tick() == 1 and pub.sent[-1].payload == first
    assert buf.counters.all()["batches_resent"] == 2


def test_a_send_the_broker_has_not_taken_is_not_sent_again(tmp_path: Path) -> None:
    """A slow 3G link, or one that died without a word: the batch waits in the MQTT client's
    queue, unanswered. Resending would queue the same bytes twice; the wait for central's ack
    starts at the PUBACK, and only a send never answered goes again, after ack_timeout_max_s."""
    buf, pub, clock, sync = make(
        tmp_path, batch_max_readings=5, ack_timeout_s=10, ack_timeout_max_s=120
    )
    buf.readings.accept([row("m", k) for k in range(10)], now=clock())
    assert sync.tick() == 2
    clock.advance(100)  # no PUBACK yet: still queued in the client
    assert sync.tick() == 0
    pub.confirm()  # the link drains
    clock.advance(9)
    assert sync.tick() == 0  # central has 10 s from the PUBACK
    clock.advance(1)
    assert sync.tick() == 2
    clock.advance(120)  # these sends never answered by the broker: again after the maximum
    assert sync.tick() == 2 and len(pub.sent) == 6


def test_disconnected_publisher_keeps_everything(tmp_path: Path) -> None:
    buf, pub, clock, sync = make(tmp_path, batch_max_readings=5)
    pub.up = False
    buf.readings.accept([row("m", k) for k in range(5)], now=clock())
    assert sync.tick() == 0 and buf.batches.open() == []
    pub.up = True
    assert sync.tick() == 1


def test_restart_resends_open_batches_at_once(tmp_path: Path) -> None:
    buf, pub, clock, sync = make(tmp_path, batch_max_readings=5, ack_timeout_s=100)
    buf.readings.accept([row("m", k) for k in range(5)], now=clock())
    sync.tick()
    first = pub.sent[-1].payload
    again = Sync(buf.batches, pub, clock, gateway_id="gw", policy=sync.policy, monotonic=clock)
    assert again.tick() == 1 and pub.sent[-1].payload == first


def test_a_wall_clock_stepped_back_a_day_holds_nothing(tmp_path: Path) -> None:
    """Resends wait on the monotonic clock, and readings accepted 'in the future' of a clock
    that went back are batched at once, not when the clock catches up."""
    buf = Buffer(tmp_path / "b.db")
    pub = MemoryPublisher()
    wall, mono = Clock(), Clock(1000.0)
    policy = SyncPolicy(batch_max_readings=5, batch_max_age_s=5, ack_timeout_s=10)
    sync = Sync(buf.batches, pub, wall, gateway_id="gw", policy=policy, monotonic=mono)
    buf.readings.accept([row("m", k) for k in range(5)], now=wall())
    assert sync.tick() == 1
    pub.confirm()
    buf.readings.accept([row("m", 9)], now=wall())  # young: waits for its age
    wall.advance(-86400)  # NTP not there yet: the clock goes back a day
    mono.advance(10)
    assert sync.tick() == 2  # the unacknowledged batch resent, the small one formed
    assert batch_ids(pub)[0] == batch_ids(pub)[1] != batch_ids(pub)[2]
    pub.confirm()
    mono.advance(5)
    assert sync.tick() == 0  # waits on the monotonic clock: 20 s for the second resend
    mono.advance(15)
    assert sync.tick() == 2


def test_rejected_ack_is_counted_not_resent(tmp_path: Path) -> None:
    buf, pub, clock, sync = make(tmp_path, batch_max_readings=5, ack_timeout_s=1)
    buf.readings.accept([row("m", k) for k in range(5)], now=clock())
    sync.tick()
    sync.on_ack(wire.Ack(batch_id=batch_ids(pub)[0], status="rejected", reason="x"))
    clock.advance(10)
    assert sync.tick() == 0
    assert buf.counters.all()["batches_rejected"] == 1


def test_backoff_full_jitter_bounds() -> None:
    import random

    b = Backoff(0.5, 8, random.Random(1))
    delays = [b.next_delay() for _ in range(10)]
    assert all(0.5 <= d <= 8 for d in delays)
    ceilings = [min(8, 0.5 * 2**i) for i in range(10)]
    assert all(d <= c for d, c in zip(delays, ceilings, strict=True))
    assert len(set(delays)) == 10  # jittered
    b.reset()
    assert b.next_delay() == 0.5
