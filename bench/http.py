"""A lean keep-alive HTTP/1.1 client for the load generator's hot paths.

httpx costs 1–5 ms of the load generator's CPU per request on a 2-core machine (a raw socket to the same uvicorn
answers in well under 1 ms), which would cap and distort what the scenarios offer. Setup calls still use httpx.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import orjson

# Kept-alive connections idle longer than this are not reused (uvicorn closes them after 5 s).
KEEP_ALIVE = 4.0


class LeanHttpError(Exception):
    """The connection failed or the response could not be read."""


class _Stale(Exception):
    """The connection was closed before any answer came."""


@dataclass
class Response:
    status_code: int
    headers: dict[str, str]
    content: bytes

    def json(self):
        return orjson.loads(self.content)


class LeanHttp:
    """Keep-alive connections to one host; at most `max_connections` requests in flight."""

    def __init__(self, base_url: str, *, max_connections: int = 256, timeout: float = 60) -> None:
        parts = urlsplit(base_url)
        self.host, self.port, self.netloc = parts.hostname, parts.port or 80, parts.netloc
        self.timeout = timeout
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []
        self._slots = asyncio.Semaphore(max_connections)
        self._all: set[asyncio.StreamWriter] = set()

    async def post(self, path: str, *, content: bytes, headers: dict[str, str]) -> Response:
        return await self.request("POST", path, content=content, headers=headers)

    async def get(self, path: str, *, headers: dict[str, str]) -> Response:
        return await self.request("GET", path, headers=headers)

    async def request(self, method: str, path: str, *, content: bytes = b"", headers: dict[str, str]) -> Response:
        head = [f"{method} {path} HTTP/1.1", f"Host: {self.netloc}", f"Content-Length: {len(content)}"]
        head += [f"{k}: {v}" for k, v in headers.items()]
        raw = ("\r\n".join(head) + "\r\n\r\n").encode() + content
        async with self._slots:
            while True:
                reused = self._take_idle()
                reader, writer = reused or await self._connect()
                try:
                    writer.write(raw)
                    response = await asyncio.wait_for(self._read(reader), self.timeout)
                except _Stale:
                    self._close(writer)
                    if reused:  # the server closed a kept-alive connection before it read this request
                        continue
                    raise LeanHttpError("the server closed the connection without an answer") from None
                except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, TimeoutError) as e:
                    self._close(writer)
                    raise LeanHttpError(f"{type(e).__name__}: {e}") from e
                except BaseException:
                    self._close(writer)
                    raise
                break
            if response.headers.get("connection", "").lower() == "close":
                self._close(writer)
            else:
                self._idle.append((reader, writer, time.monotonic()))
            return response

    def _take_idle(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        while self._idle:
            reader, writer, since = self._idle.pop()
            if time.monotonic() - since < KEEP_ALIVE and not reader.at_eof():
                return reader, writer
            self._close(writer)
        return None

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            reader, writer = await asyncio.open_connection(self.host, self.port, limit=1 << 22)
        except OSError as e:
            raise LeanHttpError(f"connect: {e}") from e
        self._all.add(writer)
        return reader, writer

    @staticmethod
    async def _read(reader: asyncio.StreamReader) -> Response:
        try:
            status_line = await reader.readline()
        except ConnectionResetError as e:
            raise _Stale() from e
        if not status_line:
            raise _Stale()
        status = int(status_line.split()[1])
        headers: dict[str, str] = {}
        while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        if "content-length" in headers:
            body = await reader.readexactly(int(headers["content-length"]))
        elif "chunked" in headers.get("transfer-encoding", ""):
            chunks = []
            while (size := int((await reader.readline()).split(b";")[0].strip() or b"0", 16)) > 0:
                chunks.append((await reader.readexactly(size + 2))[:-2])
            await reader.readline()
            body = b"".join(chunks)
        else:
            body = b""
        return Response(status, headers, body)

    def _close(self, writer: asyncio.StreamWriter) -> None:
        self._all.discard(writer)
        with contextlib.suppress(Exception):
            writer.close()

    async def aclose(self) -> None:
        for writer in list(self._all):
            self._close(writer)
        self._idle.clear()
