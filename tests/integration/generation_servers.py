"""A small streaming server of our own for the generation_check / generation_compare tests.

SYNTHETIC: nothing here is a model. A standard library asyncio server that answers TGI
``/generate_stream`` and OpenAI ``/v1/completions`` / ``/v1/chat/completions`` streams with made-up
tokens ("tok0 tok1 ...") at a set pace, and can misbehave on purpose (401 without the token, 5xx
after N requests, malformed SSE, a first token that never comes, a connection cut mid-stream, an
error event). Also the fast upstream of benchmarks/check_ceiling.py. (The TGI format in front of the
real vLLM is the real hf-proxy.)

Run one as a process: ``python generation_servers.py --port 19010 [options]``; it prints
``READY <port>`` when it listens. ``GET /stats`` returns the requests it saw (not counted).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from pathlib import Path

STATS = {"posts": 0, "streams_open": 0, "max_streams_open": 0, "tokens_sent": 0, "ticks": 0, "late_ticks": 0}
_EVENTS: dict[tuple, bytes] = {}  # pre-encoded events of well-behaved streams
# ticks and late ticks of every worker process (--workers), in shared memory: [ticks, late] per worker
_SHARED = None
_WORKER = 0


def _count_tick(late: bool) -> None:
    STATS["ticks"] += 1
    STATS["late_ticks"] += late
    if _SHARED is not None:
        _SHARED[2 * _WORKER] += 1
        _SHARED[2 * _WORKER + 1] += late


def _stats() -> dict:
    out = dict(STATS)
    if _SHARED is not None:
        out["ticks"] = sum(_SHARED[0::2])
        out["late_ticks"] = sum(_SHARED[1::2])
    return out


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _response(status: str, body: bytes, ctype: bytes = b"application/json") -> bytes:
    return (
        b"HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n" % (status.encode(), ctype, len(body))
        + body
    )


STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
    b"X-Accel-Buffering: no\r\nTransfer-Encoding: chunked\r\n\r\n"
)


class Ticker:
    """Writes the next token of every paced stream on one shared timer (cheap for many streams)."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.streams: set[Stream] = set()
        self.task: asyncio.Task | None = None

    def add(self, stream: Stream) -> None:
        self.streams.add(stream)
        if self.task is None:
            self.task = asyncio.ensure_future(self.run())

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            next_at += self.interval
            delay = next_at - loop.time()
            _count_tick(delay <= 0)  # late: the server could not keep the pace
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                next_at = loop.time()
            for stream in list(self.streams):
                if stream.step():
                    self.streams.discard(stream)


class Stream:
    """One streamed answer of the synthetic server."""

    def __init__(self, conn: SyntheticProtocol, api: str, n: int, prompt_len: int) -> None:
        self.conn, self.api, self.n, self.prompt_len = conn, api, n, prompt_len
        self.i = 0
        self.text: list[str] = []
        STATS["streams_open"] += 1
        STATS["max_streams_open"] = max(STATS["max_streams_open"], STATS["streams_open"])

    def event(self) -> bytes:
        cfg = self.conn.cfg
        key = (self.api, self.n, self.prompt_len, self.i)
        cached = _EVENTS.get(key)
        if cached is not None:
            return cached
        i = self.i
        piece = f"tok{i} "
        self.text = [f"tok{k} " for k in range(i + 1)]
        last = i == self.n - 1
        if cfg.malformed and i == 1:
            return b"data: {this is not json\n\n"  # not cached: the options make it differ
        if cfg.error_after is not None and i == cfg.error_after:
            err = {"error": "Incomplete generation stream", "error_type": "incomplete_generation_stream"}
            if self.api != "tgi":
                err = {"error": {"message": "Incomplete generation stream", "type": "InternalServerError"}}
            return b"data: " + json.dumps(err).encode() + b"\n\n"
        if self.api == "tgi":
            ev = {
                "index": i + 1,
                "token": {"id": 1000 + i, "text": piece, "logprob": -0.1, "special": False},
                "generated_text": "".join(self.text) if last else None,
                "details": {
                    "finish_reason": "length",
                    "generated_tokens": self.n,
                    "seed": None,
                    "input_length": self.prompt_len,
                }
                if last
                else None,
            }
            return self._remember(key, b"data: " + json.dumps(ev, separators=(",", ":")).encode() + b"\n\n")
        if self.api == "openai":
            choice = {
                "index": 0,
                "text": piece,
                "logprobs": None,
                "finish_reason": "length" if last else None,
            }
        else:
            choice = {"index": 0, "delta": {"content": piece}, "finish_reason": "length" if last else None}
        ev = {"id": "cmpl-synthetic", "object": "chunk", "model": "synthetic", "choices": [choice]}
        out = b"data: " + json.dumps(ev, separators=(",", ":")).encode() + b"\n\n"
        if last:
            usage = {"prompt_tokens": self.prompt_len, "completion_tokens": self.n}
            out += b"data: " + json.dumps({"choices": [], "usage": usage}).encode() + b"\n\ndata: [DONE]\n\n"
        return self._remember(key, out)

    @staticmethod
    def _remember(key: tuple, data: bytes) -> bytes:
        if len(_EVENTS) < 200_000:
            _EVENTS[key] = data
        return data

    def step(self) -> bool:
        """Send the next token; True when the stream is over."""
        conn, cfg = self.conn, self.conn.cfg
        if conn.transport is None or conn.transport.is_closing():
            self.close()
            return True
        if cfg.cut_after is not None and self.i == cfg.cut_after:
            conn.transport.abort()
            self.close()
            return True
        data = self.event()
        conn.transport.write(_chunk(data))
        STATS["tokens_sent"] += 1
        self.i += 1
        if self.i >= self.n or b'"error"' in data[:20] or (cfg.malformed and self.i == 2):
            conn.transport.write(b"0\r\n\r\n")
            self.close()
            conn.busy = False
            return True
        return False

    def burst(self) -> None:
        """Unpaced: every event at once, each in its own HTTP chunk."""
        out = []
        while True:
            data = self.event()
            out.append(_chunk(data))
            self.i += 1
            if self.i >= self.n:
                break
        out.append(b"0\r\n\r\n")
        STATS["tokens_sent"] += self.n
        self.conn.transport.write(b"".join(out))
        self.close()
        self.conn.busy = False

    def close(self) -> None:
        STATS["streams_open"] -= 1


