"""The alert feed against a real JetStream: a desk client that does not keep up is cut off with a hint to
reconnect, without holding back the others; ids are stream sequences, so the reconnect resumes with no gap."""

from __future__ import annotations

import asyncio

import orjson
import pytest_asyncio

from jinshui.contracts import streams
from jinshui.contracts.streams import Naming
from jinshui.gateway.feed import AlertFeed
from jinshui.kit import natsconn
from jinshui.kit.settings import ServiceSettings
from jinshui.kit.testing import eventually

QUEUE = 8


@pytest_asyncio.fixture
async def feed(servers, stream_prefix):
    naming = Naming(stream_prefix)
    nc = await natsconn.connect(ServiceSettings(nats_url=servers.nats_url), name="feed-test")
    js = nc.jetstream()
    await natsconn.ensure_streams(js, naming, (streams.RISK, streams.REGISTRY))
    f = AlertFeed(js=js, naming=naming, buffer=1000, client_queue=QUEUE, heartbeat=0.2)
    await f.start(book_within=5)
    f.publish = lambda n: publish(js, naming, n)
    yield f
    await f.stop()
    await nc.close()


async def publish(js, naming: Naming, n: int) -> None:
    for i in range(n):
        event = {"type": "org.jinshui.risk.alert.raised.v1", "data": {"alert_id": f"a{i}", "grid": "G01", "beat": "B1"}}
        await js.publish(naming.subject(f"risk.alert.raised.a{i}"), orjson.dumps(event))


def frames(texts: list[str]) -> list[tuple[str | None, str]]:
    """(id, event) of each SSE frame that is not a comment."""
    out = []
    for text in texts:
        if text.startswith(":"):
            continue
        fields = dict(line.split(": ", 1) for line in text.strip().split("\n"))
        out.append((fields.get("id"), fields["event"]))
    return out


async def test_a_slow_client_is_cut_off_with_a_hint_and_the_others_get_everything(feed):
    slow, quick = feed.events(None), feed.events(None)
    assert await anext(slow) == ": connected\n\n"  # both are registered, then the slow one stops reading
    assert await anext(quick) == ": connected\n\n"
    got: list[str] = []

    async def read_quick() -> None:
        async for text in quick:
            got.append(text)

    reader = asyncio.create_task(read_quick())
    try:
        await feed.publish(QUEUE * 3)
        await eventually(lambda: len(frames(got)) == QUEUE * 3, what="every alert on the quick client")
        assert [int(i) for i, _ in frames(got)] == sorted(int(i) for i, _ in frames(got))

        # The slow client gets what its queue held, then the hint; its stream ends there.
        rest = [text async for text in slow]
        received = frames(rest)
        assert received[-1] == (None, "reconnect") and "Last-Event-ID" in rest[-1]
        alerts = [int(i) for i, e in received if e == "alert"]
        assert 0 < len(alerts) <= QUEUE + 1 and alerts == sorted(alerts)

        # Reconnecting with the last id it saw resumes exactly after it: no gap, no repeat.
        resumed = feed.events(alerts[-1])
        again = []
        async for text in resumed:
            if text == ": connected\n\n":
                break
            again.append(text)
        ids = [int(i) for i, _ in frames(again)]
        assert ids == [int(i) for i, _ in frames(got)][len(alerts) :]
        await resumed.aclose()
    finally:
        reader.cancel()
