"""A small SSE client for tests: collects events from the gateway's alert stream in the background."""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass, field

import httpx


@dataclass
class SseEvent:
    id: str | None
    event: str
    data: str

    @property
    def json(self):
        return json.loads(self.data)


@dataclass
class SseClient:
    url: str
    token: str
    last_event_id: str | None = None
    events: list[SseEvent] = field(default_factory=list)
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    status: int | None = None
    _task: asyncio.Task | None = None

    async def __aenter__(self) -> SseClient:
        self._task = asyncio.create_task(self._run())
        done, _ = await asyncio.wait(
            [self._task, asyncio.create_task(self.connected.wait())],
            timeout=15,
            return_when=asyncio.FIRST_COMPLETED,
        )
        if self._task in done:
            self._task.result()
            raise AssertionError(f"alert stream closed at once (status {self.status})")
        if not self.connected.is_set():
            raise AssertionError("alert stream did not connect")
        return self

    async def __aexit__(self, *exc) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task

    @property
    def ended(self) -> bool:
        """The stream closed (the server ended it, or the connection broke)."""
        return self._task is not None and self._task.done()

    @property
    def alerts(self) -> list[SseEvent]:
        return [e for e in self.events if e.event == "alert"]

    async def _run(self) -> None:
        headers = {"Authorization": f"Bearer {self.token}", "Accept": "text/event-stream"}
        if self.last_event_id is not None:
            headers["Last-Event-ID"] = self.last_event_id
        async with (
            httpx.AsyncClient(timeout=httpx.Timeout(10, read=None)) as client,
            client.stream("GET", self.url, headers=headers) as r,
        ):
            self.status = r.status_code
            if r.status_code != 200:
                return
            ev: dict[str, str] = {}
            data: list[str] = []
            async for line in r.aiter_lines():
                if line.startswith(":"):
                    self.connected.set()
                    continue
                if line == "":
                    if data or ev:
                        self.events.append(SseEvent(ev.get("id"), ev.get("event", "message"), "\n".join(data)))
                    ev, data = {}, []
                    continue
                name, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if name == "data":
                    data.append(value)
                else:
                    ev[name] = value
