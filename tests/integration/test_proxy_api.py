"""hf-proxy against the real CPU vLLM (tiny model): TGI's API, formats, validation, errors, routing."""

from __future__ import annotations

import json
import re
import socket
import time
from pathlib import Path

import pytest
import requests
from proxy_support import TcpRelay, http_status, start_proxy
from tokenizers import Tokenizer

PROMPTS = ["hello world", "The quick brown fox", "a b c d e f"]
EOS_ID = 2
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("proxy-logs")


@pytest.fixture(scope="module")
def proxy(vllm_url: str, logs: Path):
    with start_proxy([vllm_url], log_dir=logs) as p:
        yield p.url


@pytest.fixture(scope="module")
def tok(tiny_model_dir: Path) -> Tokenizer:
    return Tokenizer.from_file(str(tiny_model_dir / "tokenizer.json"))


def vllm_complete(vllm_url: str, prompt: str, max_tokens: int, **kw) -> dict:
    body = {
        "model": "tiny",
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
        "return_token_ids": True,
    }
    body.update(kw)
    r = requests.post(vllm_url + "/v1/completions", json=body, timeout=60)
    r.raise_for_status()
    return r.json()["choices"][0]


def gen(proxy: str, inputs: str, route: str = "/generate", **params) -> requests.Response:
    return requests.post(proxy + route, json={"inputs": inputs, "parameters": params}, timeout=120)


def sse_events(raw: bytes) -> list[dict]:
    text = raw.decode()
    assert text.endswith("\n\n")
    events = []
    for block in text.split("\n\n")[:-1]:
        if block == ":":
            continue
        assert block.startswith("data: "), block
        events.append(json.loads(block[6:]))
    return events


# -- generation ----------------------------------------------------------------------------------
@pytest.mark.parametrize("prompt", PROMPTS)
def test_greedy_text_equals_vllm_and_ids_are_the_tokenizers(proxy, vllm_url, tok, prompt):
    ref = vllm_complete(vllm_url, prompt, 12)
    r = gen(proxy, prompt, max_new_tokens=12, details=True, decoder_input_details=True)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["generated_text"] == ref["text"]
    d = body["details"]
    assert list(d) == ["finish_reason", "generated_tokens", "seed", "prefill", "tokens"]
    assert d["finish_reason"] == "length" and d["generated_tokens"] == 12 and d["seed"] is None
    ids = [t["id"] for t in d["tokens"]]
    assert ids == ref["token_ids"]
    assert [p["id"] for p in d["prefill"]] == tok.encode(prompt).ids
    assert d["prefill"][0]["logprob"] is None and all(
        isinstance(p["logprob"], float) for p in d["prefill"][1:]
    )
    assert [p["text"] for p in d["prefill"]] == [
        tok.decode([i], skip_special_tokens=False) for i in tok.encode(prompt).ids
    ]
    # token texts are TGI's incremental pieces: they join to the decoded ids
    assert "".join(t["text"] for t in d["tokens"]) == tok.decode(ids, skip_special_tokens=False).rstrip(
        "\ufffd"
    )
    assert all(t["special"] is False for t in d["tokens"])
    # the compat route returns a list and the prompt in front (text-generation default)
    r2 = gen(proxy, prompt, route="/", max_new_tokens=12)
    assert r2.json() == [{"generated_text": prompt + ref["text"]}]
    r3 = gen(proxy, prompt, route="/", max_new_tokens=12, return_full_text=False)
    assert r3.json() == [{"generated_text": ref["text"]}]


