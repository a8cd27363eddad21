"""Verify selfhost.textgen.nginx on a converged target (TLS, tokens, limits, routing, streaming, errors).

Most checks run curl or a stdlib Python snippet on the target; the huggingface_hub checks run on the
controller against the target's address over TLS, trusting the target's certificate.
"""

from __future__ import annotations

import json
import ssl
import tempfile
import time

import pytest
from conftest import curl, run_playbook, run_python

OVERLOADED = {"error": "Model is overloaded", "error_type": "overloaded"}
ADMIN_ROUTES = [
    "/pause",
    "/resume",
    "/is_paused",
    "/abort_requests",
    "/update_weights",
    "/invocations",
    "/detokenize",
    "/reset_prefix_cache",
    "/sleep",
    "/wake_up",
    "/collective_rpc",
    "/version",
    "/v1/load_lora_adapter",
    "/v1/unload_lora_adapter",
    "/v1/embeddings",
    "/v1/responses",
    "/docs",
    "/openapi.json",
]
GEN = json.dumps({"inputs": "hello world", "parameters": {"max_new_tokens": 4}})


def base(https_port):
    return f"https://127.0.0.1:{https_port}"


def test_nginx_config_is_clean(host):
    r = host.run("nginx -t")
    assert r.rc == 0, r.stderr
    assert "syntax is ok" in r.stderr and "test is successful" in r.stderr
    assert host.service("nginx").is_running
    assert host.service("nginx").is_enabled


def test_secret_files_are_private(host):
    f = host.file("/etc/nginx/textgen/tokens.map")
    assert f.mode == 0o600 and f.user == "root"
    lines = [ln for ln in f.content_string.splitlines() if ln and not ln.startswith("#")]
    assert lines and all(len(ln.split('"')[1]) == 64 for ln in lines)  # SHA-256 hex -> id
    assert "edge-test-token" not in f.content_string  # hashes only, never a token


def test_unknown_route_is_json_404_without_version(host, https_port):
    status, headers, body = curl(host, base(https_port) + "/no/such/route")
    assert status == 404
    assert json.loads(body) == {"error": "Not found", "error_type": "not_found"}
    assert headers["server"] == "nginx"  # server_tokens off: no version
    assert headers["content-type"].startswith("application/json")
    assert int(headers["content-length"]) == len(body)
    assert len(headers["x-request-id"]) == 32


def test_401_without_or_with_a_wrong_token(host, https_port):
    for args in (
        [],
        ["-H", "Authorization: Bearer not-a-valid-token-0123456789abcdef"],
        ["-H", "Authorization: x"],
    ):
        status, headers, body = curl(host, base(https_port) + "/generate", *args, data=GEN)
        assert status == 401, body
        assert json.loads(body)["error_type"] == "unauthorized"
        assert headers["www-authenticate"].startswith("Bearer")


def test_generate_with_a_token(host, https_port, token):
    status, _headers, body = curl(host, base(https_port) + "/generate", token=token, data=GEN)
    assert status == 200, body
    assert isinstance(json.loads(body)["generated_text"], str)


def test_http_redirects_to_https(host, hvars):
    http_port = int(hvars.get("nginx_http_port", 80))
    status, headers, _ = curl(host, f"http://127.0.0.1:{http_port}/info?x=1")
    assert status == 301
    assert headers["location"].startswith("https://127.0.0.1") and headers["location"].endswith("/info?x=1")


def test_tls_intermediate_protocols(host, https_port):
    for proto in ("tls1_2", "tls1_3"):
        ok = host.run(f"echo | openssl s_client -connect 127.0.0.1:{https_port} -{proto} 2>&1")
        assert ok.rc == 0 and "BEGIN CERTIFICATE" in ok.stdout, ok.stdout
    for proto in ("tls1", "tls1_1"):
        old = host.run(f"echo | openssl s_client -connect 127.0.0.1:{https_port} -{proto} 2>&1")
        assert old.rc != 0 and "BEGIN CERTIFICATE" not in old.stdout, old.stdout


def test_hsts_when_enabled(host, hvars, https_port):
    _status, headers, _ = curl(host, base(https_port) + "/no/such/route")
    if hvars.get("nginx_hsts", False):
        assert headers["strict-transport-security"].startswith("max-age=")
    else:
        assert "strict-transport-security" not in headers


def test_health_open_or_closed(host, hvars, https_port):
    status, _, _ = curl(host, base(https_port) + "/health")
    assert status == (200 if hvars.get("nginx_health_open", True) else 401)


@pytest.mark.parametrize("route", ADMIN_ROUTES)
def test_vllm_admin_routes_are_404(host, https_port, token, route):
    for method in ("GET", "POST"):
        status, _, body = curl(host, base(https_port) + route, "-X", method, token=token, data="{}")
        assert status == 404, f"{method} {route}: {status} {body}"
        assert "reached" not in body


