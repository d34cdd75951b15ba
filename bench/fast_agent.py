"""``edge-agent run`` whose meter polling runs on a fast clock, for ``bench.meters`` and the
end-to-end tests: a day of 15-minute boundaries passes in minutes, the readings stamped in the
past (a replay), while everything else in the agent keeps real time.

    python -m bench.fast_agent --config agent.toml --epoch E --t0 T --speed S

The polling clock is ``E + (time.time() - T) * S``, the clock the simulated meters
(``simulator.modbus_meters --epoch E --t0 T --speed S``) count energy on. Imports only what the
agent does (it runs in the gateway's light venv).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.fast_agent", description=__doc__)
    p.add_argument("--config", type=Path, required=True, help="the agent's TOML settings")
    p.add_argument("--epoch", type=float, required=True, help="polling clock at --t0")
    p.add_argument("--t0", type=float, required=True, help="wall time the clocks start from")
    p.add_argument("--speed", type=float, required=True, help="polling seconds per real second")
    args = p.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from edge_agent.heap import pin_mmap_threshold

    pin_mmap_threshold()
    from edge_agent.agent import Agent
    from edge_agent.settings import load_settings
    from edge_agent.sources.dlms import DlmsSource
    from edge_agent.sources.modbus import ModbusSource

    agent = Agent(load_settings(args.config))

    def clock() -> float:
        return args.epoch + (time.time() - args.t0) * args.speed

    for source in agent.sources:
        if isinstance(source, ModbusSource | DlmsSource):
            source.clock = clock
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    agent.run(stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
