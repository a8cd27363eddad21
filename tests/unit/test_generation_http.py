"""The HTTP/1.1 response parser and the stream measurement of generation_check, without a network."""

from __future__ import annotations

import asyncio
import json

import pytest
from ansible_collections.selfhost.textgen.plugins.module_utils import _http
from ansible_collections.selfhost.textgen.plugins.module_utils._http import (
    Connection,
    Endpoint,
    HTTPClientError,
    ResponseHandler,
)
from ansible_collections.selfhost.textgen.plugins.module_utils._loadgen import (
    StreamHandler,
    generate_prompts,
    http_error_text,
    load_prompts,
)
from ansible_collections.selfhost.textgen.plugins.module_utils._sse import StreamError
from ansible_collections.selfhost.textgen.plugins.module_utils._stats import RequestRecord


class FakeTransport:
    def __init__(self):
        self.written = b""
        self.closed = False

    def write(self, data):
        self.written += data

    def close(self):
        self.closed = True

    def get_extra_info(self, name):
        return None


def chunked(*parts: bytes, ext=b"") -> bytes:
    out = b""
    for p in parts:
        out += f"{len(p):x}".encode() + ext + b"\r\n" + p + b"\r\n"
    return out + b"0\r\n\r\n"


def exchange(response: bytes, handler=None, sizes=(10**9,), clock=None, lose=False):
    """Feed a response to a Connection in reads of the given sizes; return (future, handler, conn)."""
    loop = asyncio.new_event_loop()
    try:
        conn = Connection(loop)
        conn.connection_made(FakeTransport())
        handler = handler or ResponseHandler()
        fut = conn.send(b"GET / HTTP/1.1\r\n\r\n", handler)
        pos, i = 0, 0
        times = iter(clock or [])
        while pos < len(response) and not fut.done():
            n = sizes[i % len(sizes)]
            if clock:
                now = next(times)
                _http.time.perf_counter = lambda now=now: now
            conn.data_received(response[pos : pos + n])
            pos += n
            i += 1
        if lose:
            conn.connection_lost(None)
        return fut, handler, conn
    finally:
        _http.time.perf_counter = __import__("time").perf_counter
        loop.close()


BODY = b'{"ok": true}'


@pytest.mark.parametrize("size", [1, 3, 17, 10**9])
def test_content_length_body(size):
    resp = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 12\r\n\r\n" + BODY
    fut, h, conn = exchange(resp, sizes=(size,))
    assert fut.done() and fut.result() is h
    assert h.status == 200 and h.reason == "OK"
    assert h.headers["content-type"] == "application/json"
    assert bytes(h.body) == BODY
    assert conn.reusable


@pytest.mark.parametrize("size", [1, 2, 5, 10**9])
def test_chunked_body_with_extensions_and_trailers(size):
    resp = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        + chunked(b"hello ", b"world", ext=b";name=value")[:-2]
        + b"X-Trailer: 1\r\n\r\n"
    )
    fut, h, conn = exchange(resp, sizes=(size,))
    assert fut.done() and bytes(h.body) == b"hello world"
    assert conn.reusable


def test_close_delimited_body_ends_with_the_connection():
    resp = b"HTTP/1.0 200 OK\r\n\r\npartial body"
    fut, h, conn = exchange(resp)
    assert not fut.done()
    conn.connection_lost(None)
    assert fut.done() and bytes(h.body) == b"partial body"
    assert not conn.reusable


def test_interim_100_continue_is_skipped():
    resp = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n"
    fut, h, _unused = exchange(resp)
    assert fut.done() and h.status == 204


def test_connection_close_header_prevents_reuse():
    resp = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    fut, _unused, conn = exchange(resp)
    assert fut.done() and not conn.reusable


