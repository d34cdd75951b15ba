"""Keep freed memory from staying in the agent's heap (glibc's malloc only).

glibc serves blocks of 128 KiB and more with their own ``mmap``, returned to the kernel when freed,
but each time such a block is freed it raises that threshold to the block's size (up to 32 MiB).
After the first few batches, numpy's temporaries (feature chunks, history columns) and the
model's load-time buffers then come from the heap, which can give back only its free top: the
gateway's resident memory stays at its high-water mark. :func:`pin_mmap_threshold` sets the
threshold once, which turns that adjustment off: a few MB less resident memory while the agent
idles with a model loaded (``python -m bench.scoring`` reports it).
"""

from __future__ import annotations

import ctypes

_M_MMAP_THRESHOLD = -3  # <malloc.h>
MMAP_THRESHOLD_BYTES = 128 * 1024


def pin_mmap_threshold(threshold: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Fix malloc's mmap threshold at ``threshold`` bytes; False where the C library has no
    ``mallopt`` or refuses (not glibc): nothing changes then."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, threshold))
