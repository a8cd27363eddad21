"""Verify selfhost.textgen.hf_proxy on a converged target: the service, its sandbox, its secrets, its
answers, and that a config change restarts the proxy and nothing else."""

from __future__ import annotations

import json
import re
import time

from conftest import curl, run_playbook

UNIT = "hf-proxy.service"
UPSTREAM_UNITS = ("vllm@main.service", "textgen-standin-upstream.service")


def main_pid(host, unit):
    return host.run(f"systemctl show -p MainPID --value {unit}").stdout.strip()


def test_service_runs_as_its_own_user(host, hvars):
    svc = host.service(UNIT)
    assert svc.is_running and svc.is_enabled
    user = hvars.get("hf_proxy_user", "hf-proxy")
    pid = main_pid(host, UNIT)
    assert host.run(f"ps -o user= -p {pid}").stdout.strip() == user
    assert host.user(user).shell == "/usr/sbin/nologin"


def test_listens_on_loopback_only_by_default(host, hvars, proxy_port):
    if hvars.get("hf_proxy_host", "127.0.0.1") != "127.0.0.1":
        return
    assert host.socket(f"tcp://127.0.0.1:{proxy_port}").is_listening
    assert not host.socket(f"tcp://0.0.0.0:{proxy_port}").is_listening


def test_unit_exposure_is_at_most_2_5(host):
    out = host.run(f"systemd-analyze security --no-pager {UNIT}").stdout
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", out)
    assert m, out[-2000:]
    assert float(m.group(1)) <= 2.5


def test_files_and_modes(host):
    config = host.file("/etc/hf-proxy/config.toml")
    assert config.user == "root" and config.group == "hf-proxy" and config.mode == 0o640
    env = host.file("/etc/hf-proxy/hf-proxy.env")
    assert env.user == "root" and env.mode == 0o600
    venv = host.file("/opt/hf-proxy/venv")
    assert venv.user == "root" and not venv.mode & 0o022
    assert host.run("sudo -u hf-proxy test -w /opt/hf-proxy/venv/bin").rc != 0


def test_the_upstream_key_never_shows(host, hvars):
    key = hvars.get("hf_proxy_upstream_api_key")
    if not key:
        return
    assert key in host.file("/etc/hf-proxy/hf-proxy.env").content_string
    for cmd in (
        f"systemctl cat {UNIT}",
        "ps -eo args",
        "journalctl --no-pager",
        "cat /etc/hf-proxy/config.toml",
    ):
        assert key not in host.run(cmd).stdout, cmd


def test_health_info_generate(host, proxy_port):
    url = f"http://127.0.0.1:{proxy_port}"
    assert curl(host, url + "/health")[0] == 200
    status, _, body = curl(host, url + "/info")
    assert status == 200 and json.loads(body)["model_id"]
    status, headers, body = curl(
        host, url + "/generate", data=json.dumps({"inputs": "hello", "parameters": {"max_new_tokens": 3}})
    )
    assert status == 200, body
    assert isinstance(json.loads(body)["generated_text"], str)
    assert headers["x-generated-tokens"] == "3"


def test_config_change_restarts_the_proxy_and_never_vllm(host, proxy_port):
    upstream = [u for u in UPSTREAM_UNITS if host.service(u).is_running]
    assert upstream, "no upstream unit running"
    before = {u: main_pid(host, u) for u in [UNIT, *upstream]}
    config = host.file("/etc/hf-proxy/config.toml").content_string
    level = "warning" if 'log_level = "debug"' in config else "debug"
    r = run_playbook(host, "hf_proxy.yml", {"hf_proxy_log_level": level})
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert main_pid(host, UNIT) != before[UNIT]
    for u in upstream:
        assert main_pid(host, u) == before[u], u
    assert f'log_level = "{level}"' in host.file("/etc/hf-proxy/config.toml").content_string
    r = run_playbook(host, "hf_proxy.yml", {})
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    for u in upstream:
        assert main_pid(host, u) == before[u], u
    for _ in range(30):
        if curl(host, f"http://127.0.0.1:{proxy_port}/health")[0] == 200:
            break
        time.sleep(1)


def test_a_setting_the_proxy_rejects_never_replaces_the_config(host):
    before = host.file("/etc/hf-proxy/config.toml").content_string
    pid = main_pid(host, UNIT)
    r = run_playbook(host, "hf_proxy.yml", {"hf_proxy_settings": {"no_such_setting": 1}})
    assert r.returncode != 0
    assert "no_such_setting" in r.stdout + r.stderr
    assert host.file("/etc/hf-proxy/config.toml").content_string == before
    assert main_pid(host, UNIT) == pid
