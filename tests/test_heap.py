"""edge_agent.heap: with the mmap threshold pinned, freed batch temporaries leave the process."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

# Free one 2 MB block (glibc then raises its mmap threshold to 2 MB), then hold 40 blocks of 2 MB
# with a small live allocation after each, free the big ones and report how much stayed resident.
_SCRIPT = """
import sys
import numpy as np
from edge_agent.heap import pin_mmap_threshold

if sys.argv[1] == "pinned":
    assert pin_mmap_threshold()

def rss_mb():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS")) / 1024

warm = np.ones(1 << 18)  # 2 MB
del warm
start = rss_mb()
big, small = [], []
for _ in range(40):
    big.append(np.ones(1 << 18))
    small.append(np.ones(64))
del big
print(rss_mb() - start)
"""


def _kept_mb(mode: str) -> float:
    out = subprocess.run(
        [sys.executable, "-c", _SCRIPT, mode], capture_output=True, text=True, check=True
    )
    return float(out.stdout)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the adjustment is glibc's")
def test_pinned_threshold_gives_freed_batch_memory_back() -> None:
    default, pinned = _kept_mb("default"), _kept_mb("pinned")
    assert default > 40  # glibc's own behaviour: the 80 MB stay in the heap
    assert pinned < 10