def test_top_tokens_and_headers(proxy, tok):
    r = gen(proxy, "hello world", max_new_tokens=4, details=True, top_n_tokens=3)
    assert r.status_code == 200
    d = r.json()["details"]
    assert len(d["top_tokens"]) == 4
    for pos, tops in zip(d["tokens"], d["top_tokens"], strict=True):
        assert 1 <= len(tops) <= 3
        assert tops == sorted(tops, key=lambda t: -t["logprob"])
        assert pos["id"] == tops[0]["id"]  # greedy: the chosen token is the most likely
        for t in tops:
            assert t["text"] == tok.decode([t["id"]], skip_special_tokens=False)
    h = r.headers
    assert h["x-compute-type"] == "gpu+optimized"
    assert h["x-prompt-tokens"] == "5" and h["x-generated-tokens"] == "4"
    for k in (
        "x-compute-time",
        "x-total-time",
        "x-validation-time",
        "x-queue-time",
        "x-inference-time",
        "x-time-per-token",
        "x-compute-characters",
    ):
        assert re.fullmatch(r"[0-9.]+", h[k]), k
    assert int(h["Content-Length"]) == len(r.content)


def test_finish_reason_stop_sequence(proxy, vllm_url):
    ref = vllm_complete(vllm_url, "hello world", 16)["text"]
    stop = ref[5:8]
    r = gen(proxy, "hello world", max_new_tokens=16, stop=[stop], details=True)
    body = r.json()
    assert body["details"]["finish_reason"] == "stop_sequence"
    assert body["generated_text"].endswith(stop)
    assert body["generated_text"] == ref[: ref.index(stop) + len(stop)]


def test_finish_reason_eos_token(proxy, vllm_url, tok):
    """Sample with seeds until one generation ends on EOS (random weights: about 1 in 512 a token)."""
    found = None
    for base in range(0, 48, 16):
        import concurrent.futures as cf

        with cf.ThreadPoolExecutor(16) as ex:
            rs = list(
                ex.map(
                    lambda s: (
                        s,
                        gen(
                            proxy,
                            "hello",
                            max_new_tokens=200,
                            do_sample=True,
                            temperature=1.0,
                            seed=s,
                            details=True,
                        ).json(),
                    ),
                    range(base, base + 16),
                )
            )
        found = next(((s, b) for s, b in rs if b["details"]["finish_reason"] == "eos_token"), None)
        if found:
            break
    assert found, "no EOS in 48 sampled generations"
    seed, body = found
    last = body["details"]["tokens"][-1]
    assert last["id"] == EOS_ID and last["special"] is True and last["text"] == "</s>"
    assert "</s>" not in body["generated_text"]
    assert body["details"]["seed"] == seed
    assert body["details"]["generated_tokens"] == len(body["details"]["tokens"])
    # same seed, straight to vLLM: same text, vLLM's "stop" without a stop string
    direct = requests.post(
        vllm_url + "/v1/completions",
        json={
            "model": "tiny",
            "prompt": "hello",
            "max_tokens": 200,
            "temperature": 1.0,
            "seed": seed,
            "top_p": 1.0,
            "top_k": -1,
            "min_p": 0.0,
            "repetition_penalty": 1.0,
        },
        timeout=60,
    ).json()["choices"][0]
    assert direct["text"] == body["generated_text"]
    assert direct["finish_reason"] == "stop" and direct["stop_reason"] is None
    # and the stream ends the same way
    s = requests.post(
        proxy + "/generate_stream",
        json={
            "inputs": "hello",
            "parameters": {
                "max_new_tokens": 200,
                "do_sample": True,
                "temperature": 1.0,
                "seed": seed,
                "details": True,
            },
        },
        timeout=60,
    )
    evs = sse_events(s.content)
    assert evs[-1]["details"]["finish_reason"] == "eos_token"
    assert evs[-1]["token"] == {**last, "logprob": evs[-1]["token"]["logprob"]}


def test_seed_and_best_of(proxy):
    a = gen(proxy, "hello", max_new_tokens=8, do_sample=True, seed=42, details=True).json()
    b = gen(proxy, "hello", max_new_tokens=8, do_sample=True, seed=42, details=True).json()
    c = gen(proxy, "hello", max_new_tokens=8, do_sample=True, seed=2**64 - 1, details=True).json()
    assert a == b and a["details"]["seed"] == 42 and c["details"]["seed"] == 2**64 - 1
    r = gen(proxy, "hello", max_new_tokens=6, do_sample=True, best_of=2, details=True).json()
    d = r["details"]
    assert len(d["best_of_sequences"]) == 1
    other = d["best_of_sequences"][0]
    assert list(other) == ["generated_text", "finish_reason", "generated_tokens", "seed", "prefill", "tokens"]

    def mean(toks: list) -> float:
        return sum(t["logprob"] for t in toks) / len(toks)

    assert mean(d["tokens"]) >= mean(other["tokens"])
    # sampling without a seed reports the random seed it used
    s = gen(proxy, "hello", max_new_tokens=2, do_sample=True, details=True).json()["details"]["seed"]
    assert isinstance(s, int) and s >= 0


