"""A pooled HTTP/1.1 client for the upstreams (asyncio + httptools), one pool per upstream per process.

Keep-alive connections are reused; a connection whose response was not read to the end, or whose
caller was cancelled (the proxy's client went away), is closed, which is how vLLM learns to abort.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator

import httptools


class UpstreamError(Exception):
    """Connecting to or talking with an upstream failed (no usable response)."""


class _Conn(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.status = 0
        self.headers: dict[str, str] = {}
        self._headers_fut: asyncio.Future[None] | None = None
        self._chunks: deque[bytes] = deque()
        self._data_fut: asyncio.Future[None] | None = None
        self.complete = False
        self.keep_alive = True
        self.got_bytes = False
        self.exc: BaseException | None = None
        self._whole = False

    # asyncio
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as e:
            self._fail(UpstreamError(f"bad response from upstream: {e}"))
            self.close()

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.transport = None
        if not self.complete:
            self._fail(UpstreamError("upstream closed the connection" + (f": {exc}" if exc else "")))

    def _fail(self, exc: BaseException) -> None:
        if self.exc is None:
            self.exc = exc
        for fut in (self._headers_fut, self._data_fut):
            if fut is not None and not fut.done():
                fut.set_exception(exc)

    # httptools
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()
        if not self._whole and self._headers_fut is not None and not self._headers_fut.done():
            self._headers_fut.set_result(None)

    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)
        if self._data_fut is not None and not self._data_fut.done():
            self._data_fut.set_result(None)

    def on_message_complete(self) -> None:
        self.complete = True
        if self._whole and self._headers_fut is not None and not self._headers_fut.done():
            self._headers_fut.set_result(None)
        if self._data_fut is not None and not self._data_fut.done():
            self._data_fut.set_result(None)

    # use
    def reset(self) -> None:
        self.status = 0
        self.headers = {}
        self._chunks.clear()
        self.complete = False
        self.got_bytes = False
        self.exc = None
        self._headers_fut = None
        self._data_fut = None

    async def send(self, data: bytes, whole: bool = False) -> None:
        """Write a request; return when the response headers are in (or, `whole`, all of it)."""
        assert self.transport is not None
        self._whole = whole
        self._headers_fut = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        await self._headers_fut

    async def read_chunk(self) -> bytes | None:
        """Next piece of the body, or None at its end."""
        while True:
            if self._chunks:
                return self._chunks.popleft()
            if self.complete:
                return None
            if self.exc is not None:
                raise self.exc
            self._data_fut = asyncio.get_running_loop().create_future()
            await self._data_fut

    async def read_all(self) -> bytes:
        parts = []
        while (chunk := await self.read_chunk()) is not None:
            parts.append(chunk)
        return b"".join(parts)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class Response:
    """An upstream response whose body is read by the caller; `release()` when done."""

    __slots__ = ("_conn", "_pool", "headers", "status")

    def __init__(self, pool: Pool, conn: _Conn) -> None:
        self._pool = pool
        self._conn: _Conn | None = conn
        self.status = conn.status
        self.headers = conn.headers

    async def read(self) -> bytes:
        assert self._conn is not None
        try:
            return await self._conn.read_all()
        finally:
            self.release()

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        assert self._conn is not None
        while (chunk := await self._conn.read_chunk()) is not None:
            yield chunk

    def release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            self._pool.put_back(conn)

    def abort(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


class Pool:
    """Idle keep-alive connections to one upstream (host, port)."""

    def __init__(self, host: str, port: int, connect_timeout: float = 5.0, max_idle: int = 256) -> None:
        self.host = host
        self.port = port
        self.connect_timeout = connect_timeout
        self.max_idle = max_idle
        self._idle: deque[_Conn] = deque()
        self._hostport = f"{host}:{port}".encode()

    async def _connect(self) -> _Conn:
        loop = asyncio.get_running_loop()
        try:
            _transport, conn = await asyncio.wait_for(
                loop.create_connection(_Conn, self.host, self.port), self.connect_timeout
            )
        except (OSError, asyncio.TimeoutError) as e:
            raise UpstreamError(f"cannot connect to {self.host}:{self.port}: {e}") from None
        return conn

    def put_back(self, conn: _Conn) -> None:
        if conn.complete and conn.keep_alive and not conn.closed and len(self._idle) < self.max_idle:
            conn.reset()
            self._idle.append(conn)
        else:
            conn.close()

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()

    async def request(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        headers: list[tuple[str, str]] | None = None,
        timeout: float | None = None,
        whole: bool = False,
    ) -> Response:
        """Send a request and return once the response headers are in (body read by the caller), or
        with `whole` once all of the response is in (one wake-up for a small answer)."""
        head = [
            f"{method} {path} HTTP/1.1\r\n".encode(),
            b"host: " + self._hostport + b"\r\n",
        ]
        if body or method in ("POST", "PUT", "PATCH"):
            head.append(b"content-type: application/json\r\ncontent-length: %d\r\n" % len(body))
        if headers:
            for k, v in headers:
                head.append(f"{k}: {v}\r\n".encode("latin-1", "replace"))
        head.append(b"\r\n")
        data = b"".join(head) + body
        # A reused idle connection may have been closed by the server meanwhile: retry once, fresh.
        for attempt in (0, 1):
            reused = False
            conn: _Conn | None = None
            while self._idle:
                c = self._idle.pop()
                if not c.closed:
                    conn, reused = c, True
                    break
            if conn is None:
                conn = await self._connect()
            try:
                if timeout:
                    await asyncio.wait_for(conn.send(data, whole), timeout)
                else:
                    await conn.send(data, whole)
            except UpstreamError:
                conn.close()
                if reused and not conn.got_bytes and attempt == 0:
                    continue
                raise
            except BaseException:
                conn.close()
                raise
            return Response(self, conn)
        raise UpstreamError("unreachable")  # pragma: no cover


async def fetch(
    pool: Pool, method: str, path: str, body: bytes = b"", timeout: float | None = 10.0
) -> tuple[int, bytes]:
    """Whole-body request (health checks, discovery, small calls)."""
    resp = await pool.request(method, path, body, timeout=timeout)
    try:
        if timeout:
            data = await asyncio.wait_for(resp.read(), timeout)
        else:
            data = await resp.read()
    except BaseException:
        resp.abort()
        raise
    return resp.status, data