def test_metrics_only_from_allowed_networks(host, https_port):
    status, _, body = curl(host, base(https_port) + "/metrics")
    assert status == 200 and "tgi_request_count" in body  # the proxy's metrics, not vLLM's
    # From the controller (not in nginx_metrics_allow): refused.
    addr = host.interface.default().addresses[0]
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    import urllib.error
    import urllib.request

    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(f"https://{addr}:{https_port}/metrics", context=ctx, timeout=10)
    assert e.value.code == 403
    assert json.loads(e.value.read())["error_type"] == "forbidden"


def test_413_on_an_oversize_body(host, https_port, token):
    size = 3_000_000  # above TGI's 2,000,000 and the scenario's limit
    r = host.run(
        f"head -c {size} /dev/zero | tr '\\0' a > /tmp/edge-big && "
        f"curl -sk -o /dev/stdout -w '\\n%{{http_code}}' -H 'Authorization: Bearer {token}' "
        f"--data-binary @/tmp/edge-big {base(https_port)}/generate; rm -f /tmp/edge-big"
    )
    body, status = r.stdout.rsplit("\n", 1)
    assert status == "413"
    assert json.loads(body)["error_type"] == "payload_too_large"


BURST = r"""
import json, ssl, sys, threading, urllib.request, urllib.error
url, token, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
ctx = ssl._create_unverified_context()
out, lock = [], threading.Lock()
def one():
    req = urllib.request.Request(url, headers={"Authorization": "Bearer " + token})
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=30) as r:
            res = (r.status, r.read().decode())
    except urllib.error.HTTPError as e:
        res = (e.code, e.read().decode())
    with lock:
        out.append(res)
threads = [threading.Thread(target=one) for _ in range(n)]
[t.start() for t in threads]
[t.join() for t in threads]
print(json.dumps(out))
"""


def test_429_under_a_burst(host, hvars, https_port):
    burst_token = hvars.get("edge_burst_token")
    if not burst_token:
        pytest.skip("edge_burst_token not set in the inventory")
    n = 4 * (int(hvars.get("nginx_burst_per_token", 40)) + 1)
    results = run_python(host, BURST, base(https_port) + "/info", burst_token, str(n))
    statuses = [s for s, _ in results]
    assert 200 in statuses, statuses
    assert 429 in statuses, statuses
    for s, body in results:
        if s == 429:
            assert json.loads(body) == OVERLOADED
    time.sleep(3)  # let the bucket refill for the tests after this one


STREAM = r"""
import json, socket, ssl, sys, time
host, port, path, token, direct = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5] == "1"
body = json.dumps({"inputs": "hello world", "parameters": {"max_new_tokens": 6}}).encode()
s = socket.create_connection((host, port), timeout=60)
if not direct:
    s = ssl._create_unverified_context().wrap_socket(s, server_hostname=host)
req = (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
       f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
t0 = time.monotonic()
s.sendall(req + body)
buf, times, events, head = b"", [], [], None
while True:
    chunk = s.recv(65536)
    if not chunk:
        break
    now = time.monotonic() - t0
    buf += chunk
    if head is None and b"\r\n\r\n" in buf:
        head, buf = buf.split(b"\r\n\r\n", 1)
    if head is not None:
        for line in buf.split(b"\n"):
            if line.startswith(b"data:") and line.endswith(b"}"):
                events.append(json.loads(line[5:]))
                times.append(now)
        buf = buf[buf.rfind(b"\n") + 1:] if b"\n" in buf else buf
print(json.dumps({"head": head.decode(errors="replace") if head else "", "times": times, "events": events}))
"""


def stream(host, port, token, direct):
    return run_python(host, STREAM, "127.0.0.1", str(port), "/generate_stream", token, "1" if direct else "0")


def test_stream_arrives_event_by_event(host, https_port, proxy_port, token):
    through = stream(host, https_port, token, direct=False)
    direct = stream(host, proxy_port, token, direct=True)
    head = through["head"].lower()
    assert "200 ok" in head.splitlines()[0]
    assert "text/event-stream" in head
    assert "content-encoding" not in head  # never gzip an event stream
    assert len(through["events"]) == len(direct["events"]) >= 2
    assert through["events"][-1]["generated_text"] is not None
    assert [e["index"] for e in through["events"]] == list(range(1, len(through["events"]) + 1))
    # nginx does not hold events back: each arrives as far apart through nginx as straight from the proxy.
    gaps_through = [b - a for a, b in zip(through["times"], through["times"][1:], strict=False)]
    gaps_direct = [b - a for a, b in zip(direct["times"], direct["times"][1:], strict=False)]
    assert sum(gaps_through) >= 0.5 * sum(gaps_direct) - 0.05, (through["times"], direct["times"])
    # The first token reaches the client about as soon as straight from the proxy.
    assert through["times"][0] - direct["times"][0] < 0.1, (through["times"][0], direct["times"][0])


def test_access_log_is_json_with_token_id_never_the_token(host, https_port, token):
    status, headers, _ = curl(host, base(https_port) + "/info", token=token)
    assert status == 200
    time.sleep(0.5)
    log = host.file("/var/log/nginx/textgen-access.log").content_string
    entries = [json.loads(line) for line in log.splitlines() if line.strip()]
    mine = [e for e in entries if e["request_id"] == headers["x-request-id"]]
    assert len(mine) == 1
    entry = mine[0]
    assert entry["status"] == 200 and entry["uri"] == "/info" and entry["token_id"]
    assert entry["upstream_response_time"] != ""
    assert token not in log
    assert token not in host.run("journalctl --no-pager -u nginx").stdout


