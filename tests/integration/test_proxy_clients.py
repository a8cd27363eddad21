"""The real client libraries, unchanged, against hf-proxy in front of the real vLLM.

huggingface_hub 0.20 (parameters sent with nulls, client-side validation, no provider), 0.36
(providers, "dummy" model on /v1) and 2.x (httpx), each in its own venv (cached under
$TEXTGEN_CACHE_DIR), plus text-generation 0.7 (sync and async) in the 0.20 venv. The checks run in a
subprocess (proxy_clients/hub_check.py) and report what the clients returned or raised.
"""

from __future__ import annotations

import concurrent.futures
import json
import subprocess
from pathlib import Path

import pytest
import requests
from proxy_support import CLIENTS, client_python, start_proxy

PROMPT = "hello world"
VERSIONS = ["hub020", "hub036", "hub2"]


@pytest.fixture(scope="module")
def proxy(vllm_url: str, tmp_path_factory: pytest.TempPathFactory):
    with start_proxy([vllm_url], log_dir=tmp_path_factory.mktemp("proxy-logs")) as p:
        yield p.url


@pytest.fixture(scope="module")
def ref(vllm_url: str) -> dict:
    """vLLM's own greedy answer for the prompt (8 tokens)."""
    body = {"model": "tiny", "prompt": PROMPT, "max_tokens": 8, "temperature": 0, "return_token_ids": True}
    return requests.post(vllm_url + "/v1/completions", json=body, timeout=60).json()["choices"][0]


@pytest.fixture(scope="module")
def results(proxy: str) -> dict[str, dict]:
    """All client versions run at once (their venvs are built first, once)."""
    pythons = {v: client_python(v) for v in VERSIONS}

    def run(v: str) -> dict:
        p = subprocess.run(
            [str(pythons[v]), str(CLIENTS / "hub_check.py"), proxy, PROMPT],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert p.returncode == 0, p.stderr[-3000:]
        return json.loads(p.stdout)

    with concurrent.futures.ThreadPoolExecutor(len(VERSIONS)) as ex:
        return dict(zip(VERSIONS, ex.map(run, VERSIONS), strict=True))


def ok(r: dict, key: str):
    v = r[key]
    assert not (isinstance(v, dict) and "exception" in v), f"{r['version']} {key}: {v}"
    return v


@pytest.mark.parametrize("version", VERSIONS)
def test_text_generation(results, ref, version):
    r = results[version]
    # huggingface_hub < 0.2x-late sends return_full_text=false explicitly; newer ones leave it unset,
    # which TGI's compat route (POST /) answers with the prompt in front, as here.
    prefix = "" if version == "hub020" else PROMPT
    assert ok(r, "text") == prefix + ref["text"]
    d = ok(r, "details")
    assert d["finish_reason"] == "length" and d["generated_tokens"] == 8
    assert [t[0] for t in d["tokens"]] == ref["token_ids"]
    p = ok(r, "prefill")
    assert [x[1] for x in p["prefill"]] == ["<s>", "hell", "o", " wor", "ld"]
    assert "".join(ok(r, "stream")) == ref["text"].rstrip("\ufffd")
    sd = ok(r, "stream_details")
    assert sd["ids"] == ref["token_ids"] and sd["finish_reason"] == "length" and sd["generated_tokens"] == 8
    assert sd["generated_text"] == prefix + ref["text"]
    st = ok(r, "stop")
    assert st["finish_reason"] == "stop_sequence" and st["text"].endswith(st["stop"])
    a, b, c = ok(r, "seed")
    assert a == b != c
    bo = ok(r, "best_of")
    assert bo["best_of"] == 1 and bo["seed"] is not None
    assert ok(r, "full_text").startswith(PROMPT)
    asy = ok(r, "async")
    assert asy["text"] == prefix + ref["text"] and asy["finish_reason"] == "length"
    assert "".join(asy["stream"]) == ref["text"].rstrip("\ufffd")


@pytest.mark.parametrize("version", VERSIONS)
def test_validation_errors_reach_the_client(results, version):
    r = results[version]
    v, av = r["validation"], r["async"]["validation"]
    assert v["exception"] == "ValidationError" and av["exception"] == "ValidationError"
    if version == "hub020":  # this version validates with pydantic before sending
        assert "`temperature` must be strictly positive" in v["message"]
    else:  # the server's TGI error, raised by error_type
        assert v["message"] == "Input validation error: `temperature` must be strictly positive"
        assert av["message"] == "Input validation error: `top_p` must be > 0.0 and < 1.0"


@pytest.mark.parametrize("version", ["hub036", "hub2"])
def test_endpoint_info_health_and_chat(results, version):
    r = results[version]
    assert ok(r, "info") == {"model_id": "tiny", "max_total_tokens": 512, "max_input_tokens": 511}
    assert ok(r, "health") is True
    chat = ok(r, "chat")
    assert chat["finish_reason"] == "length" and isinstance(chat["content"], str)
    cs = ok(r, "chat_stream")
    assert cs["n"] >= 2 and cs["finish_reason"] == "length"


def test_text_generation_client(results, ref):
    r = results["hub020"]
    s = ok(r, "tg_sync")
    assert s["text"] == ref["text"] and s["finish_reason"] == "length" and s["ids"] == ref["token_ids"]
    assert s["stream_ids"] == ref["token_ids"] and s["stream_final"] == ref["text"]
    a = ok(r, "tg_async")
    assert a["text"] == ref["text"] and a["stream_final"] == ref["text"]
    assert a["validation"]["exception"] == "ValidationError"


def test_clients_dir_is_complete():
    assert {p.name for p in Path(CLIENTS).glob("requirements-*.txt")} == {
        f"requirements-{v}.txt" for v in VERSIONS
    }
