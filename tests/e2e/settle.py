"""Wait for a stack's asynchronous work to land: every outbox published, every consumer through its stream.

A test that reads what another service made of an event, or asserts that nothing (more) happened (no second report,
no dead letter, the stream unchanged), reads only after this: right after an answer, events are still in an outbox
and consumers still have messages pending, so a one-shot read may count too few, or pass without having looked.
"""

from __future__ import annotations

import httpx

from jinshui.kit.testing import eventually


def _busy(status: dict) -> list[str]:
    """What this service's /status says is still in flight (nothing when it is idle)."""
    busy = []
    if not status.get("ready"):
        busy.append(f"{status.get('service')} not ready")
    if "outbox" in status and status["outbox"].get("backlog") != 0:
        busy.append(f"{status.get('service')} outbox {status['outbox']}")
    for c in status.get("consumers", []):
        if c.get("pending") != 0 or c.get("awaiting_ack") != 0:
            busy.append(f"{c.get('durable')} pending={c.get('pending')} awaiting_ack={c.get('awaiting_ack')}")
    return busy


async def caught_up(stack, *, services=None, timeout: float = 60) -> None:
    """Wait until every service of `stack` (or those named) has published its outbox and has no message pending or
    awaiting its ack, twice in a row: one service's event may be what another's consumer has yet to take."""
    await idle([stack.url(name) for name in (services or stack.services)], timeout=timeout)


async def idle(urls: list[str], *, timeout: float = 60) -> None:
    """`caught_up` for the services at these base URLs (a test that holds URLs, not the stack)."""
    clear, busy = 0, []

    async def settled():
        nonlocal clear, busy
        busy = []
        async with httpx.AsyncClient(timeout=5) as http:
            for url in urls:
                busy += _busy((await http.get(f"{url}/status")).json())
        clear = 0 if busy else clear + 1
        return clear >= 2 or None

    try:
        await eventually(settled, timeout=timeout, interval=0.1, what="every outbox published and every consumer idle")
    except AssertionError as e:
        raise AssertionError(f"{e}; still in flight: {busy}") from None
