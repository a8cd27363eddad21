"""Runs the real huggingface_hub clients, unchanged, against the proxy; prints one JSON object.

Run by tests/integration/test_proxy_clients.py with the python of a venv holding one
huggingface_hub version (and text-generation where installed):  python hub_check.py URL PROMPT
Each check records its result or the exception's class and message; the test asserts on them.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import sys
import traceback
from typing import Any

import huggingface_hub
from huggingface_hub import AsyncInferenceClient, InferenceClient

URL, PROMPT = sys.argv[1], sys.argv[2]
out: dict[str, Any] = {"version": huggingface_hub.__version__}


def run(name: str, fn: Any) -> None:
    try:
        out[name] = fn()
    except Exception as e:  # the test decides what is expected
        out[name] = {
            "exception": type(e).__name__,
            "message": str(e)[:500],
            "tb": traceback.format_exc()[-800:],
        }


def client(cls: Any) -> Any:
    if "provider" in inspect.signature(cls.__init__).parameters:
        return cls(model=URL, provider="hf-inference", timeout=60)
    return cls(model=URL, timeout=60)


c = client(InferenceClient)


def details_dict(d: Any) -> dict[str, Any]:
    return {
        "finish_reason": str(getattr(d.finish_reason, "value", d.finish_reason)),
        "generated_tokens": d.generated_tokens,
        "seed": d.seed,
        "tokens": [[t.id, t.text, t.special] for t in d.tokens],
        "prefill": [[t.id, t.text] for t in (d.prefill or [])],
        "best_of": len(d.best_of_sequences or []),
    }


run("text", lambda: c.text_generation(PROMPT, max_new_tokens=8))
run("details", lambda: details_dict(c.text_generation(PROMPT, max_new_tokens=8, details=True).details))
run(
    "prefill",
    lambda: details_dict(
        c.text_generation(PROMPT, max_new_tokens=3, details=True, decoder_input_details=True).details
    ),
)


def stream_plain() -> list[str]:
    return list(c.text_generation(PROMPT, max_new_tokens=8, stream=True))


def stream_details() -> dict[str, Any]:
    evs = list(c.text_generation(PROMPT, max_new_tokens=8, stream=True, details=True))
    last = evs[-1]
    return {
        "n": len(evs),
        "ids": [e.token.id for e in evs],
        "texts": [e.token.text for e in evs],
        "generated_text": last.generated_text,
        "finish_reason": str(getattr(last.details.finish_reason, "value", last.details.finish_reason)),
        "generated_tokens": last.details.generated_tokens,
    }


run("stream", stream_plain)
run("stream_details", stream_details)


def stop() -> dict[str, Any]:
    ref = c.text_generation(PROMPT, max_new_tokens=8, return_full_text=False)
    word = ref[3:5]
    kw = "stop" if "stop" in inspect.signature(c.text_generation).parameters else "stop_sequences"
    r = c.text_generation(PROMPT, max_new_tokens=8, details=True, return_full_text=False, **{kw: [word]})
    return {
        "stop": word,
        "text": r.generated_text,
        "finish_reason": str(getattr(r.details.finish_reason, "value", r.details.finish_reason)),
    }


run("stop", stop)
run(
    "seed",
    lambda: (
        [c.text_generation(PROMPT, max_new_tokens=8, do_sample=True, seed=1234) for _i in range(2)]
        + [c.text_generation(PROMPT, max_new_tokens=8, do_sample=True, seed=99)]
    ),
)
run(
    "best_of",
    lambda: details_dict(
        c.text_generation(PROMPT, max_new_tokens=4, do_sample=True, best_of=2, details=True).details
    ),
)
run("full_text", lambda: c.text_generation(PROMPT, max_new_tokens=4, return_full_text=True))


def validation() -> dict[str, Any]:
    try:
        c.text_generation(PROMPT, max_new_tokens=4, temperature=-1.0)
    except Exception as e:
        return {"exception": type(e).__name__, "message": str(e)[:300]}
    return {"exception": None}


run("validation", validation)


def info() -> Any:
    i = c.get_endpoint_info()
    return {k: i[k] for k in ("model_id", "max_total_tokens", "max_input_tokens")}


run("info", info)


def health() -> Any:
    return c.health_check()


run("health", health)


def chat() -> dict[str, Any]:
    r = c.chat_completion([{"role": "user", "content": "hello"}], max_tokens=5, temperature=0.0)
    return {"content": r.choices[0].message.content, "finish_reason": r.choices[0].finish_reason}


def chat_stream() -> dict[str, Any]:
    chunks = list(
        c.chat_completion([{"role": "user", "content": "hello"}], max_tokens=5, stream=True, temperature=0.0)
    )
    reasons = [ch.choices[0].finish_reason for ch in chunks if ch.choices]
    return {"n": len(chunks), "finish_reason": [r for r in reasons if r][-1] if any(reasons) else None}


run("chat", chat)
run("chat_stream", chat_stream)


async def async_checks() -> dict[str, Any]:
    ac = client(AsyncInferenceClient)
    res: dict[str, Any] = {}
    res["text"] = await ac.text_generation(PROMPT, max_new_tokens=8)
    res["stream"] = [t async for t in await ac.text_generation(PROMPT, max_new_tokens=8, stream=True)]
    d = await ac.text_generation(PROMPT, max_new_tokens=8, details=True)
    res["finish_reason"] = str(getattr(d.details.finish_reason, "value", d.details.finish_reason))
    try:
        await ac.text_generation(PROMPT, max_new_tokens=4, top_p=1.5)
        res["validation"] = None
    except Exception as e:
        res["validation"] = {"exception": type(e).__name__, "message": str(e)[:300]}
    if hasattr(ac, "close"):
        await ac.close()
    return res


run("async", lambda: asyncio.run(async_checks()))

try:  # text-generation, where this venv has it
    import text_generation  # type: ignore[import-not-found]
except ImportError:
    text_generation = None

if text_generation is not None:
    tg = text_generation.Client(URL, timeout=60)

    def tg_sync() -> dict[str, Any]:
        r = tg.generate(PROMPT, max_new_tokens=8)
        evs = list(tg.generate_stream(PROMPT, max_new_tokens=8))
        return {
            "text": r.generated_text,
            "finish_reason": str(getattr(r.details.finish_reason, "value", r.details.finish_reason)),
            "ids": [t.id for t in r.details.tokens],
            "stream_text": "".join(e.token.text for e in evs),
            "stream_final": evs[-1].generated_text,
            "stream_ids": [e.token.id for e in evs],
        }

    async def tg_async() -> dict[str, Any]:
        ac = text_generation.AsyncClient(URL, timeout=60)
        r = await ac.generate(PROMPT, max_new_tokens=8)
        evs = [e async for e in ac.generate_stream(PROMPT, max_new_tokens=8)]
        try:
            await ac.generate(PROMPT, max_new_tokens=8, top_k=-3)
            err = None
        except Exception as e:
            err = {"exception": type(e).__name__, "message": str(e)[:300]}
        return {"text": r.generated_text, "stream_final": evs[-1].generated_text, "validation": err}

    run("tg_sync", tg_sync)
    run("tg_async", lambda: asyncio.run(tg_async()))

print(json.dumps(out))
