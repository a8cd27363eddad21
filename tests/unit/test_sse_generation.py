"""SSE parsing and the interpretation of TGI and OpenAI streams (generation_check)."""

from __future__ import annotations

import json

import pytest
from ansible_collections.selfhost.textgen.plugins.module_utils._sse import (
    DONE,
    INFO,
    SKIP,
    TOKEN,
    SSEParser,
    StreamError,
    StreamInterpreter,
    build_request,
)


def tgi_event(i, text, final=False, special=False):
    return {
        "index": i,
        "token": {"id": 100 + i, "text": text, "logprob": -0.5, "special": special},
        "generated_text": None if not final else "FINAL",
        "details": None if not final else {"finish_reason": "length", "generated_tokens": i, "seed": None},
    }


TGI_STREAM = (
    b"data: " + json.dumps(tgi_event(1, "Hel")).encode() + b"\n\n"
    b":\n\n"  # keep-alive comment
    b"data:" + json.dumps(tgi_event(2, "lo")).encode() + b"\n\n"  # TGI < 2.1: no space
    b"data: " + json.dumps(tgi_event(3, "</s>", final=True, special=True)).encode() + b"\n\n"
)

OPENAI_STREAM = (
    b'data: {"id":"c","object":"text_completion","choices":[{"index":0,"text":"ab","finish_reason":null}]}'
    b"\n\n"
    b": ping - 2026-11-27 20:00:00\n\n"
    b'data: {"id":"c","choices":[{"index":0,"text":"\xc3\xa9","finish_reason":"length"}]}\n\n'
    b'data: {"id":"c","choices":[],"usage":{"prompt_tokens":5,"total_tokens":7,"completion_tokens":2}}\n\n'
    b"data: [DONE]\n\n"
)


def parse_all(stream: bytes, sizes):
    parser = SSEParser()
    events = []
    pos = 0
    i = 0
    while pos < len(stream):
        n = sizes[i % len(sizes)]
        events += parser.feed(stream[pos : pos + n])
        pos += n
        i += 1
    return parser, events + parser.finish()


@pytest.mark.parametrize("stream", [TGI_STREAM, OPENAI_STREAM])
def test_events_split_across_reads_at_every_boundary(stream):
    _unused, whole = parse_all(stream, [len(stream)])
    for size in (1, 2, 3, 7, 13, 64):
        _unused, events = parse_all(stream, [size])
        assert events == whole, size
    # and split at each single position
    for cut in range(1, len(stream)):
        p = SSEParser()
        assert p.feed(stream[:cut]) + p.feed(stream[cut:]) == whole


def test_keep_alive_comments_are_not_events():
    _unused, events = parse_all(TGI_STREAM, [len(TGI_STREAM)])
    assert len(events) == 3
    assert all(kind == "message" for kind, _unused in events)
    p = SSEParser()
    assert p.feed(b": keep-alive\n\n:\n\n") == []
    assert p.feed(b"data: x\n: comment inside an event\n\n") == [("message", "x")]
    assert p.comments == 3


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"])
def test_line_endings(eol):
    stream = b"data: one" + eol + eol + b"event: error" + eol + b"data: a" + eol + b"data: b" + eol + eol
    for size in (1, 2, 5, len(stream)):
        _unused, events = parse_all(stream, [size])
        assert events == [("message", "one"), ("error", "a\nb")], (eol, size)


def test_field_rules():
    p = SSEParser()
    # one leading space stripped, not two; id/retry ignored; data-less event not dispatched
    assert p.feed(b"data:  two spaces\n\nid: 7\nretry: 10\n\nevent: x\n\n") == [("message", " two spaces")]
    # a field without colon is a field with empty value
    assert p.feed(b"data\n\n") == [("message", "")]
    # three line ends in a row: the empty block is skipped
    assert p.feed(b"data: a\n\n\ndata: b\n\n") == [("message", "a"), ("message", "b")]


def test_unterminated_event_stays_pending():
    p = SSEParser()
    assert p.feed(b'data: {"partial": tr') == []
    assert p.pending == b'data: {"partial": tr'
    assert p.feed(b"ue}\n\n") == [("message", '{"partial": true}')]
    assert p.pending == b""


def test_invalid_utf8_is_replaced_not_fatal():
    p = SSEParser()
    assert p.feed(b"data: \xff\xfeok\n\n") == [("message", "\ufffd\ufffdok")]


def run(api, events, keep_text=True):
    interp = StreamInterpreter(api, keep_text=keep_text)
    kinds = [interp.interpret(t, d) for t, d in events]
    return interp, kinds


def test_tgi_stream():
    _unused, events = parse_all(TGI_STREAM, [5])
    interp, kinds = run("tgi", events)
    assert kinds == [TOKEN, TOKEN, TOKEN]
    assert interp.done
    assert interp.text == "FINAL"  # generated_text of the final event wins
    assert interp.parts == ["Hel", "lo"]  # special tokens are not text
    assert interp.output_tokens == 3
    assert interp.tokens == 3