class SyntheticProtocol(asyncio.Protocol):
    ticker: Ticker | None = None

    def __init__(self, cfg: argparse.Namespace) -> None:
        self.cfg = cfg
        self.buf = b""
        self.transport: asyncio.Transport | None = None
        self.busy = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while not self.busy:
            i = self.buf.find(b"\r\n\r\n")
            if i < 0:
                return
            head = self.buf[:i].decode("latin-1").split("\r\n")
            headers = {}
            for line in head[1:]:
                k, _unused, v = line.partition(":")
                headers[k.strip().lower()] = v.strip()
            length = int(headers.get("content-length", "0"))
            if len(self.buf) < i + 4 + length:
                return
            body = self.buf[i + 4 : i + 4 + length]
            self.buf = self.buf[i + 4 + length :]
            method, path, _unused = head[0].split(" ", 2)
            self.handle(method, path, headers, body)

    def handle(self, method: str, path: str, headers: dict, body: bytes) -> None:
        cfg = self.cfg
        t = self.transport
        if path == "/stats":
            t.write(_response("200 OK", json.dumps(_stats()).encode()))
            return
        if cfg.require_token and headers.get("authorization") != f"Bearer {cfg.require_token}":
            err = {"error": "Authorization header is missing or invalid", "error_type": "authentication"}
            t.write(_response("401 Unauthorized", json.dumps(err).encode()))
            return
        if method == "GET":
            if path == "/info":
                t.write(
                    _response(
                        "200 OK", json.dumps({"model_id": "synthetic/tgi", "router": "synthetic"}).encode()
                    )
                )
            elif path == "/v1/models":
                t.write(_response("200 OK", json.dumps({"data": [{"id": "synthetic"}]}).encode()))
            elif path == "/metrics":
                t.write(_response("200 OK", b"synthetic_requests_total %d\n" % STATS["posts"], b"text/plain"))
            elif path == "/health":
                t.write(_response("200 OK", b""))
            else:
                t.write(_response("404 Not Found", b'{"error":"not found"}'))
            return
        STATS["posts"] += 1
        number = STATS["posts"]
        try:
            req = json.loads(body)
        except ValueError:
            t.write(_response("400 Bad Request", b'{"error":"invalid json"}'))
            return
        if path == "/generate_stream":
            api, n = "tgi", (req.get("parameters") or {}).get("max_new_tokens", 20)
            prompt_len = len(str(req.get("inputs", "")).split())
        elif path == "/v1/completions":
            api, n, prompt_len = "openai", req.get("max_tokens", 16), len(str(req.get("prompt", "")).split())
        elif path == "/v1/chat/completions":
            api, n = "openai_chat", req.get("max_completion_tokens") or req.get("max_tokens") or 16
            prompt_len = sum(len(str(m.get("content", "")).split()) for m in req.get("messages", []))
        else:
            t.write(_response("404 Not Found", b'{"error":"not found"}'))
            return
        if cfg.fail_after is not None and number > cfg.fail_after:
            err = {"error": "Request failed during generation: backend died", "error_type": "generation"}
            t.write(_response("500 Internal Server Error", json.dumps(err).encode()))
            return
        self.busy = True
        t.write(STREAM_HEAD)
        stream = Stream(self, api, int(n), prompt_len)
        if cfg.stall_every and number % cfg.stall_every == 0:
            self.stall_task = asyncio.ensure_future(self.keep_alive_forever())
            return
        loop = asyncio.get_running_loop()
        if cfg.interval > 0:
            loop.call_later(cfg.ttft, SyntheticProtocol.ticker.add, stream)
        elif cfg.ttft > 0:
            loop.call_later(cfg.ttft, stream.burst)
        else:
            stream.burst()

    async def keep_alive_forever(self) -> None:
        """Headers sent, then only keep-alive comments: a first token that never comes."""
        while self.transport is not None and not self.transport.is_closing():
            self.transport.write(_chunk(b":\n\n"))
            await asyncio.sleep(0.5)


