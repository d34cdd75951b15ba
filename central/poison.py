"""Messages that kill the ingest worker are set aside instead of crash-looping it.

The worker notes which message it is decoding and which it is storing (two slots, by the
message's sha256) in a small file before it starts and clears the slot when it is done. A
worker that dies (killed for memory, a crash in a library) leaves the file behind; at the next
start every message still in a slot becomes a suspect, with the number of deaths it was present
at. While suspects remain, the worker decodes and stores one message at a time (``careful``),
so a further death blames exactly one message. A message present at ``dead_after`` deaths is a
poison message: it is quarantined with its digest and answered without being decoded again. A
suspect handled without a death is cleared.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Literal

Slot = Literal["decoding", "storing"]


class PoisonGuard:
    def __init__(self, directory: Path, name: str, dead_after: int = 2) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self._slots_path = directory / f"{name}.slots.json"
        self._suspects_path = directory / f"{name}.suspects.json"
        self.dead_after = dead_after
        self._lock = threading.Lock()
        self._slots: dict[str, str] = {}
        self.suspects: dict[str, int] = _read(self._suspects_path)
        for digest in _read(self._slots_path).values():  # left by a worker that died
            if isinstance(digest, str):
                self.suspects[digest] = self.suspects.get(digest, 0) + 1
        _write(self._suspects_path, self.suspects)
        _write(self._slots_path, {})

    @property
    def careful(self) -> bool:
        """Handle one message at a time while a death is unexplained."""
        return bool(self.suspects)

    def deaths(self, digest: str) -> int:
        return self.suspects.get(digest, 0)

    def is_poison(self, digest: str) -> bool:
        return self.deaths(digest) >= self.dead_after

    def enter(self, slot: Slot, digest: str) -> None:
        with self._lock:
            self._slots[slot] = digest
            _write(self._slots_path, self._slots)

    def leave(self, slot: Slot) -> None:
        with self._lock:
            if self._slots.pop(slot, None) is not None:
                _write(self._slots_path, self._slots)

    def settled(self, digest: str) -> None:
        """The message was handled (stored or set aside): no longer a suspect."""
        with self._lock:
            if self.suspects.pop(digest, None) is not None:
                _write(self._suspects_path, self.suspects)


def _read(path: Path) -> dict[str, int]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write(path: Path, data: object) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)
