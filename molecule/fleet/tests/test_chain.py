"""Verify the GPU hosts of the `fleet` scenario as playbooks/site.yml leaves them: nginx -> hf-proxy ->
the real CPU vLLM with the tiny model. Runs before test_fleet.py (file order), on the fresh converge.

fleet-gpu1's nginx serves the self-signed pair it generated; fleet-gpu2's serves the user's certificate
(signed by the test CA that prepare.yml made for the host's address), trusted here with hostname
checking on. The clients run on the controller, unchanged: huggingface_hub (this venv, 1.x+ request
shapes), text-generation 0.7 (its own venv, with huggingface_hub 0.20, as the integration tests
cache it), the openai client, and the collection's generation_check / generation_compare modules.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
import testinfra

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "tests" / "integration"))

from test_generation_check import ansible_module  # noqa: E402  (the integration tests' helper)

INVENTORY = os.environ["MOLECULE_INVENTORY_FILE"]
CA = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "tls" / "ca.crt"
TOKEN = "fleet-test-token-chain-0123456789abcdef"
PROMPTS = ["hello world", "The quick brown fox", "Once upon a time"]


def target(name: str):
    return testinfra.get_host(f"ansible://{name}?ansible_inventory={INVENTORY}")


def address(name: str) -> str:
    out = subprocess.run(
        ["docker", "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}", name],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    assert out, f"{name} has no IP address"
    return out[0]


@pytest.fixture(scope="module")
def gpu1() -> str:
    return f"https://{address('fleet-gpu1')}"


@pytest.fixture(scope="module")
def gpu2() -> str:
    return f"https://{address('fleet-gpu2')}"


def insecure() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def vllm_greedy(host: str, prompt: str, n: int) -> str:
    """vLLM's own answer, asked on the target itself (it listens on the host's loopback only)."""
    body = json.dumps({"model": "tiny", "prompt": prompt, "max_tokens": n, "temperature": 0})
    out = target(host).check_output(  # testinfra quotes the arguments
        "curl -sf -H 'Content-Type: application/json' --data-binary %s http://127.0.0.1:8000/v1/completions",
        body,
    )
    return json.loads(out)["choices"][0]["text"]


def test_the_front_door_wants_a_token(gpu1):
    import httpx

    with httpx.Client(verify=insecure(), timeout=60) as c:
        r = c.get(gpu1 + "/info")
        assert r.status_code == 401
        assert r.json()["error_type"] == "unauthorized"
        r = c.get(gpu1 + "/info", headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 200, r.text
        assert r.json()["model_id"] == "tiny"
        # vLLM's own routes stay unreachable through the front door, token or not
        for path in ("/pause", "/resume", "/abort_requests", "/update_weights", "/invocations"):
            r = c.post(gpu1 + path, headers={"Authorization": f"Bearer {TOKEN}"}, content=b"{}")
            assert r.status_code == 404, (path, r.status_code)


def test_greedy_text_through_the_chain_is_vllms_own(gpu1):
    import httpx

    with httpx.Client(verify=insecure(), timeout=120, headers={"Authorization": f"Bearer {TOKEN}"}) as c:
        for prompt in PROMPTS:
            r = c.post(gpu1 + "/generate", json={"inputs": prompt, "parameters": {"max_new_tokens": 12}})
            assert r.status_code == 200, r.text
            assert r.json()["generated_text"] == vllm_greedy("fleet-gpu1", prompt, 12)
            assert int(r.headers["x-generated-tokens"]) == 12


def test_huggingface_hub_with_the_users_certificate(gpu2):
    import huggingface_hub

    session_cls = type(huggingface_hub.get_session())
    ctx = ssl.create_default_context(cafile=str(CA))  # hostname checked against the certificate
    huggingface_hub.set_client_factory(lambda: session_cls(verify=ctx, follow_redirects=True, timeout=120))
    try:
        client = huggingface_hub.InferenceClient(model=gpu2, token=TOKEN)
        expected = vllm_greedy("fleet-gpu2", PROMPTS[1], 10)
        # huggingface_hub 1.x+ posts to / and leaves return_full_text unset: TGI then prepends the prompt
        text = client.text_generation(PROMPTS[1], max_new_tokens=10)
        assert text == PROMPTS[1] + expected
        assert client.text_generation(PROMPTS[1], max_new_tokens=10, return_full_text=False) == expected
        pieces = list(client.text_generation(PROMPTS[1], max_new_tokens=10, stream=True, details=True))
        assert len(pieces) == 10 and pieces[-1].generated_text == text
        assert pieces[-1].details.finish_reason == "length"
        out = client.text_generation(PROMPTS[1], max_new_tokens=10, details=True, decoder_input_details=True)
        assert out.details.generated_tokens == 10 and out.details.prefill
        info = huggingface_hub.InferenceClient(model=gpu2, token=TOKEN, provider="hf-inference")
        assert info.get_endpoint_info()["model_id"] == "tiny"
        assert info.health_check()
        chat = client.chat_completion([{"role": "user", "content": "hi"}], max_tokens=4)
        assert chat.choices[0].message.content is not None
    finally:
        huggingface_hub.set_client_factory(huggingface_hub.utils._http.default_client_factory)


TEXT_GENERATION = """
import asyncio, json, sys
from text_generation import AsyncClient, Client
url, token, prompt = sys.argv[1:4]
headers = {"Authorization": "Bearer " + token}
c = Client(url, headers=headers, timeout=120)
r = c.generate(prompt, max_new_tokens=8, decoder_input_details=True)
s = [e.token.text for e in c.generate_stream(prompt, max_new_tokens=8)]
async def a():
    ac = AsyncClient(url, headers=headers, timeout=120)
    return (await ac.generate(prompt, max_new_tokens=8)).generated_text