def test_default_max_new_tokens_is_tgi3(proxy, vllm_url):
    """No max_new_tokens: TGI 3.x generates up to max_total_tokens - input length."""
    r = gen(proxy, "hello world", details=True, stop=["qu"])
    assert r.status_code == 200
    r = requests.post(
        proxy + "/generate", json={"inputs": "hello world"}, timeout=120
    )  # no parameters: samples
    assert r.status_code == 200
    assert int(r.headers["x-generated-tokens"]) <= 512 - 5


def test_grammar_regex(proxy):
    r = gen(proxy, "hello", max_new_tokens=10, grammar={"type": "regex", "value": "[0-9]{3}"})
    assert r.status_code == 200, r.text
    assert re.fullmatch("[0-9]{3}", r.json()["generated_text"])
    r = gen(
        proxy,
        "hello",
        max_new_tokens=40,
        grammar={
            "type": "json",
            "value": {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]},
        },
    )
    assert r.status_code == 200, r.text


# -- streaming -----------------------------------------------------------------------------------
def test_stream_format(proxy, vllm_url):
    ref = vllm_complete(vllm_url, "hello world", 6)
    r = requests.post(
        proxy + "/generate_stream",
        json={"inputs": "hello world", "parameters": {"max_new_tokens": 6, "details": True}},
        timeout=60,
        stream=True,
    )
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    assert r.headers["x-accel-buffering"] == "no" and r.headers["x-compute-type"]
    raw = r.raw.read()
    assert b"[DONE]" not in raw
    evs = sse_events(raw)
    assert [e["index"] for e in evs] == list(range(1, 7))
    for e in evs[:-1]:
        assert list(e) == ["index", "token", "generated_text", "details"]
        assert e["generated_text"] is None and e["details"] is None
        assert list(e["token"]) == ["id", "text", "logprob", "special"]
    last = evs[-1]
    assert last["generated_text"] == ref["text"]
    assert last["details"] == {
        "finish_reason": "length",
        "generated_tokens": 6,
        "seed": None,
        "input_length": 5,
    }
    assert [e["token"]["id"] for e in evs] == ref["token_ids"]
    # POST / with stream: the same events, prompt in front by default, no details unless asked
    r2 = requests.post(
        proxy + "/",
        json={"inputs": "hello world", "parameters": {"max_new_tokens": 6}, "stream": True},
        timeout=60,
    )
    evs2 = sse_events(r2.content)
    assert evs2[-1]["generated_text"] == "hello world" + ref["text"] and evs2[-1]["details"] is None
    # top tokens in stream events
    r3 = requests.post(
        proxy + "/generate_stream",
        json={"inputs": "hello world", "parameters": {"max_new_tokens": 3, "top_n_tokens": 2}},
        timeout=60,
    )
    evs3 = sse_events(r3.content)
    assert all(list(e) == ["index", "token", "top_tokens", "generated_text", "details"] for e in evs3)
    assert all(len(e["top_tokens"]) == 2 for e in evs3)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"best_of": 2, "do_sample": True}, "`best_of` != 1 is not supported when streaming tokens"),
        (
            {"decoder_input_details": True},
            "`decoder_input_details` == true is not supported when streaming tokens",
        ),
        ({"temperature": 0}, "`temperature` must be strictly positive"),
    ],
)
def test_stream_errors_are_events(proxy, params, message):
    r = requests.post(proxy + "/generate_stream", json={"inputs": "hi", "parameters": params}, timeout=30)
    assert r.status_code == 200
    assert sse_events(r.content) == [
        {"error": "Input validation error: " + message, "error_type": "validation"}
    ]