@pytest.mark.parametrize(
    ("resp", "message"),
    [
        (b"SSH-2.0-OpenSSH_9.2\r\n\r\n", "not an HTTP/1.x response"),
        (b"HTTP/1.1 200 OK\r\nbroken header\r\n\r\n", "malformed response header"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "malformed chunked encoding"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabXY", "missing CRLF after a chunk"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: nope\r\n\r\n", "bad Content-Length"),
    ],
)
def test_protocol_errors_fail_the_request(resp, message):
    fut, _unused, conn = exchange(resp)
    assert fut.done()
    with pytest.raises(HTTPClientError, match=message):
        fut.result()
    assert conn.transport.closed


def test_connection_lost_mid_response_is_an_error():
    resp = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc"
    fut, _unused, conn = exchange(resp)
    conn.connection_lost(ConnectionResetError(104, "Connection reset by peer"))
    with pytest.raises(HTTPClientError, match="in the middle of the response"):
        fut.result()


def test_error_body_is_bounded():
    big = b"x" * (_http.MAX_ERROR_BODY + 100)
    resp = b"HTTP/1.1 500 Oops\r\nContent-Length: %d\r\n\r\n" % len(big) + big
    fut, h, _unused = exchange(resp, sizes=(4096,))
    assert fut.done() and len(h.body) == _http.MAX_ERROR_BODY and h.truncated


def sse_response(events: list[bytes], ctype=b"text/event-stream") -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: "
        + ctype
        + b"\r\nTransfer-Encoding: chunked\r\n\r\n"
        + chunked(*events)
    )


def tgi(i, final=False):
    ev = {"index": i, "token": {"id": i, "text": f"t{i}", "logprob": 0.0, "special": False}}
    ev["generated_text"] = "done" if final else None
    ev["details"] = {"finish_reason": "length", "generated_tokens": i, "seed": None} if final else None
    return b"data: " + json.dumps(ev).encode() + b"\n\n"


def test_stream_handler_times_tokens_by_arrival():
    rec = RequestRecord(start=100.0)
    handler = StreamHandler("tgi", rec, keep_text=True)
    events = [tgi(1), b":\n\n", tgi(2), tgi(3, final=True)]
    resp = sse_response(events)
    head_end = resp.index(b"\r\n\r\n") + 4
    # reads: head at 100.01; first event at 100.05; keep-alive at 100.06; last two together at 100.09
    parts = [resp[:head_end]]
    rest = resp[head_end:]
    cut1 = rest.index(b":\n\n")
    cut2 = rest.index(b"data", cut1)
    parts += [rest[:cut1], rest[cut1:cut2], rest[cut2:]]
    sizes = [len(p) for p in parts]
    fut, _unused, _unused = exchange(resp, handler, sizes=sizes, clock=[100.01, 100.05, 100.06, 100.09])
    assert fut.done() and fut.exception() is None
    assert rec.success, rec.error
    assert rec.ttft == pytest.approx(0.05)
    assert rec.itl == pytest.approx([0.04, 0.0])
    assert rec.latency == pytest.approx(0.09)
    assert rec.chunks == 3 and rec.tokens == 3 and rec.output_tokens == 3
    assert rec.text == "done"
    assert rec.status == 200


def test_stream_handler_cut_stream_is_an_error():
    rec = RequestRecord(start=0.0)
    resp = sse_response([tgi(1), tgi(2)])  # no final event
    fut, _unused, _unused = exchange(resp, StreamHandler("tgi", rec))
    assert fut.done()
    assert not rec.success
    assert rec.error == "the stream ended without the final event (generated_text)"
    rec = RequestRecord(start=0.0)
    resp = sse_response([b'data: {"choices":[{"text":"a"}]}\n\n'])
    exchange(resp, StreamHandler("openai", rec))
    assert rec.error == "the stream ended without 'data: [DONE]'"


def test_stream_handler_unterminated_last_event():
    rec = RequestRecord(start=0.0)
    resp = sse_response([tgi(1), tgi(2, final=True)[:-2]])
    exchange(resp, StreamHandler("tgi", rec))
    assert rec.error.startswith("the stream ended inside an event (no blank line after 'data: {")


