"""ALTERNATIVE build of the proxy's hot path on aiohttp (server and one pooled ClientSession per
process), for `proxy_overhead.py --compare`: the same validate/translate code as hf-proxy, only the
HTTP layers differ. It measures the library choice; it is not part of the product.

    python benchmarks/proxy_alt_aiohttp.py PORT UPSTREAM_URL WORKERS TOKENIZER_JSON
"""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

import aiohttp
import orjson
import uvloop
from aiohttp import web
from hf_proxy.stream import SSEParser
from hf_proxy.tokenizer import ModelTokenizer
from hf_proxy.translate import StreamState, from_vllm, plan_request, to_vllm
from hf_proxy.validate import Limits, parse_generate, validate_lengths, validate_params

UPSTREAM, TOK = (sys.argv[2].rstrip("/"), sys.argv[4]) if len(sys.argv) > 4 else ("", "")
LIMITS = Limits(max_input_tokens=4095, max_total_tokens=4096)


async def on_startup(app: web.Application) -> None:
    app["session"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    app["tok"] = ModelTokenizer(Path(TOK))
    app["rng"] = random.Random()


def prepare(app: web.Application, data: bytes, stream: bool) -> tuple[object, bytes]:
    req = parse_generate(orjson.loads(data))
    req.stream = stream
    validate_params(req, LIMITS)
    n = app["tok"].count(req.inputs)
    max_new = validate_lengths(req, n, LIMITS)
    plan = plan_request(req, n, False, True, app["rng"])
    return plan, orjson.dumps(to_vllm(req, plan, "fake", max_new, stream))


async def generate(request: web.Request) -> web.StreamResponse:
    app = request.app
    plan, body = prepare(app, await request.read(), False)
    async with app["session"].post(
        UPSTREAM + "/v1/completions", data=body, headers={"content-type": "application/json"}
    ) as r:
        raw = await r.read()
    out, _gen, _prompt = from_vllm(orjson.loads(raw), plan, app["tok"])
    return web.Response(body=orjson.dumps(out), content_type="application/json")


async def generate_stream(request: web.Request) -> web.StreamResponse:
    app = request.app
    plan, body = prepare(app, await request.read(), True)
    resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
    await resp.prepare(request)
    state = StreamState(plan, app["tok"])
    parser = SSEParser()
    async with app["session"].post(
        UPSTREAM + "/v1/completions", data=body, headers={"content-type": "application/json"}
    ) as r:
        async for chunk in r.content.iter_any():
            out = b"".join(state.feed(it) for it in parser.feed(chunk) if isinstance(it, dict))
            if out:
                await resp.write(out)
    await resp.write_eof()
    return resp


def main() -> None:
    if len(sys.argv) < 5:
        print("a part of benchmarks/proxy_overhead.py (--compare), not a benchmark of its own")
        return
    port, workers = int(sys.argv[1]), int(sys.argv[3])
    app = web.Application()
    app.on_startup.append(on_startup)
    app.router.add_post("/generate", generate)
    app.router.add_post("/generate_stream", generate_stream)
    app.router.add_get("/health", lambda r: web.Response(status=200))
    for _i in range(workers - 1):
        if os.fork() == 0:
            break
    web.run_app(
        app,
        host="127.0.0.1",
        port=port,
        reuse_port=True,
        print=None,
        access_log=None,
        loop=uvloop.new_event_loop(),
    )


if __name__ == "__main__":
    main()