print(json.dumps({"text": r.generated_text, "tokens": r.details.generated_tokens, "stream": s,
                  "async": asyncio.run(a())}))
"""


def test_text_generation_client_with_the_users_certificate(gpu2):
    from proxy_support import client_python

    python = client_python("hub020")
    env = dict(os.environ, REQUESTS_CA_BUNDLE=str(CA), SSL_CERT_FILE=str(CA))
    proc = subprocess.run(
        [str(python), "-c", TEXT_GENERATION, gpu2, TOKEN, PROMPTS[2]],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    expected = vllm_greedy("fleet-gpu2", PROMPTS[2], 8)
    assert out["text"] == expected and out["async"] == expected
    assert out["tokens"] == 8 and "".join(out["stream"]) == expected


def test_openai_client_on_v1_with_the_token(gpu2):
    import httpx
    import openai

    ctx = ssl.create_default_context(cafile=str(CA))
    with httpx.Client(verify=ctx, timeout=120) as http:
        client = openai.OpenAI(base_url=gpu2 + "/v1", api_key=TOKEN, http_client=http)
        r = client.completions.create(model="tgi", prompt=PROMPTS[0], max_tokens=6, temperature=0)
        assert r.choices[0].text == vllm_greedy("fleet-gpu2", PROMPTS[0], 6)
        stream = client.completions.create(
            model="tgi", prompt=PROMPTS[0], max_tokens=6, temperature=0, stream=True
        )
        chunks = list(stream)
        assert "".join(c.choices[0].text for c in chunks if c.choices) == r.choices[0].text


def test_generation_check_through_nginx_with_the_users_certificate(gpu2):
    rc, res, out = ansible_module(
        "generation_check",
        {
            "url": gpu2,
            "api": "tgi",
            "token": TOKEN,
            "ca_path": str(CA),
            "num_requests": 8,
            "concurrency": 4,
            "prompt_tokens": 32,
            "max_new_tokens": 16,
            "timeout_s": 600,
            "min_success_ratio": 1.0,
        },
        timeout=900,
    )
    assert rc == 0, out[-3000:]
    m = res["metrics"]
    assert m["completed"] == 8 and m["failed"] == 0
    assert m["output_token_throughput"] > 0
    assert 0 < m["ttft_ms"]["p50"] <= m["e2e_ms"]["p50"]
    assert 0 <= m["tpot_ms"]["p50"] <= m["e2e_ms"]["p50"]
    assert TOKEN not in out


def test_generation_compare_old_api_against_new_front_door(gpu1, gpu2):
    prompts = ROOT / "tests" / "integration" / "fixtures" / "prompts_compare.jsonl"
    rc, res, out = ansible_module(
        "generation_compare",
        {
            "baseline": {"url": gpu1, "api": "tgi", "token": TOKEN, "validate_certs": False},
            "candidate": {"url": gpu2, "api": "openai", "token": TOKEN, "ca_path": str(CA)},
            "prompts_file": str(prompts),
            "max_new_tokens": 16,
            "concurrency": 2,
            "timeout_s": 600,
            "min_exact_match_ratio": 1.0,
        },
        timeout=900,
    )
    assert rc == 0, out[-3000:]
    c = res["comparison"]
    assert c["compared"] == c["prompts"] == c["exact_matches"] > 0
    for side in ("baseline", "candidate"):
        lat = res["latency"]
        assert 0 <= lat["tpot_ms"][side]["p50"] <= lat["e2e_ms"][side]["p50"], lat
    assert TOKEN not in out