# ----- collection import path ----------------------------------------------------------------


def _collection_path() -> None:
    coll = Path(__file__).resolve().parents[2] / ".build" / "collections"
    link = coll / "ansible_collections" / "selfhost" / "textgen"
    if not link.exists():
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(Path(__file__).resolve().parents[2])
    sys.path.insert(0, str(coll))


async def serve(cfg: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    if cfg.interval > 0:
        SyntheticProtocol.ticker = Ticker(cfg.interval)
    ctx = None
    if cfg.tls_cert:
        import ssl

        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(cfg.tls_cert, cfg.tls_key)
    server = await loop.create_server(
        lambda: SyntheticProtocol(cfg),
        "127.0.0.1",
        cfg.port,
        backlog=4096,
        ssl=ctx,
        reuse_port=cfg.workers > 1,
    )
    port = server.sockets[0].getsockname()[1]
    if _WORKER == 0:
        print(f"READY {port}", flush=True)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--ttft", type=float, default=0.0, help="seconds before the first token")
    ap.add_argument("--interval", type=float, default=0.0, help="seconds between tokens (0: all at once)")
    ap.add_argument("--require-token")
    ap.add_argument("--fail-after", type=int, help="answer 500 to every POST after this many")
    ap.add_argument("--malformed", action="store_true", help="the second event is not JSON")
    ap.add_argument("--error-after", type=int, help="send an error event in place of token N")
    ap.add_argument("--cut-after", type=int, help="close the connection after N tokens")
    ap.add_argument("--stall-every", type=int, help="every K-th POST never sends a token")
    ap.add_argument("--cpu", type=int, help="pin this process to one CPU")
    ap.add_argument("--tls-cert", help="serve HTTPS with this PEM certificate (and --tls-key)")
    ap.add_argument("--tls-key")
    ap.add_argument("--workers", type=int, default=1, help="processes sharing the port (SO_REUSEPORT)")
    cfg = ap.parse_args(argv)
    if cfg.cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {cfg.cpu})
    if cfg.workers > 1:
        import multiprocessing.sharedctypes
        import signal

        global _SHARED, _WORKER
        _SHARED = multiprocessing.sharedctypes.RawArray("q", 2 * cfg.workers)
        children = []
        for k in range(1, cfg.workers):
            pid = os.fork()
            if pid == 0:
                _WORKER = k
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                break
            children.append(pid)
        if _WORKER == 0:
            time.sleep(0.3)  # let the workers bind before READY is printed

            def stop(*_unused: object) -> None:
                for pid in children:
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGTERM)
                raise SystemExit(0)

            signal.signal(signal.SIGTERM, stop)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(cfg))


# ----- helpers for tests and benchmarks -----------------------------------------------------------


class ServerProcess:
    """Start a server of this file as a child process; stop it on exit."""

    def __init__(self, port: int, *args: str) -> None:
        import subprocess

        self.port = port
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--port", str(port), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        deadline = time.monotonic() + 30
        line = ""
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if line.startswith("READY") or self.proc.poll() is not None:
                break
        if not line.startswith("READY"):
            self.stop()
            raise RuntimeError(
                f"server did not start: {line}{self.proc.stdout.read() if self.proc.stdout else ''}"
            )
        self.url = f"{'https' if '--tls-cert' in args else 'http'}://127.0.0.1:{port}"

    def stats(self) -> dict:
        import ssl
        import urllib.request

        ctx = ssl._create_unverified_context()  # our own test server
        with urllib.request.urlopen(self.url + "/stats", timeout=5, context=ctx) as r:
            return json.loads(r.read())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except Exception:
                self.proc.kill()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


if __name__ == "__main__":
    main()