def test_stream_handler_error_event_fails_the_request():
    rec = RequestRecord(start=0.0)
    err = b'data: {"error": "Request failed during generation: boom", "error_type": "generation"}\n\n'
    fut, _unused, conn = exchange(sse_response([tgi(1), err]), StreamHandler("tgi", rec))
    with pytest.raises(
        StreamError, match=r"error event \(generation\): Request failed during generation: boom"
    ):
        fut.result()
    assert conn.transport.closed  # stop reading: the server aborts the generation


def test_stream_handler_wrong_content_type():
    rec = RequestRecord(start=0.0)
    resp = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
    fut, _unused, _unused = exchange(resp, StreamHandler("openai", rec))
    with pytest.raises(StreamError, match="expected a text/event-stream response"):
        fut.result()


def test_stream_handler_http_error_keeps_body_for_the_message():
    rec = RequestRecord(start=0.0)
    body = b'{"error": "Model is overloaded", "error_type": "overloaded"}'
    resp = b"HTTP/1.1 429 Too Many Requests\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    fut, h, _unused = exchange(resp, StreamHandler("tgi", rec))
    assert fut.done() and not h.streaming
    assert http_error_text(h) == "HTTP 429 Too Many Requests: Model is overloaded"
    body = b'{"error": {"message": "bad key", "type": "Unauthorized"}}'
    resp = b"HTTP/1.1 401 Unauthorized\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    _unused, h, _unused = exchange(resp, StreamHandler("openai", RequestRecord()))
    assert http_error_text(h) == "HTTP 401 Unauthorized (check token): bad key"
    resp = b'HTTP/1.1 404 Not Found\r\nContent-Length: 22\r\n\r\n{"detail":"Not Found"}'
    _unused, h, _unused = exchange(resp, StreamHandler("tgi", RequestRecord()))
    assert http_error_text(h) == "HTTP 404 Not Found (check url and api): Not Found"
    resp = b"HTTP/1.1 301 Moved Permanently\r\nLocation: https://x/\r\nContent-Length: 0\r\n\r\n"
    _unused, h, _unused = exchange(resp, StreamHandler("tgi", RequestRecord()))
    assert http_error_text(h) == "HTTP 301 Moved Permanently (redirects to https://x/: use that url)"


def test_endpoint_request_bytes_and_validation():
    ep = Endpoint("https://example.com:8443/base/", token="s3cret", validate_certs=False)
    raw = ep.request_bytes("POST", "/generate_stream", b"{}", "text/event-stream")
    assert raw.startswith(b"POST /base/generate_stream HTTP/1.1\r\nHost: example.com:8443\r\n")
    assert b"Authorization: Bearer s3cret\r\n" in raw
    assert raw.endswith(b"Content-Length: 2\r\n\r\n{}")
    assert Endpoint("http://[::1]:80").host_header == "[::1]"
    assert "s3cret" not in ep.describe()
    for bad in ("ftp://x", "localhost:8000", "http://user:pw@host/", "http://host:99999"):
        with pytest.raises(ValueError):
            Endpoint(bad)


def test_generated_prompts_are_distinct_and_deterministic():
    a = generate_prompts(50, 64)
    assert a == generate_prompts(50, 64)
    assert len(set(a)) == 50
    assert len({p.split()[0] + p.split()[1] for p in a}) > 40  # different from the start
    assert all(len(p.split()) == round(64 / 1.3) for p in a)


def test_load_prompts(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": "one"}\n\n"two"\n{"prompt": "three", "output_tokens": 5}\n')
    assert load_prompts(str(f)) == ["one", "two", "three"]
    f.write_text('{"prompt": "one"}\n{"text": "x"}\n')
    with pytest.raises(ValueError, match=r"line 2: expected"):
        load_prompts(str(f))
    f.write_text("not json\n")
    with pytest.raises(ValueError, match="line 1: not JSON"):
        load_prompts(str(f))
    f.write_text("\n")
    with pytest.raises(ValueError, match="holds no prompt"):
        load_prompts(str(f))
    with pytest.raises(ValueError, match="No such file"):
        load_prompts(str(tmp_path / "missing.jsonl"))