# -- validation ----------------------------------------------------------------------------------
V = "Input validation error: "
RULES = [
    ({"best_of": 3, "do_sample": True}, "`best_of` must be > 0 and <= 2. Given: 3"),
    ({"best_of": 2}, "you must use sampling when `best_of` is > 1"),
    ({"temperature": 0.0}, "`temperature` must be strictly positive"),
    ({"temperature": -1, "top_p": 2}, "`temperature` must be strictly positive"),
    ({"repetition_penalty": 0}, "`repetition_penalty` must be strictly positive"),
    ({"frequency_penalty": 2.5}, "`frequency_penalty` must be >= -2.0 and <= 2.0"),
    ({"top_p": 1.0}, "`top_p` must be > 0.0 and < 1.0"),
    ({"top_p": 0, "top_k": 0}, "`top_p` must be > 0.0 and < 1.0"),
    ({"typical_p": 1.0}, "`typical_p` must be > 0.0 and < 1.0"),
    ({"top_k": 0}, "`top_k` must be strictly positive"),
    ({"max_new_tokens": 0}, "`max_new_tokens` must be strictly positive"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "`stop` supports up to 4 stop sequences. Given: 5"),
    ({"best_of": 2, "do_sample": True, "seed": 1}, "`seed` must not be set when `best_of` > 1"),
    ({"top_n_tokens": 6}, "`top_n_tokens` must be >= 0 and <= 5. Given: 6"),
    ({"truncate": 0}, "`truncate` must be strictly positive and less than 511. Given: 0"),
    ({"truncate": 600}, "`truncate` must be strictly positive and less than 511. Given: 600"),
    (
        {"max_new_tokens": 600},
        "`inputs` tokens + `max_new_tokens` must be <= 512. Given: 5 `inputs` tokens and 600 `max_new_tokens`",  # noqa: E501
    ),
    (
        {"max_new_tokens": 510},
        "`inputs` tokens + `max_new_tokens` must be <= 512. Given: 5 `inputs` tokens and 510 `max_new_tokens`",  # noqa: E501
    ),
    ({"grammar": {"type": "json", "value": "{not json"}}, "grammar is not valid: "),
]


@pytest.mark.parametrize(("params", "message"), RULES)
def test_validation_rules(proxy, params, message):
    r = gen(proxy, "hello world", **params)
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["error_type"] == "validation"
    assert body["error"].startswith(V + message) if message.endswith(": ") else body["error"] == V + message
    assert int(r.headers["Content-Length"]) == len(r.content)


def test_length_rules(proxy, tok):
    assert gen(proxy, "").json() == {"error": V + "`inputs` cannot be empty", "error_type": "validation"}
    long = "hello world " * 300
    n = len(tok.encode(long).ids)
    assert n > 512
    assert gen(proxy, long).json()["error"] == (
        V
        + f"`inputs` tokens + `max_new_tokens` must be <= 512. Given: {n} `inputs` tokens and 0 `max_new_tokens`"  # noqa: E501
    )
    r = gen(proxy, long, max_new_tokens=4)
    assert r.status_code == 422
    assert r.json()["error"] == (
        V
        + f"`inputs` tokens + `max_new_tokens` must be <= 512. Given: {n} `inputs` tokens and 4 `max_new_tokens`"  # noqa: E501
    )
    # truncate keeps the last tokens, so the same prompt passes
    r = gen(proxy, long, max_new_tokens=4, truncate=100, details=True)
    assert r.status_code == 200, r.text
    assert r.headers["x-prompt-tokens"] == "100"


