"""FAKE upstream for the proxy benchmark: a fast synthetic OpenAI-compatible server (no model).

Two builds of the same fake: `aiohttp` (default: aiohttp's server on uvloop, a typical fast Python
HTTP server, still much lighter than vLLM's own FastAPI server) and `raw` (the proxy's own
httptools server, about the cheapest a Python server gets: the harshest baseline).

It answers /health, /v1/models, /tokenize and /v1/completions (stream or not) with fixed tokens and no
delay, in vLLM 0.32's shapes (token_ids, prompt_token_ids, logprobs with "token_id:N"). A prompt that
starts with "slow" streams one token every 50 ms (to hold many streams open for the memory check).
It exists only to measure the proxy's overhead; the real tests run against a real vLLM.

    python benchmarks/proxy_fake_upstream.py PORT [TOKENIZER_JSON] [aiohttp|raw]
"""

from __future__ import annotations

import asyncio
import socket
import sys
from pathlib import Path
from typing import Any

import orjson
import uvloop
from aiohttp import web
from hf_proxy.server import HttpProtocol, Request

MODEL = "fake"
PROMPT_IDS = [1, 489, 82, 511, 400]
_cache: dict[tuple[int, bool, bool], bytes] = {}
# Fixed output tokens: an English paragraph's ids when a tokenizer.json is given (argv[2]), so that
# token texts look like real output; otherwise a fixed id range.
TEXT = (
    "The quick brown fox jumps over the lazy dog while the small model writes a short story about "
    "servers, tokens and streams, and every word of it is generated one token at a time. "
)
IDS: list[int] = []
ROOT = "/nonexistent"


def _token(i: int) -> int:
    return IDS[i % len(IDS)] if IDS else 100 + (i % 300)


def _completion(max_tokens: int, logprobs: bool, ids_as_tokens: bool) -> bytes:
    key = (max_tokens, logprobs, ids_as_tokens)
    if key not in _cache:
        ids = [_token(i) for i in range(max_tokens)]
        lp = None
        if logprobs:
            toks = [f"token_id:{t}" if ids_as_tokens else "x" for t in ids]
            lp = {
                "text_offset": list(range(max_tokens)),
                "token_logprobs": [-1.0] * max_tokens,
                "tokens": toks,
                "top_logprobs": [{t: -1.0} for t in toks],
            }
        body = {
            "id": "cmpl-fake",
            "object": "text_completion",
            "created": 0,
            "model": MODEL,
            "choices": [
                {
                    "index": 0,
                    "text": "x" * max_tokens,
                    "logprobs": lp,
                    "finish_reason": "length",
                    "stop_reason": None,
                    "token_ids": ids,
                    "prompt_logprobs": None,
                    "prompt_token_ids": PROMPT_IDS,
                }
            ],
            "usage": {"prompt_tokens": 5, "total_tokens": 5 + max_tokens, "completion_tokens": max_tokens},
        }
        _cache[key] = orjson.dumps(body)
    return _cache[key]


def _chunk(i: int, n: int, logprobs: bool, ids_as_tokens: bool) -> bytes:
    t = _token(i)
    tok = f"token_id:{t}" if ids_as_tokens else "x"
    choice: dict[str, Any] = {
        "index": 0,
        "text": "x",
        "logprobs": {
            "text_offset": [i],
            "token_logprobs": [-1.0],
            "tokens": [tok],
            "top_logprobs": [{tok: -1.0}],
        }
        if logprobs
        else None,
        "finish_reason": "length" if i == n - 1 else None,
        "stop_reason": None,
        "prompt_token_ids": PROMPT_IDS if i == 0 else None,
        "token_ids": [t],
    }
    body = {"id": "cmpl-fake", "object": "text_completion", "created": 0, "model": MODEL, "choices": [choice]}
    return b"data: " + orjson.dumps(body) + b"\n\n"


TOKENIZE = b'{"count":5,"max_model_len":4096,"tokens":[1,489,82,511,400]}'


def _models() -> bytes:
    return orjson.dumps(
        {"object": "list", "data": [{"id": MODEL, "object": "model", "root": ROOT, "max_model_len": 4096}]}
    )


async def handle(req: Request) -> None:
    if req.path == "/health":
        req.respond(200, b"", None)
    elif req.path == "/v1/models":
        req.respond(
            200,
            orjson.dumps(
                {
                    "object": "list",
                    "data": [{"id": MODEL, "object": "model", "root": ROOT, "max_model_len": 4096}],
                }
            ),
        )
    elif req.path == "/tokenize":
        req.respond(200, b'{"count":5,"max_model_len":4096,"tokens":[1,489,82,511,400]}')
    elif req.path == "/v1/completions":
        d = orjson.loads(req.body)
        n = int(d.get("max_tokens") or 16)
        lp = d.get("logprobs") is not None
        ids = bool(d.get("return_tokens_as_token_ids"))
        if not d.get("stream"):
            req.respond(200, _completion(n, lp, ids))
            return
        req.start_stream(200, "text/event-stream")
        if str(d.get("prompt", "")).startswith("slow"):
            for i in range(n):
                req.write_chunk(_chunk(i, n, lp, ids))
                await asyncio.sleep(0.05)
        else:
            for i in range(n):
                req.write_chunk(_chunk(i, n, lp, ids))
        req.write_chunk(b"data: [DONE]\n\n")
        req.end_stream()
    else:
        req.respond(404, b"", None)


async def aio_handle(request: web.Request) -> web.StreamResponse:
    path = request.path
    if path == "/health":
        return web.Response(status=200)
    if path == "/v1/models":
        return web.Response(body=_models(), content_type="application/json")
    if path == "/tokenize":
        return web.Response(body=TOKENIZE, content_type="application/json")
    if path != "/v1/completions":
        return web.Response(status=404)
    d = orjson.loads(await request.read())
    n = int(d.get("max_tokens") or 16)
    lp = d.get("logprobs") is not None
    ids = bool(d.get("return_tokens_as_token_ids"))
    if not d.get("stream"):
        return web.Response(body=_completion(n, lp, ids), content_type="application/json")
    resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
    await resp.prepare(request)
    slow = str(d.get("prompt", "")).startswith("slow")
    try:
        for i in range(n):
            await resp.write(_chunk(i, n, lp, ids))
            if slow:
                await asyncio.sleep(0.05)
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
    except ConnectionError:  # the client (the proxy, or the memory check) went away
        pass
    return resp


def main() -> None:
    if len(sys.argv) < 2:
        print("a part of benchmarks/proxy_overhead.py (the fake upstream), not a benchmark of its own")
        return
    port = int(sys.argv[1])
    if len(sys.argv) > 2:
        from tokenizers import Tokenizer

        global ROOT
        ROOT = str(Path(sys.argv[2]).parent)
        IDS.extend(Tokenizer.from_file(sys.argv[2]).encode(TEXT * 4, add_special_tokens=False).ids)
    if (sys.argv[3] if len(sys.argv) > 3 else "aiohttp") == "aiohttp":
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", aio_handle)
        web.run_app(
            app, host="127.0.0.1", port=port, print=None, access_log=None, loop=uvloop.new_event_loop()
        )
        return
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(4096)

    async def run() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: HttpProtocol(handle, 10_000_000, lambda r: None), sock=sock)
        await server.serve_forever()

    uvloop.run(run())


if __name__ == "__main__":
    main()
