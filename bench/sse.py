"""A lean SSE client on asyncio streams: hundreds of desk connections in the load generator's one process.

httpx costs too much per event at 500 connections; this reads HTTP/1.1 chunked framing and SSE text directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from urllib.parse import urlsplit

import orjson

RAISED = "org.jinshui.risk.alert.raised."
# Called with (client, household code, arrival time from time.perf_counter()) for each alert raised.
OnAlert = Callable[["DeskClient", str, float], None]
OnRaised = Callable[["DeskClient", dict, float], None]


class DeskClient:
    """One desk officer's alert stream (`GET /v1/alerts/stream`), counting what arrives."""

    def __init__(
        self, url: str, token: str, *, on_alert: OnAlert, index: int = 0, on_raised: OnRaised | None = None
    ) -> None:
        self.url, self.token, self.on_alert, self.index = url, token, on_alert, index
        self.on_raised = on_raised  # every raised alert's data, household or not (gate sightings have none)
        self.connected = asyncio.Event()
        self.closed = asyncio.Event()
        self.status: int | None = None
        self.error: str | None = None
        self.alerts = 0
        self.beats: set[str] = set()  # the beats of the alerts this client received
        self.other_events: dict[str, int] = {}
        self._task: asyncio.Task | None = None
        self._writer: asyncio.StreamWriter | None = None
        self.last_id: str | None = None  # the last SSE id received: sent back as Last-Event-ID on reconnecting
        self.reconnects = 0  # streams the gateway ended with a reconnect hint (a slow client, a gateway stopping)
        self._hinted = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"desk-{self.index}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task

    async def _run(self) -> None:
        try:
            while True:
                self._hinted = False
                await self._read()
                if not self._hinted or self.reconnects >= 100:
                    break
                # As the desk console does: the gateway ended the stream (this client fell behind, or it is
                # stopping) and asks to come back with Last-Event-ID; nothing is skipped or repeated.
                self.reconnects += 1
                if self._writer is not None:
                    self._writer.close()
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self.error = f"{type(e).__name__}: {e}"
        finally:
            if self._writer is not None:
                self._writer.close()
            self.closed.set()

    async def _read(self) -> None:
        parts = urlsplit(self.url)
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port, limit=1 << 22)
        self._writer = writer
        writer.write(
            (
                f"GET {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nAuthorization: Bearer {self.token}\r\n"
                + (f"Last-Event-ID: {self.last_id}\r\n" if self.last_id else "")
                + "Accept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n"
            ).encode()
        )
        await writer.drain()
        status_line = await reader.readline()
        self.status = int(status_line.split()[1])
        headers: dict[str, str] = {}
        while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        if self.status != 200:
            self.error = f"HTTP {self.status}"
            return
        buffer = b""
        chunked = "chunked" in headers.get("transfer-encoding", "")
        while True:
            if chunked:
                size_line = await reader.readline()
                if not size_line:
                    return
                size = int(size_line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    return
                data = (await reader.readexactly(size + 2))[:-2]
            else:
                data = await reader.read(65536)
                if not data:
                    return
            buffer += data
            while (end := buffer.find(b"\n\n")) >= 0:
                block, buffer = buffer[:end], buffer[end + 2 :]
                self._event(block)

    def _event(self, block: bytes) -> None:
        now = time.perf_counter()
        kind, data = "message", b""
        for line in block.split(b"\n"):
            if line.startswith(b":"):
                self.connected.set()
            elif line.startswith(b"event:"):
                kind = line[6:].strip().decode()
            elif line.startswith(b"id:"):
                self.last_id = line[3:].strip().decode()
            elif line.startswith(b"data:"):
                data = line[5:].strip()
        if kind == "alert":
            event = orjson.loads(data)
            if event.get("type", "").startswith(RAISED):
                self.alerts += 1
                data = event.get("data") or {}
                if data.get("beat"):
                    self.beats.add(data["beat"])
                if data.get("household_code"):
                    self.on_alert(self, data["household_code"], now)
                if self.on_raised is not None:
                    self.on_raised(self, data, now)
                return
            kind = event.get("type", "alert")
        if kind == "reconnect":
            self._hinted = True
        if kind != "message":
            self.other_events[kind] = self.other_events.get(kind, 0) + 1
