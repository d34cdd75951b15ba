"""What the simulated protocol peers share (``simulator.modbus_meters``,
``simulator.dlms_meter``): a clock that may run faster than the wall, and serving until stopped."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable


def peer_clock(epoch: float | None, t0: float | None, speed: float) -> Callable[[], float]:
    """``epoch + (time.time() - t0) * speed``, the clock ``bench.fast_agent`` polls on
    (``epoch`` and ``t0`` default to now)."""
    start = time.time() if t0 is None else t0
    at = start if epoch is None else epoch

    def clock() -> float:
        return at + (time.time() - start) * speed

    return clock


def serve_until_stopped() -> None:
    """Block until SIGTERM or Ctrl-C."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
