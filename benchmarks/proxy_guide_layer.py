"""BASELINE for the proxy benchmark: the migration guide's compatibility layer, as the guide shows it
(FastAPI, a new httpx.AsyncClient per request, non-streaming), pointed at the benchmark's fake upstream.
Not part of the product; it is what the proxy is measured against.

    python benchmarks/proxy_guide_layer.py PORT UPSTREAM_URL
"""

from __future__ import annotations

import sys

import httpx
import uvicorn
from fastapi import FastAPI

app = FastAPI()
VLLM_URL = sys.argv[2].rstrip("/") + "/v1/completions" if len(sys.argv) > 2 else ""


@app.post("/generate")
async def hf_compatible_generate(request: dict) -> list:
    payload = {
        "model": "fake",
        "prompt": request["inputs"],
        "max_tokens": request.get("parameters", {}).get("max_new_tokens", 256),
        "temperature": request.get("parameters", {}).get("temperature", 0.7),
        "stream": False,
    }
    async with httpx.AsyncClient() as client:
        resp = await client.post(VLLM_URL, json=payload)
        result = resp.json()
    return [{"generated_text": result["choices"][0]["text"]}]


if __name__ == "__main__":
    if len(sys.argv) < 3:
        print("a part of benchmarks/proxy_overhead.py (the baseline), not a benchmark of its own")
        sys.exit(0)
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
