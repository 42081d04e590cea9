"""The personal-data keys file: kept up to date in running services, and rewritten by `jinshui keys`.

A service that holds the keys (the gateway, the registry) reads them once at start; when they come from a file
(JINSHUI_PII_KEYS_FILE, e.g. a mounted Kubernetes secret, or the development file under JINSHUI_HOME) it also
looks at the file every `interval` seconds and swaps in the new keyring when the file changed. A file that does
not parse is logged and ignored: the keyring in use stays. Keys given inline (JINSHUI_PII_KEYS) are taken at
start only: change them by restarting the service.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
from pathlib import Path

from jinshui.kit.pii import Keyring, PersonalDataKeysError
from jinshui.kit.settings import ServiceSettings

log = logging.getLogger(__name__)

__all__ = ["keys_path", "watch_keyring", "write_keyring"]


def keys_path(settings: ServiceSettings) -> Path | None:
    """The file the service's keys come from; None when they are given inline."""
    if settings.jinshui_pii_keys:
        return None
    if settings.jinshui_pii_keys_file:
        return Path(settings.jinshui_pii_keys_file)
    return Keyring.development_path(settings.jinshui_home)


def _signature(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()  # follows symlinks: a Kubernetes secret update swaps the link's target
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def write_keyring(path: Path, keyring: Keyring) -> None:
    """Replace the keys file atomically (mode 0600): a reader sees the old document or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(keyring.to_json().encode())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def watch_keyring(svc, settings: ServiceSettings, *, interval: float = 1.0) -> None:
    """Keep `svc.app.state.keyring` equal to the keys file's content while the service runs."""
    path = keys_path(settings)
    if path is None:
        return
    seen = _signature(path)

    async def loop() -> None:
        nonlocal seen
        while not svc._stopping:
            await asyncio.sleep(interval)
            now = _signature(path)
            if now is None or now == seen:
                continue
            try:
                keyring = Keyring.from_json(path.read_bytes())
            except (OSError, PersonalDataKeysError) as e:
                log.error("the personal-data keys file changed but cannot be used; keeping the keys in use",
                          extra={"error": str(e)})  # fmt: skip
                seen = now
                continue
            seen = now
            if keyring != svc.app.state.keyring:
                svc.app.state.keyring = keyring
                log.info("personal-data keys reloaded", extra={"active": keyring.active, "keys": sorted(keyring.keys)})

    async def start(s) -> None:
        s.spawn(loop(), name="keyring-watch")

    svc.on_start(start)
