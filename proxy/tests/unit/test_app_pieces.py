"""App pieces that need no upstream: keep-alive comments on idle streams, error mapping."""

from __future__ import annotations

import asyncio
import time

from hf_proxy.app import App, error_body, upstream_error
from hf_proxy.config import Settings
from hf_proxy.metrics import Metrics
from hf_proxy.stream import KEEPALIVE
from hf_proxy.validate import RequestError


class FakeStream:
    closed = False

    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def write_chunk(self, data: bytes) -> None:
        self.chunks.append(data)


def test_keepalive_comment_on_idle_streams():
    async def run() -> tuple[list[bytes], list[bytes]]:
        app = App(Settings(keepalive_interval=0.1), Metrics(1))
        idle, busy = FakeStream(), FakeStream()
        app.streams[idle] = time.monotonic() - 1
        app.streams[busy] = time.monotonic() + 60
        task = asyncio.ensure_future(app.keepalive_loop())
        await asyncio.sleep(0.35)
        task.cancel()
        return idle.chunks, busy.chunks

    idle, busy = asyncio.run(run())
    assert idle and all(c == KEEPALIVE == b":\n\n" for c in idle)
    assert busy == []


def test_upstream_errors_in_tgi_terms():
    e = upstream_error(400, b'{"error": {"message": "bad thing", "type": "BadRequestError", "code": 400}}')
    assert (e.status, e.error_type, e.message) == (422, "validation", "Input validation error: bad thing")
    e = upstream_error(404, b'{"object": "error", "message": "The model `x` does not exist."}')
    assert e.status == 422 and e.message.endswith("does not exist.")
    e = upstream_error(500, b"Internal Server Error")
    assert (e.status, e.error_type) == (424, "generation")
    assert e.message == "Request failed during generation: Internal Server Error"
    assert upstream_error(429, b"{}").status == 429


def test_error_bodies():
    assert error_body(RequestError(422, "m", "validation")) == (
        b'{"error":"m","error_type":"validation"}',
        "application/json",
    )
    assert error_body(RequestError(415, "x", plain=True)) == (b"x", "text/plain; charset=utf-8")
