# Copyright: selfhost.textgen contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A small HTTP/1.1 client on asyncio protocols, made for many concurrent streaming responses.

Standard library only. Each connection is an ``asyncio.Protocol`` that parses the response in
``data_received`` (status line, headers, chunked / Content-Length / until-close bodies) and hands
body bytes with their arrival time to a handler, without a coroutine switch per read. Idle
keep-alive connections are pooled per endpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import time
from urllib.parse import urlsplit

USER_AGENT = "selfhost.textgen-generation-check/1"
MAX_HEAD = 64 * 1024
MAX_ERROR_BODY = 64 * 1024


class HTTPClientError(Exception):
    """Transport or protocol failure (connect, TLS, malformed response, connection lost)."""


class Endpoint:
    """A base URL with what is needed to talk to it."""

    def __init__(
        self,
        url: str,
        token: str | None = None,
        validate_certs: bool = True,
        ca_path: str | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"url must be an http:// or https:// URL with a host, got {url!r}")
        if parts.username or parts.password:
            raise ValueError("url must not carry credentials: use token")
        self.url = url.rstrip("/")
        self.scheme = parts.scheme
        self.host = parts.hostname
        try:
            self.port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise ValueError(f"url has an invalid port: {url!r}") from None
        self.base_path = parts.path.rstrip("/")
        default_port = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.host_header = host if self.port == default_port else f"{host}:{self.port}"
        self.ssl: ssl.SSLContext | None = None
        if self.scheme == "https":
            ctx = ssl.create_default_context(cafile=ca_path) if ca_path else ssl.create_default_context()
            if not validate_certs:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            ctx.set_alpn_protocols(["http/1.1"])
            self.ssl = ctx
        self._auth = f"Authorization: Bearer {token}\r\n" if token else ""

    def request_bytes(self, method: str, path: str, body: bytes | None, accept: str) -> bytes:
        head = (
            f"{method} {self.base_path}{path} HTTP/1.1\r\nHost: {self.host_header}\r\n"
            f"User-Agent: {USER_AGENT}\r\nAccept: {accept}\r\n{self._auth}"
        )
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        return (head + "\r\n").encode("latin-1") + (body or b"")

    def describe(self) -> str:
        return f"{self.host}:{self.port}"


class ResponseHandler:
    """Receives one response. Subclass it; the base collects a bounded body."""

    def __init__(self) -> None:
        self.status: int | None = None
        self.reason = ""
        self.headers: dict[str, str] = {}
        self.body = bytearray()
        self.truncated = False

    def on_head(self, status: int, reason: str, headers: dict[str, str], now: float) -> None:
        self.status, self.reason, self.headers = status, reason, headers

    def on_body(self, data: bytes, now: float) -> None:
        room = MAX_ERROR_BODY - len(self.body)
        if room > 0:
            self.body += data[:room]
        if len(data) > room:
            self.truncated = True

    def on_end(self, now: float) -> None:
        """The body is complete."""


_HEAD, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_CRLF, _TRAILERS, _LENGTH, _CLOSE, _DONE = range(8)


