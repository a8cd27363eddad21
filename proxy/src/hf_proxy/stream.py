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
        buf = self._buf + data if self._buf else data
        out: list[Any] = []
        pos = 0
        n = len(buf)
        while pos < n:
            end = buf.find(b"\n\n", pos)
            if end < 0:
                break
            raw = buf[pos:end]
            pos = end + 2
            if raw.startswith(b"data: ") and b"\n" not in raw:
                payload = raw[6:]
            else:
                lines = [
                    ln[5:].lstrip(b" ")
                    for ln in raw.replace(b"\r", b"").split(b"\n")
                    if ln.startswith(b"data:")
                ]
                if not lines:
                    continue
                payload = b"\n".join(lines)
            if payload == b"[DONE]":
                out.append(DONE)
            else:
                out.append(orjson.loads(payload))
        self._buf = buf[pos:] if pos < n else b""
        return out