def test_http_level_errors(proxy):
    r = requests.post(proxy + "/generate", data=b"{nope", headers=JSON, timeout=10)
    assert r.status_code == 400 and r.text.startswith("Failed to parse the request body as JSON: ")
    r = requests.post(proxy + "/generate", data=b'{"inputs": "x"}', timeout=10)
    assert r.status_code == 415 and r.text == "Expected request with `Content-Type: application/json`"
    r = requests.post(proxy + "/generate", json={"inputs": 1}, timeout=10)
    assert r.status_code == 422
    assert (
        r.text
        == "Failed to deserialize the JSON body into the target type: inputs: invalid type: integer `1`, expected a string"  # noqa: E501
    )
    r = requests.post(
        proxy + "/generate", json={"inputs": "x", "parameters": {"max_new_tokens": "5"}}, timeout=10
    )
    assert r.status_code == 422 and "parameters.max_new_tokens: invalid type: string" in r.text
    r = requests.post(proxy + "/generate", json={"parameters": {}}, timeout=10)
    assert r.status_code == 422 and r.text.endswith("missing field `inputs`")
    r = requests.post(proxy + "/generate", json={"inputs": "x" * 2_000_001}, timeout=30)
    assert r.status_code == 413 and r.text == "Failed to buffer the request body: length limit exceeded"
    for resp in (r,):
        assert int(resp.headers["Content-Length"]) == len(resp.content)
    assert requests.get(proxy + "/nope", timeout=5).status_code == 404
    assert requests.get(proxy + "/generate", timeout=5).status_code == 405
    # unknown fields are ignored
    r = requests.post(
        proxy + "/generate", json={"inputs": "hi", "foo": 1, "parameters": {"max_new_tokens": 1, "bar": 2}}
    )
    assert r.status_code == 200


# -- other routes --------------------------------------------------------------------------------
def test_info_health_metrics_tokenize(proxy, tok):
    info = requests.get(proxy + "/info", timeout=5).json()
    for k, v in {
        "model_id": "tiny",
        "max_best_of": 2,
        "max_stop_sequences": 4,
        "max_input_tokens": 511,
        "max_total_tokens": 512,
        "max_client_batch_size": 4,
        "router": "text-generation-router",
        "model_pipeline_tag": "text-generation",
        "max_concurrent_requests": 128,
    }.items():
        assert info[k] == v, k
    assert info["tokenizer_config"]["eos_token"] == "</s>"
    for path in ("/health", "/", "/ping"):
        r = requests.get(proxy + path, timeout=5)
        assert r.status_code == 200 and r.content == b""
    gen(proxy, "hi", temperature=-1)
    m = requests.get(proxy + "/metrics", timeout=5).text
    assert re.search(r"^tgi_request_count [1-9]", m, re.M)
    assert re.search(r"^tgi_request_success [1-9]", m, re.M)
    assert re.search(r'^tgi_request_failure\{err="validation"\} [1-9]', m, re.M)
    assert "tgi_request_duration_bucket" in m and "tgi_request_generated_tokens_count" in m
    text = "héllo wörld, ça va?"
    r = requests.post(proxy + "/tokenize", json={"inputs": text}, timeout=5).json()
    assert [t["id"] for t in r] == tok.encode(text).ids
    raw = text.encode()
    for t in r[1:]:
        assert raw[t["start"] : t["stop"]].decode() == t["text"]


def test_v1_passthrough_maps_model_names(proxy):
    models = requests.get(proxy + "/v1/models", timeout=5).json()
    assert models["data"][0]["id"] == "tiny"
    for name in ("tgi", "dummy", "tiny"):
        r = requests.post(
            proxy + "/v1/completions", json={"model": name, "prompt": "hi", "max_tokens": 3}, timeout=30
        )
        assert r.status_code == 200, r.text
        assert r.json()["model"] == "tiny"
    r = requests.post(
        proxy + "/v1/chat/completions",
        json={
            "model": "dummy",
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 3,
            "stream": True,
        },
        timeout=30,
    )
    assert r.status_code == 200
    assert r.text.rstrip("\n").endswith("data: [DONE]")
    r = requests.post(
        proxy + "/v1/completions", json={"model": "other", "prompt": "hi", "max_tokens": 3}, timeout=30
    )
    assert r.status_code == 404  # vLLM's own answer, passed through


def test_openai_client(proxy):
    import openai

    c = openai.OpenAI(base_url=proxy + "/v1", api_key="unused")
    r = c.completions.create(model="tgi", prompt="hello", max_tokens=4, temperature=0)
    assert r.choices[0].finish_reason == "length"
    chunks = list(
        c.chat.completions.create(
            model="dummy", messages=[{"role": "user", "content": "hi"}], max_tokens=4, stream=True
        )
    )
    assert chunks and chunks[-1].choices[0].finish_reason == "length"


