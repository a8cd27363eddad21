# Copyright: selfhost.textgen contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Server-sent events: an incremental parser and the interpretation of TGI and OpenAI streams.

Standard library only. The parser follows the WHATWG event-stream rules: lines end with CRLF, LF
or CR; a blank line dispatches the event; lines starting with ``:`` are comments (keep-alives);
``field: value`` strips one space after the colon; several ``data`` lines join with ``\\n``; an
event without data is not dispatched; an unfinished event at the end of the stream is dropped.
"""

from __future__ import annotations

import json

# API modes and their streaming routes
API_PATHS = {
    "tgi": "/generate_stream",
    "openai": "/v1/completions",
    "openai_chat": "/v1/chat/completions",
}


class SSEParser:
    """Feed raw bytes as they arrive; get back complete ``(event_type, data)`` tuples."""

    __slots__ = ("_buf", "_cr_pending", "comments")

    def __init__(self) -> None:
        self._buf = b""
        self._cr_pending = False
        self.comments = 0

    def feed(self, chunk: bytes) -> list[tuple[str, str]]:
        if self._cr_pending:
            chunk = b"\r" + chunk
            self._cr_pending = False
        if b"\r" in chunk:
            if chunk.endswith(b"\r"):
                # a CR at the end of a read may be the first half of a CRLF
                chunk = chunk[:-1]
                self._cr_pending = True
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        buf = self._buf + chunk if self._buf else chunk
        cut = buf.rfind(b"\n\n")
        if cut < 0:
            self._buf = buf
            return []
        self._buf = buf[cut + 2 :]
        events = []
        for block in buf[:cut].split(b"\n\n"):
            if block.startswith(b"data:") and b"\n" not in block:
                # the common case: one data line
                value = block[5:]
                if value.startswith(b" "):
                    value = value[1:]
                events.append(("message", value.decode("utf-8", "replace")))
            elif block:
                events.extend(self._parse_block(block))
        return events

    def _parse_block(self, block: bytes) -> list[tuple[str, str]]:
        events = []
        data: list[str] = []
        event_type = ""
        for raw in block.split(b"\n"):
            if not raw:
                # blank line inside a block (from three or more line ends in a row): dispatch
                if data:
                    events.append((event_type or "message", "\n".join(data)))
                data, event_type = [], ""
                continue
            if raw.startswith(b":"):
                self.comments += 1
                continue
            line = raw.decode("utf-8", "replace")
            name, sep, value = line.partition(":")
            if sep and value.startswith(" "):
                value = value[1:]
            if name == "data":
                data.append(value)
            elif name == "event":
                event_type = value
            # id, retry and unknown fields do not matter for a load generator
        if data:
            events.append((event_type or "message", "\n".join(data)))
        return events

    def finish(self) -> list[tuple[str, str]]:
        """At the end of the stream: a CR held back as a possible CRLF half was a line end."""
        if not self._cr_pending:
            return []
        self._cr_pending = False
        return self.feed(b"\n")

    @property
    def pending(self) -> bytes:
        """Bytes of an event that has not been terminated yet."""
        return self._buf


class StreamError(Exception):
    """The stream carried an error event or something that is not a valid event."""


# What an event means for the measurement:
TOKEN = 1  # carries one or more generated tokens (counted as one chunk)
DONE = 2  # the end marker of the stream
INFO = 3  # usage or details, no token
SKIP = 4  # nothing to measure (a chat role announcement)


class StreamInterpreter:
    """Turns the events of one response into tokens, text and counts, per API mode."""

    __slots__ = (
        "api",
        "done",
        "final_text",
        "keep_text",
        "output_tokens",
        "parts",
        "prompt_tokens",
        "tokens",
    )

    def __init__(self, api: str, keep_text: bool = True) -> None:
        if api not in API_PATHS:
            raise ValueError(f"unknown api {api!r}")
        self.api = api
        self.keep_text = keep_text
        self.done = False
        self.tokens = 0  # token events seen
        self.output_tokens: int | None = None
        self.prompt_tokens: int | None = None
        self.parts: list[str] = []
        self.final_text: str | None = None

    @property
    def text(self) -> str:
        return self.final_text if self.final_text is not None else "".join(self.parts)

    def interpret(self, event_type: str, data: str) -> int:
        """Return TOKEN, DONE, INFO or SKIP; raise StreamError for error events or bad data."""
        if self.done:
            raise StreamError(f"event after the end of the stream: {_excerpt(data)}")
        if event_type == "error":
            raise StreamError(f"error event: {_excerpt(data)}")
        if data == "[DONE]":
            if self.api == "tgi":
                raise StreamError("unexpected 'data: [DONE]' on a TGI stream")
            self.done = True
            return DONE
        try:
            obj = json.loads(data)
        except ValueError:
            raise StreamError(f"malformed SSE data (not JSON): {_excerpt(data)}") from None
        if not isinstance(obj, dict):
            raise StreamError(f"malformed SSE data (not a JSON object): {_excerpt(data)}")
        if "error" in obj:
            raise StreamError(_error_text(obj))
        if self.api == "tgi":
            return self._tgi(obj, data)
        return self._openai(obj, data)

    def _tgi(self, obj: dict, data: str) -> int:
        token = obj.get("token")
        if not isinstance(token, dict):
            raise StreamError(f"TGI event without a token: {_excerpt(data)}")
        self.tokens += 1
        if self.keep_text and not token.get("special"):
            self.parts.append(str(token.get("text") or ""))
        generated = obj.get("generated_text")
        if generated is not None:
            self.done = True
            if self.keep_text:
                self.final_text = str(generated)
            details = obj.get("details")
            if isinstance(details, dict):
                if isinstance(details.get("generated_tokens"), int):
                    self.output_tokens = details["generated_tokens"]
                if isinstance(details.get("input_length"), int):
                    self.prompt_tokens = details["input_length"]
        return TOKEN

    def _openai(self, obj: dict, data: str) -> int:
        usage = obj.get("usage")
        if isinstance(usage, dict):
            if isinstance(usage.get("completion_tokens"), int):
                self.output_tokens = usage["completion_tokens"]
            if isinstance(usage.get("prompt_tokens"), int):
                self.prompt_tokens = usage["prompt_tokens"]
        choices = obj.get("choices")
        if not choices:
            if isinstance(usage, dict):
                return INFO
            raise StreamError(f"OpenAI event without choices or usage: {_excerpt(data)}")
        choice = choices[0]
        if not isinstance(choice, dict):
            raise StreamError(f"malformed choice: {_excerpt(data)}")
        if choice.get("finish_reason") == "abort":
            raise StreamError("the server aborted the generation (finish_reason abort)")
        if self.api == "openai":
            self.tokens += 1
            if self.keep_text:
                self.parts.append(str(choice.get("text") or ""))
            return TOKEN
        delta = choice.get("delta")
        if not isinstance(delta, dict):
            raise StreamError(f"chat chunk without delta: {_excerpt(data)}")
        content = delta.get("content")
        if "role" in delta and not content and choice.get("finish_reason") is None and not self.tokens:
            # the opening chunk announcing the assistant role carries no token
            return SKIP
        self.tokens += 1
        if self.keep_text:
            self.parts.append(str(content or ""))
        return TOKEN


def _error_text(obj: dict) -> str:
    err = obj.get("error")
    if isinstance(err, dict):  # OpenAI: {"error": {"message", "type", "code"}}
        kind = err.get("type") or err.get("code") or "error"
        return f"error event ({kind}): {err.get('message', '')}".rstrip()
    kind = obj.get("error_type") or "error"  # TGI: {"error": str, "error_type": str}
    return f"error event ({kind}): {err}"


def _excerpt(text: str, limit: int = 160) -> str:
    text = text.replace("\n", "\\n")
    return text if len(text) <= limit else text[:limit] + "..."


def build_request(
    api: str,
    prompt: str,
    max_new_tokens: int,
    model: str | None,
    fixed_length: bool = True,
    greedy: bool = False,
) -> tuple[str, bytes]:
    """The streaming request for a prompt: (path relative to the base URL, JSON body)."""
    if api == "tgi":
        params: dict = {"max_new_tokens": max_new_tokens, "details": True}
        if greedy:
            params["do_sample"] = False
        body: dict = {"inputs": prompt, "parameters": params}
        return API_PATHS[api], json.dumps(body).encode()
    body = {"model": model, "stream": True, "stream_options": {"include_usage": True}}
    if api == "openai":
        body["prompt"] = prompt
        body["max_tokens"] = max_new_tokens
    else:
        body["messages"] = [{"role": "user", "content": prompt}]
        body["max_completion_tokens"] = max_new_tokens
    if fixed_length:
        # vLLM's extension: generate exactly max tokens; servers without it ignore the field
        body["ignore_eos"] = True
    if greedy:
        body["temperature"] = 0.0
        body["seed"] = 0
    return API_PATHS[api], json.dumps(body).encode()
