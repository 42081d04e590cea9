"""The clock: the wall clock in production; in development and tests one that tests move forward."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime: ...


class WallClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class AdjustableClock:
    """Wall time plus an offset in seconds read from a file, so a test can move every running process on."""

    def __init__(self, path: Path) -> None:
        self._path = Path(path)
        self._mtime: float | None = None
        self._offset = 0.0

    def offset(self) -> float:
        try:
            st = os.stat(self._path)
        except FileNotFoundError:
            return 0.0
        if st.st_mtime_ns != self._mtime:
            self._mtime = st.st_mtime_ns
            text = self._path.read_text().strip()
            self._offset = float(text) if text else 0.0
        return self._offset

    def now(self) -> datetime:
        return datetime.now(UTC) + timedelta(seconds=self.offset())


def advance(path: Path, seconds: float) -> float:
    """Move an adjustable clock forward by `seconds`; returns the new offset."""
    path = Path(path)
    current = AdjustableClock(path).offset()
    new = current + seconds
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(repr(new))
    os.replace(tmp, path)
    return new


def clock_from_settings(settings) -> Clock:
    """The clock the settings ask for; the adjustable one is refused in production by the settings."""
    if settings.jinshui_clock == "adjustable":
        path = settings.jinshui_clock_file or (Path(settings.jinshui_home) / "clock")
        return AdjustableClock(path)
    return WallClock()
