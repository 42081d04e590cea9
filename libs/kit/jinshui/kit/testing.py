"""Helpers for tests: wait for asynchronous results by polling with a deadline, never a fixed sleep."""

from __future__ import annotations

import asyncio
import time


async def eventually(check, *, timeout: float = 20.0, interval: float = 0.05, what: str = "condition"):
    """Poll `check` (sync or async) until it returns a truthy value, or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if asyncio.iscoroutine(last):
            last = await last
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value: {last!r}")


def id_number(first17: str) -> str:
    """A well-formed (fictitious) resident ID number: the 17 digits given and their GB 11643 check character."""
    from jinshui.kit.pii import id_number_check_digit

    return first17 + id_number_check_digit(first17)
