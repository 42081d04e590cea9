"""The alert feed: one ordered consumer per gateway process feeding a ring buffer; SSE ids are stream sequences.

Each client sees only the alerts of its scope (an officer their beat, a grid worker their grids; see kit.scope),
from an in-memory copy of the registry's assignments that a second ordered consumer keeps current: an assignment
made or ended applies to connected clients from the next alert on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import orjson
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from jinshui.contracts import streams
from jinshui.contracts.envelope import CloudEvent
from jinshui.contracts.streams import Naming
from jinshui.kit import scope as scopes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FeedItem:
    seq: int
    subject: str
    data: bytes
    grid: str | None = None
    beat: str | None = None

    @classmethod
    def of(cls, msg) -> FeedItem:
        try:
            data = orjson.loads(msg.data).get("data") or {}
        except (orjson.JSONDecodeError, AttributeError):
            data = {}
        return cls(msg.metadata.sequence.stream, msg.subject, msg.data, data.get("grid"), data.get("beat"))

    def admitted(self, scope: scopes.Scope | None) -> bool:
        return scopes.admits(scope, grid=self.grid, beat=self.beat)


class _Client:
    def __init__(self, size: int) -> None:
        # Bounded by hand (size), so that the end-of-stream mark (None) always fits behind what is queued.
        self.queue: asyncio.Queue[FeedItem | None] = asyncio.Queue()
        self.size = size
        self.overflowed = False

    def offer(self, item: FeedItem) -> bool:
        if self.queue.qsize() >= self.size:
            return False
        self.queue.put_nowait(item)
        return True


class AlertFeed:
    def __init__(self, *, js, naming: Naming, buffer: int, client_queue: int, heartbeat: float) -> None:
        self.js, self.naming = js, naming
        self.buffer: deque[FeedItem] = deque(maxlen=buffer)
        self.client_queue, self.heartbeat = client_queue, heartbeat
        self._clients: set[_Client] = set()
        self._sub = None
        self._assignments_sub = None
        self.stream = naming.stream(streams.RISK)
        self.subject = naming.subject("risk.alert.>")
        self.book = scopes.Book()
        self.book_ready = asyncio.Event()
        self.closing = False

    async def start(self, *, book_within: float = 30.0) -> None:
        await self._follow_assignments(book_within)
        info = await self.js.stream_info(self.stream)
        start = max(1, info.state.last_seq - self.buffer.maxlen + 1)
        self._sub = await self.js.subscribe(
            self.subject,
            stream=self.stream,
            ordered_consumer=True,
            cb=self._on_msg,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start),
        )

    async def _follow_assignments(self, within: float) -> None:
        """Read every assignment event so far (then follow the new ones) before serving a scoped client."""

        async def on_assignment(msg) -> None:
            try:
                self.book.apply(CloudEvent.model_validate_json(msg.data))
            except Exception:  # a malformed event must not stop the feed; it narrows no one
                log.exception("an assignment event the feed cannot read (seq %s)", msg.metadata.sequence.stream)
            if msg.metadata.num_pending == 0:
                self.book_ready.set()

        self._assignments_sub = await self.js.subscribe(
            self.naming.subject("registry.assignment.>"),  # registry.assignment.changed[.<area>]
            stream=self.naming.stream(streams.REGISTRY),
            ordered_consumer=True,
            cb=on_assignment,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
        )
        if (await self._assignments_sub.consumer_info()).num_pending == 0:
            self.book_ready.set()
        await asyncio.wait_for(self.book_ready.wait(), within)

    async def stop(self) -> None:
        for sub in (self._sub, self._assignments_sub):
            if sub is not None:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()

    async def _on_msg(self, msg) -> None:
        item = FeedItem.of(msg)
        if self.buffer and item.seq <= self.buffer[-1].seq:
            return
        self.buffer.append(item)
        for client in list(self._clients):
            if not client.offer(item):
                client.overflowed = True
                self._clients.discard(client)

    def end_streams(self) -> None:
        """End every client's stream, after what it has queued, with a hint to reconnect (to another gateway)."""
        self.closing = True
        for client in list(self._clients):
            client.queue.put_nowait(None)

    def end_streams_on_signals(self) -> None:
        """On SIGTERM or SIGINT, end the streams at once (then let the server's own handler run): a server stopping
        gracefully waits for open responses, and an SSE stream never finishes by itself."""
        if threading.current_thread() is not threading.main_thread():
            return
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous = signal.getsignal(sig)
            if not callable(previous):
                continue

            def on_signal(signum, frame, previous=previous) -> None:
                loop.call_soon_threadsafe(self.end_streams)
                previous(signum, frame)

            signal.signal(sig, on_signal)

    async def _replay(self, after: int, until: int) -> AsyncIterator[FeedItem]:
        """Items with after < seq < until, read from the stream (older than the buffer)."""
        sub = await self.js.subscribe(
            self.subject,
            stream=self.stream,
            ordered_consumer=True,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=after + 1),
        )
        try:
            while True:
                try:
                    msg = await sub.next_msg(timeout=2)
                except Exception:
                    return
                item = FeedItem.of(msg)
                if item.seq >= until:
                    return
                yield item
                if msg.metadata.num_pending == 0:
                    return
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def events(
        self, last_event_id: int | None, scope: Callable[[], scopes.Scope | None] = lambda: None
    ) -> AsyncIterator[str]:
        """SSE text: what came after `last_event_id` (from the buffer, or the stream), then live alerts; only those
        `scope()` (asked again for each alert, so that a new assignment applies at once) admits."""
        client = _Client(self.client_queue)
        self._clients.add(client)
        if self.closing:
            client.queue.put_nowait(None)
        try:
            sent = last_event_id or 0
            if last_event_id is not None:
                first_kept = await self._first_seq()
                if first_kept is not None and last_event_id + 1 < first_kept:
                    yield _sse(None, "reset", b'{"reason": "older than the stream keeps; reload the alerts"}')
                buffered = [i for i in self.buffer if i.seq > last_event_id]
                oldest_buffered = self.buffer[0].seq if self.buffer else None
                if oldest_buffered is None or last_event_id + 1 < oldest_buffered:
                    async for item in self._replay(last_event_id, oldest_buffered or 2**63):
                        sent = item.seq
                        if item.admitted(scope()):
                            yield _sse(item.seq, "alert", item.data)
                for item in buffered:
                    if item.seq > sent:
                        sent = item.seq
                        if item.admitted(scope()):
                            yield _sse(item.seq, "alert", item.data)
            yield ": connected\n\n"
            ended = False
            while True:
                try:
                    item = await asyncio.wait_for(client.queue.get(), self.heartbeat)
                except TimeoutError:
                    if client.overflowed:
                        break
                    yield ": heartbeat\n\n"
                    continue
                if item is None:
                    ended = True
                    break
                if item.seq > sent:
                    sent = item.seq
                    if item.admitted(scope()):
                        yield _sse(item.seq, "alert", item.data)
                if client.overflowed and client.queue.empty():
                    break
            if client.overflowed:
                yield _sse(None, "reconnect", b'{"reason": "client too slow; reconnect with Last-Event-ID"}')
            elif ended:
                yield _sse(None, "reconnect", b'{"reason": "this gateway is stopping; reconnect with Last-Event-ID"}')
        finally:
            self._clients.discard(client)

    async def _first_seq(self) -> int | None:
        try:
            info = await self.js.stream_info(self.stream)
        except NotFoundError:
            return None
        return info.state.first_seq


def _sse(seq: int | None, event: str, data: bytes) -> str:
    head = f"id: {seq}\n" if seq is not None else ""
    return f"{head}event: {event}\ndata: {data.decode()}\n\n"
