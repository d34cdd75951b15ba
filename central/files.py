"""Files written whole or not at all, for keys and secrets that must survive a power cut."""

from __future__ import annotations

import os
from pathlib import Path


def write_atomic(path: Path, data: bytes | str, private: bool = False) -> None:
    """``data`` into ``path`` through a temporary file renamed over it, synced to disk before
    the rename and the rename synced after: a power cut leaves the old file or the new one,
    never an empty one. A private file is created readable by its owner only (0600). When the
    write fails, the temporary file is removed and the old file left as it was."""
    tmp = path.with_name(path.name + ".tmp")
    raw = data.encode() if isinstance(data, str) else data
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
