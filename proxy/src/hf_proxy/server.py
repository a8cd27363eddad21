"""A small HTTP/1.1 server on asyncio + httptools: keep-alive, pipelining, chunked streaming.

Chosen over aiohttp/uvicorn by measurement (benchmarks/proxy_overhead.py): per request it does one
parse, one dispatch and one write. The handler is `async def handler(request) -> None` and answers
through `request.respond(...)` or `request.start_stream(...)`. A client that goes away cancels the
handler's task, which closes its upstream connection (vLLM aborts the request on disconnect).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from http import HTTPStatus

import httptools

log = logging.getLogger("hf_proxy")

Handler = Callable[["Request"], Awaitable[None]]

_REASONS = {s.value: s.phrase for s in HTTPStatus}
MAX_HEAD = 65536  # request line and headers, bytes


def status_line(status: int) -> bytes:
    return b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, "Unknown").encode())


class Request:
    __slots__ = (
        "_pending",
        "_proto",
        "body",
        "headers",
        "keep_alive",
        "method",
        "path",
        "query",
        "responded",
        "started",
        "streaming",
    )

    def __init__(
        self, proto: HttpProtocol, method: str, path: str, query: str, headers: dict[str, str]
    ) -> None:
        self._proto = proto
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers  # lower-case names
        self.body = b""
        self.keep_alive = True
        self.responded = False
        self.streaming = False
        self.started = 0.0
        self._pending: list[bytes] = []

    # -- plain responses -------------------------------------------------------------------
    def respond(
        self,
        status: int,
        body: bytes = b"",
        content_type: str | None = "application/json",
        headers: list[tuple[str, str]] | None = None,
        raw_headers: bytes = b"",
    ) -> None:
        """A whole answer; `raw_headers` are ready-made header lines (each ending in CRLF)."""
        if self.responded:
            return
        self.responded = True
        parts = [status_line(status)]
        if content_type and body:
            parts.append(b"content-type: " + content_type.encode() + b"\r\n")
        if headers:
            for k, v in headers:
                parts.append(f"{k}: {v}\r\n".encode("latin-1", "replace"))
        if raw_headers:
            parts.append(raw_headers)
        parts.append(b"content-length: %d\r\n" % len(body))
        if not self.keep_alive:
            parts.append(b"connection: close\r\n")
        parts.append(b"\r\n")
        parts.append(body)
        self._proto.write(b"".join(parts))

    # -- chunked streams -------------------------------------------------------------------
    def start_stream(
        self, status: int, content_type: str, headers: list[tuple[str, str]] | None = None
    ) -> None:
        self.responded = True
        self.streaming = True
        parts = [status_line(status), b"content-type: " + content_type.encode() + b"\r\n"]
        if headers:
            for k, v in headers:
                parts.append(f"{k}: {v}\r\n".encode("latin-1", "replace"))
        parts.append(b"transfer-encoding: chunked\r\ncache-control: no-cache\r\n")
        if not self.keep_alive:
            parts.append(b"connection: close\r\n")
        parts.append(b"\r\n")
        self._proto.write(b"".join(parts))

    def write_chunk(self, data: bytes) -> None:
        if self._pending:
            self._flush()
        if data:
            self._proto.write(b"%x\r\n%b\r\n" % (len(data), data))

    def write_chunk_soon(self, data: bytes) -> None:
        """Queue stream data and send it at the end of this turn of the event loop, with whatever
        else arrives meanwhile: one write (and one chunk) for many upstream events."""
        if not self._pending:
            asyncio.get_running_loop().call_soon(self._flush)
        self._pending.append(data)

    def _flush(self) -> None:
        if self._pending:
            data = b"".join(self._pending)
            self._pending.clear()
            if data:
                self._proto.write(b"%x\r\n%b\r\n" % (len(data), data))

    def end_stream(self) -> None:
        self._flush()
        self._proto.write(b"0\r\n\r\n")
        self.streaming = False

    async def drain(self) -> None:
        await self._proto.drain()

    @property
    def closed(self) -> bool:
        return self._proto.transport is None


class HttpProtocol(asyncio.Protocol):
    """One client connection. Requests are handled one after another (pipelining-safe)."""

    def __init__(self, handler: Handler, max_body: int, on_too_large: Callable[[Request], None]) -> None:
        self.handler = handler
        self.max_body = max_body
        self.on_too_large = on_too_large
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self._url = b""
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._body_len = 0
        self._too_large = False
        self._head_len = 0
        self._queue: deque[Request] = deque()
        self._task: asyncio.Task[None] | None = None
        self._paused = False
        self._drain_waiter: asyncio.Future[None] | None = None

    # -- asyncio callbacks -----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.transport is None:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._bad_request()
        except httptools.HttpParserError:
            self._bad_request()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self._queue.clear()
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_exception(ConnectionResetError("client went away"))

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)
        self._drain_waiter = None

    # -- httptools callbacks ---------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = {}
        self._body = []
        self._body_len = 0
        self._too_large = False
        self._head_len = 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_len += len(url)
        if self._head_len > MAX_HEAD:
            self._reject(431, b"Request header fields too large")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_len += len(name) + len(value)
        if self._head_len > MAX_HEAD:
            self._reject(431, b"Request header fields too large")
            return
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        cl = self._headers.get("content-length")
        if cl is not None and cl.isdigit() and int(cl) > self.max_body:
            self._too_large = True
        elif self._headers.get("expect", "").lower() == "100-continue" and self.transport is not None:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        if self._too_large:
            return
        self._body_len += len(body)
        if self._body_len > self.max_body:
            self._too_large = True
            self._body = []
            return
        self._body.append(body)

    def on_message_complete(self) -> None:
        url = httptools.parse_url(self._url)
        path = url.path.decode("latin-1")
        query = url.query.decode("latin-1") if url.query else ""
        req = Request(self, self.parser.get_method().decode(), path, query, self._headers)
        req.body = b"".join(self._body)
        req.keep_alive = self.parser.should_keep_alive() and not self._too_large
        if self._too_large:
            req.path = "\x00too-large"
        self._queue.append(req)
        if self._task is None:
            self._next()

    # -- request loop ----------------------------------------------------------------------
    def _next(self) -> None:
        if not self._queue or self.transport is None:
            self._task = None
            return
        req = self._queue.popleft()
        self._task = asyncio.get_running_loop().create_task(self._run(req))

    async def _run(self, req: Request) -> None:
        try:
            if req.path == "\x00too-large":
                self.on_too_large(req)
            else:
                await self.handler(req)
        except asyncio.CancelledError:
            return
        except Exception:
            log.exception("unhandled error on %s %s", req.method, req.path)
            if not req.responded:
                req.respond(500, b'{"error":"Internal proxy error","error_type":"proxy"}')
            elif req.streaming:
                self.close()
                return
        if not req.responded:
            req.respond(500, b'{"error":"No response","error_type":"proxy"}')
        if not req.keep_alive:
            self.close()
            return
        self._next()

    # -- writing ---------------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    async def drain(self) -> None:
        if self.transport is None:
            raise ConnectionResetError("client went away")
        if not self._paused:
            return
        if self._drain_waiter is None:
            self._drain_waiter = asyncio.get_running_loop().create_future()
        await self._drain_waiter

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def _bad_request(self) -> None:
        self._reject(400, b"Bad Request")

    def _reject(self, status: int, body: bytes) -> None:
        """Answer a request that cannot be parsed, and close the connection."""
        if self.transport is not None:
            self.transport.write(
                status_line(status)
                + b"content-type: text/plain\r\ncontent-length: %d\r\nconnection: close\r\n\r\n" % len(body)
                + body
            )
            with contextlib.suppress(Exception):
                self.transport.close()
            self.transport = None