def test_tgi_input_length_from_details():
    ev = tgi_event(1, "x", final=True)
    ev["details"]["input_length"] = 12
    interp, _unused = run("tgi", [("message", json.dumps(ev))])
    assert interp.prompt_tokens == 12


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (
            {"error": "Input validation error: `inputs` cannot be empty", "error_type": "validation"},
            "error event (validation): Input validation error: `inputs` cannot be empty",
        ),
        (
            {"error": "Incomplete generation stream", "error_type": "incomplete_generation_stream"},
            "error event (incomplete_generation_stream): Incomplete generation stream",
        ),
    ],
)
def test_tgi_error_events(payload, message):
    interp = StreamInterpreter("tgi")
    interp.interpret("message", json.dumps(tgi_event(1, "a")))
    with pytest.raises(StreamError) as exc:
        interp.interpret("message", json.dumps(payload))
    assert str(exc.value) == message


def test_tgi_rejects_done_marker_and_tokenless_events():
    with pytest.raises(StreamError, match=r"unexpected 'data: \[DONE\]' on a TGI stream"):
        StreamInterpreter("tgi").interpret("message", "[DONE]")
    with pytest.raises(StreamError, match="TGI event without a token"):
        StreamInterpreter("tgi").interpret("message", '{"index": 1}')


def test_openai_completions_stream():
    _unused, events = parse_all(OPENAI_STREAM, [3])
    interp, kinds = run("openai", events)
    assert kinds == [TOKEN, TOKEN, INFO, DONE]
    assert interp.text == "ab\u00e9"
    assert interp.output_tokens == 2
    assert interp.prompt_tokens == 5
    assert interp.done


def test_openai_chat_role_chunk_is_not_a_token():
    chunks = [
        {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]},
        {"choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": None}]},
        {"choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": "length"}]},
        {"choices": [], "usage": {"prompt_tokens": 24, "completion_tokens": 2}},
    ]
    events = [("message", json.dumps(c)) for c in chunks] + [("message", "[DONE]")]
    interp, kinds = run("openai_chat", events)
    assert kinds == [SKIP, TOKEN, TOKEN, INFO, DONE]
    assert interp.text == "hi"
    assert interp.tokens == 2
    assert interp.output_tokens == 2


def test_openai_error_and_abort():
    err = {"error": {"message": "The model `x` does not exist.", "type": "NotFoundError", "code": 404}}
    with pytest.raises(StreamError) as exc:
        StreamInterpreter("openai").interpret("message", json.dumps(err))
    assert str(exc.value) == "error event (NotFoundError): The model `x` does not exist."
    abort = {"choices": [{"index": 0, "text": "", "finish_reason": "abort"}]}
    with pytest.raises(StreamError, match="aborted"):
        StreamInterpreter("openai").interpret("message", json.dumps(abort))
    with pytest.raises(StreamError, match="error event: boom"):
        StreamInterpreter("openai").interpret("error", "boom")


@pytest.mark.parametrize("api", ["tgi", "openai", "openai_chat"])
def test_malformed_data_is_a_clear_error(api):
    with pytest.raises(StreamError, match=r"malformed SSE data \(not JSON\): \{\"token\": oops"):
        StreamInterpreter(api).interpret("message", '{"token": oops')
    with pytest.raises(StreamError, match="not a JSON object"):
        StreamInterpreter(api).interpret("message", "[1, 2]")


def test_event_after_done_is_an_error():
    interp = StreamInterpreter("openai")
    interp.interpret("message", "[DONE]")
    with pytest.raises(StreamError, match="event after the end of the stream"):
        interp.interpret("message", '{"choices": [{"text": "late"}]}')


def test_text_not_kept_unless_asked():
    _unused, events = parse_all(OPENAI_STREAM, [len(OPENAI_STREAM)])
    interp, _unused = run("openai", events, keep_text=False)
    assert interp.text == "" and interp.tokens == 2


def test_build_request_bodies():
    path, body = build_request("tgi", "Hi", 32, None)
    assert path == "/generate_stream"
    assert json.loads(body) == {"inputs": "Hi", "parameters": {"max_new_tokens": 32, "details": True}}
    path, body = build_request("tgi", "Hi", 8, None, greedy=True)
    assert json.loads(body)["parameters"]["do_sample"] is False
    path, body = build_request("openai", "Hi", 32, "tiny")
    assert path == "/v1/completions"
    assert json.loads(body) == {
        "model": "tiny",
        "stream": True,
        "stream_options": {"include_usage": True},
        "prompt": "Hi",
        "max_tokens": 32,
        "ignore_eos": True,
    }
    path, body = build_request("openai_chat", "Hi", 4, "tiny", fixed_length=False, greedy=True)
    assert path == "/v1/chat/completions"
    obj = json.loads(body)
    assert obj["messages"] == [{"role": "user", "content": "Hi"}]
    assert obj["max_completion_tokens"] == 4
    assert "ignore_eos" not in obj
    assert obj["temperature"] == 0.0 and obj["seed"] == 0