def test_upstream_down_is_a_json_502(host, https_port, token):
    host.run("systemctl stop hf-proxy")
    try:
        status, _, body = curl(host, base(https_port) + "/info", token=token)
        assert status == 502
        assert json.loads(body)["error_type"] == "unavailable"
    finally:
        host.run("systemctl start hf-proxy")
        for _ in range(30):
            if curl(host, base(https_port) + "/health")[0] == 200:
                break
            time.sleep(1)


def _live_checksums(host):
    return host.run(
        "cat /etc/nginx/nginx.conf /etc/nginx/textgen/*.conf /etc/nginx/textgen/tokens.map | md5sum"
    ).stdout


def test_broken_value_is_rejected_and_the_old_config_keeps_serving(host, https_port, token):
    before = _live_checksums(host)
    pid_before = host.file("/run/nginx.pid").content_string.strip()
    r = run_playbook(host, "nginx.yml", {"nginx_extra_server_directives": "this_is_not_a_directive on;"})
    assert r.returncode != 0
    assert "nginx rejected the new configuration" in r.stdout + r.stderr
    assert 'unknown directive "this_is_not_a_directive"' in r.stdout + r.stderr
    assert _live_checksums(host) == before
    assert host.run("nginx -t").rc == 0
    assert host.file("/run/nginx.pid").content_string.strip() == pid_before
    assert curl(host, base(https_port) + "/info", token=token)[0] == 200


def test_a_wrong_variable_fails_in_preflight_naming_it(host):
    r = run_playbook(host, "nginx.yml", {"nginx_rate_per_token": "fast"})
    assert r.returncode != 0
    assert "nginx_rate_per_token must look like" in r.stdout + r.stderr


def test_token_rotation_needs_only_a_reload(host, hvars, https_port):
    new = "edge-rotated-token-" + "0123456789abcdef" * 2
    tokens = list(hvars["nginx_tokens"])
    pid = host.file("/run/nginx.pid").content_string.strip()
    r = run_playbook(host, "nginx.yml", {"nginx_tokens": [*tokens, {"id": "rotated", "token": new}]})
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert new not in r.stdout + r.stderr  # no_log
    assert curl(host, base(https_port) + "/info", token=new)[0] == 200
    assert host.file("/run/nginx.pid").content_string.strip() == pid  # reloaded, not restarted
    r = run_playbook(host, "nginx.yml", {})
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert curl(host, base(https_port) + "/info", token=new)[0] == 401
    assert host.file("/run/nginx.pid").content_string.strip() == pid


def _hf_client_factory(cafile):
    """Make huggingface_hub (httpx or httpx2 based, 1.x+) trust the target's certificate."""
    import huggingface_hub

    session_cls = type(huggingface_hub.get_session())
    ctx = ssl.create_default_context(cafile=cafile)
    return lambda: session_cls(verify=ctx, follow_redirects=True, timeout=60)


def test_huggingface_hub_over_tls_with_a_token(host, https_port, token):
    huggingface_hub = pytest.importorskip("huggingface_hub")
    cert = host.run(
        f"echo | openssl s_client -connect 127.0.0.1:{https_port} 2>/dev/null | openssl x509"
    ).stdout
    assert "BEGIN CERTIFICATE" in cert
    addr = host.interface.default().addresses[0]
    with tempfile.NamedTemporaryFile("w", suffix=".pem") as ca:
        ca.write(cert)
        ca.flush()
        huggingface_hub.set_client_factory(_hf_client_factory(ca.name))
        try:
            url = f"https://{addr}:{https_port}"
            client = huggingface_hub.InferenceClient(model=url, token=token)
            text = client.text_generation("hello world", max_new_tokens=4)
            assert isinstance(text, str) and text
            pieces = list(client.text_generation("hello world", max_new_tokens=4, stream=True))
            assert len(pieces) == 4
            out = client.text_generation("hello world", max_new_tokens=4, details=True)
            assert out.details.finish_reason == "length" and out.details.generated_tokens == 4
            info = huggingface_hub.InferenceClient(model=url, token=token, provider="hf-inference")
            assert info.get_endpoint_info()["max_total_tokens"] > 0
            bad = huggingface_hub.InferenceClient(model=url, token="wrong-token-0123456789abcdef0123")
            # huggingface_hub raises its TGI error for a JSON error body, chained to the HTTP error.
            with pytest.raises(Exception, match="Unauthorized: a valid bearer token is required") as e:
                bad.text_generation("hello", max_new_tokens=2)
            http_error = e.value if hasattr(e.value, "response") else e.value.__cause__
            assert http_error.response.status_code == 401
        finally:
            huggingface_hub.set_client_factory(huggingface_hub.utils._http.default_client_factory)