def test_upstream_error_becomes_tgi_error(proxy):
    r = gen(proxy, "hello", max_new_tokens=2, adapter_id="no-such-adapter")
    assert r.status_code == 422
    assert r.json()["error_type"] == "validation" and "no-such-adapter" in r.json()["error"]


# -- disconnects, overload, upstream health -----------------------------------------------------
def running(vllm_url: str) -> float:
    m = requests.get(vllm_url + "/metrics", timeout=5).text
    return sum(float(x) for x in re.findall(r"^vllm:num_requests_running\{[^}]*\} ([0-9.e+]+)", m, re.M))


def raw_request(url: str, path: str, body: dict) -> socket.socket:
    host, port = url.split("//")[1].split(":")
    s = socket.create_connection((host, int(port)))
    data = json.dumps(body).encode()
    s.sendall(
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n".encode()  # noqa: E501
        + data
    )
    return s


def read_until(s: socket.socket, marker: bytes, timeout: float = 30) -> bytes:
    s.settimeout(timeout)
    buf = b""
    while marker not in buf:
        chunk = s.recv(4096)
        assert chunk, buf
        buf += chunk
    return buf


@pytest.mark.parametrize("path", ["/generate_stream", "/generate"])
def test_client_disconnect_aborts_upstream(proxy, vllm_url, path):
    assert _wait(lambda: running(vllm_url) == 0)
    s = raw_request(proxy, path, {"inputs": "hello world", "parameters": {"max_new_tokens": 450}})
    if path == "/generate_stream":
        read_until(s, b"data: ")
    deadline = time.monotonic() + 10
    while running(vllm_url) < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert running(vllm_url) == 1
    s.close()
    t0 = time.monotonic()
    while running(vllm_url) > 0 and time.monotonic() - t0 < 5:
        time.sleep(0.05)
    took = time.monotonic() - t0
    assert running(vllm_url) == 0
    assert took < 1.0, f"upstream request still running {took:.2f} s after the client left"


def test_overloaded(vllm_url, logs):
    with start_proxy([vllm_url], "--max-concurrent-requests", "1", log_dir=logs) as p:
        s = raw_request(p.url, "/generate_stream", {"inputs": "hello", "parameters": {"max_new_tokens": 300}})
        read_until(s, b"data: ")
        r = gen(p.url, "hi", max_new_tokens=2)
        assert r.status_code == 429
        assert r.json() == {"error": "Model is overloaded", "error_type": "overloaded"}
        r = requests.post(
            p.url + "/generate_stream", json={"inputs": "hi", "parameters": {"max_new_tokens": 2}}
        )
        assert sse_events(r.content) == [{"error": "Model is overloaded", "error_type": "overloaded"}]
        s.close()
        time.sleep(0.3)
        assert gen(p.url, "hi", max_new_tokens=2).status_code == 200


def _wait(cond, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.1)
    return False