class Connection(asyncio.Protocol):
    """One HTTP/1.1 connection; one request at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.used = 0
        self._handler: ResponseHandler | None = None
        self._future: asyncio.Future | None = None
        self._state = _DONE
        self._buf = b""
        self._remaining = 0
        self._keep_alive = True
        self.received = 0
        self._head_request = False

    # asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._state == _CLOSE and exc is None:
            try:
                self._finish(time.perf_counter())
            except Exception as error:  # the handler rejected the end of the stream
                if self._future is not None and not self._future.done():
                    self._future.set_exception(error)
            return
        if self._future is not None and not self._future.done():
            where = "before the response" if self.received == 0 else "in the middle of the response"
            detail = f": {exc}" if exc else ""
            self._future.set_exception(HTTPClientError(f"connection closed by the server {where}{detail}"))

    def eof_received(self) -> bool | None:
        return None  # close the transport; connection_lost follows

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        self.received += len(data)
        try:
            self._parse(data, now)
        except Exception as exc:  # protocol errors, stream errors raised by the handler, handler bugs
            self._fail(exc)

    # requests
    def send(self, request: bytes, handler: ResponseHandler, head_request: bool = False) -> asyncio.Future:
        """Write the request; the future resolves when the response is complete."""
        if self.transport is None:
            raise HTTPClientError("not connected")
        self._handler = handler
        self._future = self._loop.create_future()
        self._state = _HEAD
        self._buf = b""
        self.received = 0
        self._keep_alive = True
        self._head_request = head_request
        self.used += 1
        self.transport.write(request)
        return self._future

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    @property
    def reusable(self) -> bool:
        return not self.closed and self._keep_alive and self._state == _DONE

    def _fail(self, exc: Exception) -> None:
        self._keep_alive = False
        if self._future is not None and not self._future.done():
            self._future.set_exception(exc)
        self.close()

    def _finish(self, now: float) -> None:
        self._state = _DONE
        handler = self._handler
        if handler is not None:
            handler.on_end(now)
        if self._future is not None and not self._future.done():
            self._future.set_result(handler)

    def _parse(self, data: bytes, now: float) -> None:
        buf = self._buf + data if self._buf else data
        self._buf = b""
        pos = 0
        end = len(buf)
        handler = self._handler
        while pos < end:
            state = self._state
            if state == _CHUNK_DATA:
                take = min(self._remaining, end - pos)
                handler.on_body(buf[pos : pos + take] if (pos or take != end) else buf, now)
                pos += take
                self._remaining -= take
                if self._remaining == 0:
                    self._state = _CHUNK_CRLF
            elif state == _CHUNK_SIZE:
                i = buf.find(b"\n", pos)
                if i < 0:
                    if end - pos > 1024:
                        raise HTTPClientError("malformed chunked encoding (chunk size line too long)")
                    self._buf = buf[pos:]
                    return
                line = buf[pos:i].split(b";", 1)[0].strip()
                pos = i + 1
                try:
                    size = int(line, 16)
                except ValueError:
                    raise HTTPClientError(f"malformed chunked encoding (chunk size {line[:40]!r})") from None
                if size == 0:
                    self._state = _TRAILERS
                else:
                    self._remaining = size
                    self._state = _CHUNK_DATA
            elif state == _CHUNK_CRLF:
                if buf.startswith(b"\r\n", pos):
                    pos += 2
                elif buf.startswith(b"\n", pos):
                    pos += 1
                elif end - pos < 2 and buf[pos:] == b"\r":
                    self._buf = buf[pos:]
                    return
                else:
                    raise HTTPClientError("malformed chunked encoding (missing CRLF after a chunk)")
                self._state = _CHUNK_SIZE
            elif state == _LENGTH:
                take = min(self._remaining, end - pos)
                handler.on_body(buf[pos : pos + take], now)
                pos += take
                self._remaining -= take
                if self._remaining == 0:
                    self._finish(now)
            elif state == _CLOSE:
                handler.on_body(buf[pos:], now)
                pos = end
            elif state == _HEAD:
                i = buf.find(b"\r\n\r\n", pos)
                sep = 4
                if i < 0:
                    i = buf.find(b"\n\n", pos)
                    sep = 2
                if i < 0:
                    if end - pos > MAX_HEAD:
                        raise HTTPClientError("response head larger than 64 KiB")
                    self._buf = buf[pos:]
                    return
                head = buf[pos:i]
                pos = i + sep
                status = self._parse_head(head, now)
                if 100 <= status < 200:
                    self._state = _HEAD  # interim response: read the next head
            elif state == _TRAILERS:
                i = buf.find(b"\n", pos)
                if i < 0:
                    self._buf = buf[pos:]
                    return
                line = buf[pos:i].strip()
                pos = i + 1
                if not line:
                    self._finish(now)
            else:  # _DONE: bytes after a complete response
                self._keep_alive = False
                return

    def _parse_head(self, head: bytes, now: float) -> int:
        lines = head.decode("latin-1").replace("\r\n", "\n").split("\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise HTTPClientError(f"not an HTTP/1.x response: {lines[0][:80]!r}")
        status = int(parts[1])
        reason = parts[2] if len(parts) > 2 else ""
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                raise HTTPClientError(f"malformed response header: {line[:80]!r}")
            key = name.strip().lower()
            value = value.strip()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        if 100 <= status < 200:
            return status
        conn_tokens = headers.get("connection", "").lower()
        if parts[0] == "HTTP/1.0":
            self._keep_alive = "keep-alive" in conn_tokens
        else:
            self._keep_alive = "close" not in conn_tokens
        self._handler.on_head(status, reason, headers, now)
        if self._head_request or status in (204, 304):
            self._finish(now)
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            self._state = _CHUNK_SIZE
        elif "content-length" in headers:
            try:
                self._remaining = int(headers["content-length"])
            except ValueError:
                raise HTTPClientError(f"bad Content-Length {headers['content-length']!r}") from None
            self._state = _LENGTH
            if self._remaining == 0:
                self._finish(now)
        else:
            self._keep_alive = False
            self._state = _CLOSE
        return status


class Pool:
    """Keep-alive connections to one endpoint."""

    def __init__(self, endpoint: Endpoint, connect_timeout: float = 10.0) -> None:
        self.endpoint = endpoint
        self.connect_timeout = connect_timeout
        self._idle: list[Connection] = []
        self._all: set[Connection] = set()

    async def _connect(self) -> Connection:
        loop = asyncio.get_running_loop()
        ep = self.endpoint
        try:
            _transport, conn = await asyncio.wait_for(
                loop.create_connection(
                    lambda: Connection(loop),
                    ep.host,
                    ep.port,
                    ssl=ep.ssl,
                    server_hostname=ep.host if ep.ssl else None,
                ),
                self.connect_timeout,
            )
        except asyncio.TimeoutError:
            raise HTTPClientError(
                f"cannot connect to {ep.describe()}: no answer within {self.connect_timeout:g} s"
            ) from None
        except ssl.SSLError as exc:
            raise HTTPClientError(f"TLS handshake with {ep.describe()} failed: {exc}") from None
        except OSError as exc:
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            raise HTTPClientError(f"cannot connect to {ep.describe()}: {reason}") from None
        self._all.add(conn)
        return conn

    async def request(
        self,
        method: str,
        path: str,
        body: bytes | None,
        handler: ResponseHandler,
        accept: str = "application/json",
    ) -> ResponseHandler:
        """Send a request and wait for its complete response (the handler sees it as it comes).

        A pooled connection that the server closed while idle is retried once on a new one.
        """
        raw = self.endpoint.request_bytes(method, path, body, accept)
        for attempt in (0, 1):
            conn = None
            while self._idle:
                cand = self._idle.pop()
                if not cand.closed:
                    conn = cand
                    break
                self._all.discard(cand)
            reused = conn is not None
            if conn is None:
                conn = await self._connect()
            try:
                result = await conn.send(raw, handler, head_request=(method == "HEAD"))
            except HTTPClientError:
                self._all.discard(conn)
                conn.close()
                if reused and attempt == 0 and conn.received == 0:
                    continue  # stale keep-alive connection
                raise
            except BaseException:
                self._all.discard(conn)
                conn.close()
                raise
            if conn.reusable:
                self._idle.append(conn)
            else:
                self._all.discard(conn)
                conn.close()
            return result
        raise HTTPClientError("unreachable")  # pragma: no cover

    async def get(self, path: str, accept: str = "application/json") -> ResponseHandler:
        return await self.request("GET", path, None, ResponseHandler(), accept=accept)

    def close(self) -> None:
        for conn in list(self._all):
            conn.close()
        self._all.clear()
        self._idle.clear()
