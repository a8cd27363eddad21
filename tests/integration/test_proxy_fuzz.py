"""Fuzzing hf-proxy (hypothesis) in front of the real vLLM: whatever the body, no 5xx and no hang.

Bodies mix well-formed TGI parameters with wrong types, out-of-range numbers, odd strings and
random JSON; every answer must come back within the timeout with a status below 500 (streams: a
200 whose events are all well-formed), and the proxy must still serve afterwards.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from proxy_support import start_proxy

TIMEOUT = 60

json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**65), max_value=2**65),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
json_any = st.recursive(
    json_leaf,
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
    max_leaves=12,
)

small_int = st.one_of(
    st.none(), st.integers(min_value=-3, max_value=8), st.sampled_from([2**32, 2**64, 600]), json_any
)
prob = st.one_of(
    st.none(), st.floats(min_value=-3, max_value=3, allow_nan=False), st.sampled_from([0, 1, 1.0]), json_any
)
params = st.fixed_dictionaries(
    {},
    optional={
        "max_new_tokens": st.one_of(
            st.none(), st.integers(min_value=-2, max_value=6), st.sampled_from([600, 2**33]), json_any
        ),
        "temperature": prob,
        "top_p": prob,
        "top_k": small_int,
        "typical_p": prob,
        "repetition_penalty": prob,
        "frequency_penalty": prob,
        "do_sample": st.one_of(st.booleans(), json_any),
        "best_of": small_int,
        "seed": st.one_of(st.none(), st.integers(min_value=-1, max_value=2**64), json_any),
        "stop": st.one_of(st.lists(st.text(max_size=4), max_size=6), json_any),
        "details": st.one_of(st.booleans(), json_any),
        "decoder_input_details": st.one_of(st.booleans(), json_any),
        "top_n_tokens": small_int,
        "truncate": small_int,
        "return_full_text": st.one_of(st.none(), st.booleans(), json_any),
        "watermark": st.booleans(),
        "grammar": st.one_of(
            st.none(),
            st.fixed_dictionaries(
                {"type": st.sampled_from(["json", "regex", "json_object", "nope"]), "value": json_any}
            ),
            json_any,
        ),
        "adapter_id": st.one_of(st.none(), st.text(max_size=8)),
    },
)
inputs = st.one_of(st.text(max_size=40), st.just(""), json_any)
bodies = st.one_of(
    st.fixed_dictionaries(
        {"inputs": inputs},
        optional={"parameters": st.one_of(params, json_any), "stream": st.one_of(st.booleans(), json_any)},
    ),
    json_any,
)
routes = st.sampled_from(["/generate", "/", "/generate_stream", "/tokenize"])


@pytest.fixture(scope="module")
def proxy(vllm_url: str, tmp_path_factory: pytest.TempPathFactory):
    with start_proxy([vllm_url], log_dir=tmp_path_factory.mktemp("proxy-logs")) as p:
        yield p


def _check(proxy_url: str, route: str, raw: bytes) -> None:
    r = requests.post(
        proxy_url + route, data=raw, headers={"Content-Type": "application/json"}, timeout=TIMEOUT
    )
    assert r.status_code < 500, (route, raw[:300], r.status_code, r.text[:300])
    if r.headers.get("content-type", "").startswith("text/event-stream"):
        text = r.content.decode()
        assert text.endswith("\n\n") or text == ""
        for block in text.split("\n\n")[:-1]:
            if block != ":":
                assert block.startswith("data: ")
                json.loads(block[6:])


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(route=routes, body=bodies)
def test_fuzz_tgi_routes(proxy, route, body):
    _check(proxy.url, route, json.dumps(body).encode())


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(route=routes, raw=st.binary(max_size=200))
def test_fuzz_raw_bytes(proxy, route, raw):
    _check(proxy.url, route, raw)


def test_still_serving_and_no_tracebacks(proxy):
    r = requests.post(
        proxy.url + "/generate", json={"inputs": "hi", "parameters": {"max_new_tokens": 2}}, timeout=30
    )
    assert r.status_code == 200
    assert "Traceback" not in Path(proxy.log).read_text()