def test_upstreams_ejected_and_readmitted(vllm_url, logs, tmp_path):
    host, port = vllm_url.split("//")[1].split(":")
    relay = TcpRelay(host, int(port))
    relay.start()
    cfg = tmp_path / "proxy.toml"
    cfg.write_text(
        f'upstreams = ["http://127.0.0.1:{relay.port}", "{vllm_url}"]\nhealth_check_interval = 0.3\n'
    )
    try:
        with start_proxy([], "--config", str(cfg), log_dir=logs) as p:

            def healthy():
                return [u["healthy"] for u in requests.get(p.url + "/info", timeout=5).json()["upstreams"]]

            assert _wait(lambda: healthy() == [True, True])
            relay.stop()
            assert _wait(lambda: healthy() == [False, True])
            for _i in range(4):  # traffic keeps flowing through the healthy one
                assert gen(p.url, "hi", max_new_tokens=2).status_code == 200
            relay.start()
            assert _wait(lambda: healthy() == [True, True])
            assert "ejected" in p.log_text() and "admitted" in p.log_text()
        # the only upstream down: /health 503 and TGI's unhealthy error; back when it returns
        cfg.write_text(f'upstreams = ["http://127.0.0.1:{relay.port}"]\nhealth_check_interval = 0.3\n')
        with start_proxy([], "--config", str(cfg), log_dir=logs) as p:
            relay.stop()
            # every worker process keeps its own view: wait until all have seen it (a few rounds)
            assert _wait(lambda: all(http_status(p.url + "/health") == 503 for _i in range(6)))
            r = requests.get(p.url + "/health", timeout=5)
            assert r.status_code == 503
            assert r.json() == {"error": "unhealthy", "error_type": "healthcheck"}
            r = gen(p.url, "hi", max_new_tokens=2)
            assert r.status_code == 503 and r.json()["error_type"] == "healthcheck"
            relay.start()
            # a request that finds no healthy upstream probes them at once: no waiting for a round
            assert gen(p.url, "hi", max_new_tokens=2).status_code == 200
            assert _wait(lambda: all(http_status(p.url + "/health") == 200 for _i in range(6)))
    finally:
        relay.close()


def test_without_tokenizer_serves_and_says_so(vllm_url, logs):
    with start_proxy([vllm_url], "--tokenizer", "/nonexistent", log_dir=logs) as p:
        r = gen(p.url, "hello world", max_new_tokens=4, details=True)
        assert r.status_code == 200
        toks = r.json()["details"]["tokens"]
        assert len(toks) == 4 and all(t["special"] is False for t in toks)
        r = gen(p.url, "hello world", details=True)  # no max_new_tokens: counted by the upstream
        assert r.status_code == 200
        r = gen(p.url, "hello world", max_new_tokens=2, top_n_tokens=2)
        assert r.status_code == 422 and "tokenizer" in r.json()["error"]
        r = requests.post(p.url + "/tokenize", json={"inputs": "hi"}, timeout=5)
        assert r.status_code == 404 and r.json()["error_type"] == "no fast tokenizer"
        assert "no tokenizer.json there" in p.log_text()


def test_raw_http_edge_cases(proxy):
    host, port = proxy.split("//")[1].split(":")

    def exchange(data: bytes, wait: float = 0.5) -> bytes:
        with socket.create_connection((host, int(port)), timeout=5) as s:
            s.sendall(data)
            time.sleep(wait)
            return s.recv(65536)

    big = exchange(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n")
    assert big.startswith(b"HTTP/1.1 431 ")
    assert exchange(b"NOT HTTP\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    # pipelined requests are answered in order on one connection
    two = exchange(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\nGET /info HTTP/1.1\r\nHost: x\r\n\r\n")
    assert two.startswith(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\nHTTP/1.1 200 OK\r\n")
    # Expect: 100-continue is honoured
    body = b'{"inputs": "hi", "parameters": {"max_new_tokens": 1}}'
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(
            b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body)
        )
        assert s.recv(100).startswith(b"HTTP/1.1 100 Continue")
        s.sendall(body)
        assert read_until(s, b"generated_text").startswith(b"HTTP/1.1 200 OK")


def _children(pid: int) -> list[int]:
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if int((p / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(p.name))
            except (OSError, ValueError, IndexError):
                pass
    return out


def test_dead_worker_is_replaced_and_sigterm_stops_all(vllm_url, logs):
    import os
    import signal

    with start_proxy([vllm_url], "--workers", "2", log_dir=logs) as p:
        workers = _children(p.proc.pid)
        assert len(workers) == 2
        os.kill(workers[0], signal.SIGKILL)
        assert _wait(lambda: len(_children(p.proc.pid)) == 2 and workers[0] not in _children(p.proc.pid))
        for _i in range(6):  # both sockets answer again
            assert gen(p.url, "hi", max_new_tokens=1).status_code == 200
        assert "restarting" in p.log_text()
        survivors = _children(p.proc.pid)
    p.proc.wait(timeout=10)
    assert all(not Path(f"/proc/{w}").exists() for w in survivors)
