#!/usr/bin/env python3
"""STAND-IN upstream for the edge Molecule scenario (not a model server).

A small, dependency-free HTTP/1.1 server shaped like the two things nginx and the proxy talk to:
- TGI routes (`POST /`, `/generate`, `/generate_stream`, `GET /info`, `/health`, `POST /tokenize`,
  `/metrics`) so that nginx can be tested before and without the proxy;
- vLLM's OpenAI routes (`/v1/models`, `/v1/completions`, `/v1/chat/completions`, streaming or not)
  so that the HF/TGI proxy can run in front of it;
- vLLM's admin routes (`/pause`, `/resume`, `/abort_requests`, `/update_weights`, `/invocations`,
  `/detokenize`, `/v1/load_lora_adapter`, ...) answering 200 with `"reached": "admin"`, so a test
  proves that nginx never lets them through (vLLM's `/tokenize` shares TGI's path, which nginx sends
  to the proxy).

Tokens are fixed words; streams send one event every STANDIN_TOKEN_DELAY seconds (default 0.2) so a
client can see them arrive one by one. Every response carries `X-Standin: 1` and
`X-Standin-Saw-Authorization: yes|no` (nginx must not forward the client's bearer token).
Usage: standin_upstream.py --host 127.0.0.1 --port 8000 [--model NAME]
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

WORDS = ["hello", " world", " from", " the", " stand", "-in", " upstream", "."]
ADMIN = {
    "/pause",
    "/resume",
    "/is_paused",
    "/abort_requests",
    "/update_weights",
    "/init_weights_update_group",
    "/invocations",
    "/detokenize",
    "/reset_prefix_cache",
    "/sleep",
    "/wake_up",
    "/collective_rpc",
    "/scale_elastic_ep",
    "/v1/load_lora_adapter",
    "/v1/unload_lora_adapter",
    "/server_info",
    "/version",
}
TOKEN_DELAY = float(os.environ.get("STANDIN_TOKEN_DELAY", "0.2"))
STATS = {"requests": 0}
LOCK = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "standin"
    model = "standin"

    def log_message(self, format: str, *args: object) -> None:  # quiet
        return

    # --- helpers ------------------------------------------------------------------------------------
    def _common_headers(self) -> None:
        self.send_header("X-Standin", "1")
        saw = "yes" if self.headers.get("Authorization") else "no"
        self.send_header("X-Standin-Saw-Authorization", saw)
        rid = self.headers.get("X-Request-ID")
        if rid:
            self.send_header("X-Standin-Request-ID", rid)

    def _json(self, status: int, obj: object) -> None:
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self._common_headers()
        self.end_headers()
        self.wfile.write(body)

    def _text(self, status: int, text: str, ctype: str = "text/plain") -> None:
        body = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self._common_headers()
        self.end_headers()
        self.wfile.write(body)

    def _body(self) -> dict:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if not raw:
            return {}
        try:
            data = json.loads(raw)
        except ValueError:
            return {"_invalid": True}
        return data if isinstance(data, dict) else {"_invalid": True}

    def _sse_start(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self._common_headers()
        self.end_headers()

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _sse_end(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _count(self) -> None:
        with LOCK:
            STATS["requests"] += 1

    # --- routes -------------------------------------------------------------------------------------
    def do_GET(self) -> None:
        self._count()
        path = self.path.split("?", 1)[0]
        if path in ADMIN:
            self._json(200, {"reached": "admin", "path": path})
        elif path in ("/health", "/ping"):
            self._text(200, "")
        elif path == "/info":
            self._json(
                200,
                {
                    "model_id": self.model,
                    "model_sha": None,
                    "max_input_tokens": 256,
                    "max_total_tokens": 512,
                    "router": "standin",
                    "version": "0",
                },
            )
        elif path == "/metrics":
            self._text(200, f"standin_requests_total {STATS['requests']}\n")
        elif path == "/v1/models":
            self._json(
                200,
                {
                    "object": "list",
                    "data": [
                        {
                            "id": self.model,
                            "object": "model",
                            "created": 0,
                            "owned_by": "standin",
                            "root": self.model,
                            "max_model_len": 512,
                        }
                    ],
                },
            )
        else:
            self._json(404, {"error": "stand-in: no such route", "path": path})

    def do_POST(self) -> None:
        self._count()
        path = self.path.split("?", 1)[0]
        if path in ADMIN:
            self._body()
            self._json(200, {"reached": "admin", "path": path})
            return
        body = self._body()
        if body.get("_invalid"):
            self._json(400, {"error": "Invalid JSON", "error_type": "validation"})
            return
        params = body.get("parameters") or {}
        n = int(params.get("max_new_tokens") or body.get("max_tokens") or 8)
        n = max(1, min(n, 512))
        if path == "/generate_stream" or (path == "/" and body.get("stream")):
            self._tgi_stream(n)
        elif path in ("/", "/generate"):
            text = "".join(WORDS[i % len(WORDS)] for i in range(n))
            out = {"generated_text": text}
            self._json(200, [out] if path == "/" else out)
        elif path == "/tokenize":
            words = str(body.get("inputs", "")).split()
            self._json(200, [{"id": i, "text": w, "start": 0, "stop": len(w)} for i, w in enumerate(words)])
        elif path == "/v1/completions":
            self._openai(body, n, chat=False)
        elif path == "/v1/chat/completions":
            self._openai(body, n, chat=True)
        else:
            self._json(404, {"error": "stand-in: no such route", "path": path})

    def _tgi_stream(self, n: int) -> None:
        self._sse_start()
        text = ""
        for i in range(n):
            word = WORDS[i % len(WORDS)]
            text += word
            last = i == n - 1
            event = {
                "index": i + 1,
                "token": {"id": i, "text": word, "logprob": -0.1, "special": False},
                "generated_text": text if last else None,
                "details": {"finish_reason": "length", "generated_tokens": n, "seed": None, "input_length": 1}
                if last
                else None,
            }
            self._chunk(b"data: " + json.dumps(event).encode() + b"\n\n")
            if not last:
                time.sleep(TOKEN_DELAY)
        self._sse_end()

    def _openai(self, body: dict, n: int, chat: bool) -> None:
        created = int(time.time())
        obj = "chat.completion" if chat else "text_completion"
        words = [WORDS[i % len(WORDS)] for i in range(n)]
        if body.get("stream"):
            self._sse_start()
            for i, word in enumerate(words):
                last = i == n - 1
                if chat:
                    choice = {
                        "index": 0,
                        "delta": {"content": word},
                        "finish_reason": "length" if last else None,
                    }
                else:
                    choice = {
                        "index": 0,
                        "text": word,
                        "token_ids": [i],
                        "finish_reason": "length" if last else None,
                        "stop_reason": None,
                    }
                chunk = {
                    "id": "standin",
                    "object": obj + (".chunk" if chat else ""),
                    "created": created,
                    "model": self.model,
                    "choices": [choice],
                }
                self._chunk(b"data: " + json.dumps(chunk).encode() + b"\n\n")
                if not last:
                    time.sleep(TOKEN_DELAY)
            self._chunk(b"data: [DONE]\n\n")
            self._sse_end()
            return
        text = "".join(words)
        if chat:
            choice = {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "length",
            }
        else:
            choice = {
                "index": 0,
                "text": text,
                "token_ids": list(range(n)),
                "logprobs": None,
                "finish_reason": "length",
                "stop_reason": None,
            }
        self._json(
            200,
            {
                "id": "standin",
                "object": obj,
                "created": created,
                "model": self.model,
                "choices": [choice],
                "usage": {"prompt_tokens": 1, "completion_tokens": n, "total_tokens": n + 1},
            },
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--model", default="standin")
    args = parser.parse_args()
    Handler.model = args.model
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
