"""Fault injection for the fault tests: ``EIOT_FAILPOINT=name:N`` kills the process with SIGKILL
the N-th time the code passes ``hit("name")`` — a power cut at an exact point.

Read once per process; with the variable unset ``hit`` is a dictionary lookup and nothing else.
"""

from __future__ import annotations

import os
import signal

_armed: dict[str, int] = {}
for _spec in filter(None, os.environ.get("EIOT_FAILPOINT", "").split(",")):
    _name, _, _count = _spec.partition(":")
    _armed[_name.strip()] = int(_count or 1)


def hit(name: str) -> None:
    remaining = _armed.get(name)
    if remaining is None:
        return
    if remaining <= 1:
        os.kill(os.getpid(), signal.SIGKILL)
    _armed[name] = remaining - 1
