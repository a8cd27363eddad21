"""SSE in (vLLM's `data: {...}` events) and out (TGI's events, error events, keep-alive comments)."""

from __future__ import annotations

from typing import Any

import orjson

DONE = object()
KEEPALIVE = b":\n\n"


def event(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def error_event(message: str, error_type: str) -> bytes:
    return event({"error": message, "error_type": error_type})


class SSEParser:
    """Feeds raw body bytes, yields each event's data (parsed JSON) or DONE."""

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, data: bytes) -> list[Any]:
        buf = self._buf + data
        out: list[Any] = []
        while True:
            i = buf.find(b"\n\n")
            j = buf.find(b"\r\n\r\n")
            if i < 0 and j < 0:
                break
            if j >= 0 and (i < 0 or j < i):
                raw, buf = buf[:j], buf[j + 4 :]
            else:
                raw, buf = buf[:i], buf[i + 2 :]
            payload = []
            for line in raw.splitlines():
                if line.startswith(b"data:"):
                    payload.append(line[5:].lstrip(b" "))
            if not payload:
                continue
            data_ = b"\n".join(payload)
            if data_ == b"[DONE]":
                out.append(DONE)
            else:
                out.append(orjson.loads(data_))
        self._buf = buf
        return out
