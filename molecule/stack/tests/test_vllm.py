"""Verify the vllm layer of the `stack` scenario (testinfra, run by `molecule verify -s stack`).

stack-bookworm runs the CPU vLLM with the tiny model as two instances (alpha, beta); stack-noble has
the units, configs and account but no vLLM (see molecule.yml for why). The checks that need a
running vLLM are skipped on noble by host name, nothing else.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import testinfra.utils.ansible_runner

testinfra_hosts = testinfra.utils.ansible_runner.AnsibleRunner(
    os.environ["MOLECULE_INVENTORY_FILE"]
).get_hosts("gpu_servers")

ROOT = Path(__file__).resolve().parents[3]
INSTANCES = {
    "alpha": {"port": 8001, "key": "molecule-alpha-key-5f2c9e1b", "max_model_len": 512},
    "beta": {"port": 8002, "key": "molecule-beta-key-77d0a4c3", "max_model_len": 256},
}
KEYS = [i["key"] for i in INSTANCES.values()]


def serving(host) -> bool:
    return host.backend.get_hostname().endswith("bookworm")


@pytest.fixture
def live(host):
    if not serving(host):
        pytest.skip("vLLM is not installed on noble (no +cpu torch for Python 3.12 here; see molecule.yml)")
    return host


def test_service_account(host):
    user = host.user("vllm")
    assert user.exists
    assert user.group == "vllm"
    assert user.home == "/var/lib/vllm"
    assert user.shell == "/usr/sbin/nologin"
    assert user.uid < 1000


@pytest.mark.parametrize(
    ("path", "owner", "group", "mode"),
    [
        ("/etc/vllm", "root", "vllm", 0o750),
        ("/var/lib/vllm", "vllm", "vllm", 0o750),
        ("/var/lib/vllm/hf", "vllm", "vllm", 0o750),
        ("/var/lib/vllm/cache/vllm", "vllm", "vllm", 0o750),
        ("/var/lib/vllm/cache/torchinductor", "vllm", "vllm", 0o750),
        ("/var/lib/vllm/models", "root", "vllm", 0o750),
        ("/var/lib/vllm/models/tiny-model", "root", "vllm", 0o750),
    ],
)
def test_directories(host, path, owner, group, mode):
    d = host.file(path)
    assert d.is_directory
    assert (d.user, d.group, d.mode) == (owner, group, mode)


def test_model_copied_read_only_for_the_service(host):
    f = host.file("/var/lib/vllm/models/tiny-model/model.safetensors")
    assert (f.user, f.group, f.mode) == ("root", "vllm", 0o640)


@pytest.mark.parametrize("name", INSTANCES)
def test_config_file(host, name):
    f = host.file(f"/etc/vllm/{name}.yaml")
    assert (f.user, f.group, f.mode) == ("root", "vllm", 0o640)
    text = f.content_string
    for key in KEYS:
        assert key not in text
    assert "model: /var/lib/vllm/models/tiny-model" in text
    assert f"port: {INSTANCES[name]['port']}" in text
    assert f"max-model-len: {INSTANCES[name]['max_model_len']}" in text
    assert "host: 127.0.0.1" in text


@pytest.mark.parametrize("name", INSTANCES)
def test_env_file_is_0600_and_holds_only_its_key(host, name):
    f = host.file(f"/etc/vllm/{name}.env")
    assert (f.user, f.group, f.mode) == ("root", "root", 0o600)
    text = f.content_string
    assert f'VLLM_API_KEY="{INSTANCES[name]["key"]}"' in text
    assert "VLLM_CPU_KVCACHE_SPACE=1" in text
    others = [i["key"] for n, i in INSTANCES.items() if n != name]
    assert not any(k in text for k in others)


def test_unit_is_hardened_and_holds_no_secret(host):
    unit = host.run("systemctl cat vllm@alpha.service")
    assert unit.rc == 0, unit.stderr
    text = unit.stdout
    for line in [
        "User=vllm",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/vllm",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "PrivateDevices=yes",
        "CapabilityBoundingSet=\n",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
        "Restart=on-failure",
        "EnvironmentFile=/etc/vllm/%i.env",
        'Environment="VLLM_NO_USAGE_STATS=1"',
        'Environment="DO_NOT_TRACK=1"',
        'Environment="HF_HUB_DISABLE_TELEMETRY=1"',
        'Environment="HF_HUB_OFFLINE=1"',
        "-m vllm.entrypoints.openai.api_server --config /etc/vllm/%i.yaml",
    ]:
        assert line in text, line
    for key in KEYS:
        assert key not in text
    # vLLM's graceful shutdown must end before systemd's stop timeout kills it.
    cfg = host.file("/etc/vllm/alpha.yaml").content_string
    shutdown = int(re.search(r"shutdown-timeout: (\d+)", cfg).group(1))
    stop = int(re.search(r"TimeoutStopSec=(\d+)", text).group(1))
    assert 0 < shutdown < stop
    assert int(re.search(r"TimeoutStartSec=(\d+)", text).group(1)) >= 300


@pytest.mark.parametrize("name", INSTANCES)
def test_security_exposure(host, name):
    out = host.run(f"systemd-analyze security --no-pager vllm@{name}.service")
    assert out.rc == 0, out.stderr
    m = re.search(r"Overall exposure level for vllm@\S+: (\d+\.\d+) (\w+)", out.stdout)
    assert m, out.stdout[-2000:]
    print(
        f"{host.backend.get_hostname()}: systemd-analyze security vllm@{name}.service:",
        m.group(1),
        m.group(2),
    )
    assert float(m.group(1)) <= 5.0


def test_noble_has_the_units_but_no_vllm(host):
    if serving(host):
        pytest.skip("bookworm serves")
    assert host.run("systemctl show -p LoadState --value vllm@alpha.service").stdout.strip() == "loaded"
    assert not host.file("/opt/vllm/venv").exists


@pytest.mark.parametrize("name", INSTANCES)
def test_units_active_and_run_as_vllm(live, name):
    host = live
    assert host.service(f"vllm@{name}.service").is_running
    assert host.service(f"vllm@{name}.service").is_enabled
    pid = host.run(f"systemctl show -p MainPID --value vllm@{name}.service").stdout.strip()
    assert pid not in ("", "0")
    cg = host.run(f"systemctl show -p ControlGroup --value vllm@{name}.service").stdout.strip()
    procs = host.run(
        f"cat /sys/fs/cgroup/systemd{cg}/cgroup.procs 2>/dev/null || cat /sys/fs/cgroup{cg}/cgroup.procs"
    ).stdout.split()
    assert pid in procs
    users = {host.run(f"ps -o user= -p {p}").stdout.strip() for p in procs} - {""}
    assert users == {"vllm"}


def test_api_key_not_in_process_list_or_journal(live):
    ps = live.run("ps -eww -o user,pid,args").stdout
    assert "vllm.entrypoints.openai.api_server" in ps
    journal = live.run("journalctl --no-pager -o cat -u 'vllm@*'").stdout
    assert "Uvicorn running" in journal or "Starting vLLM" in journal or "Application startup" in journal
    for key in KEYS:
        assert key not in ps
        assert key not in journal


def _post(host, port, key, body):
    cmd = (
        "curl -sS -o /tmp/out.json -w '%{http_code}' -H 'Content-Type: application/json' "
        + (f"-H 'Authorization: Bearer {key}' " if key else "")
        + f"--data '{json.dumps(body)}' http://127.0.0.1:{port}/v1/completions"
    )
    code = host.check_output(cmd)
    return int(code), host.file("/tmp/out.json").content_string


@pytest.mark.parametrize("name", INSTANCES)
def test_completions_answer_with_the_key_only(live, name):
    inst = INSTANCES[name]
    body = {"model": "tiny", "prompt": "hello world", "max_tokens": 8, "temperature": 0}
    code, text = _post(live, inst["port"], inst["key"], body)
    assert code == 200, text
    out = json.loads(text)
    assert out["model"] == "tiny"
    assert out["usage"]["completion_tokens"] == 8
    assert out["choices"][0]["text"]
    # the same request without a key, or with the other instance's key, is refused
    assert _post(live, inst["port"], None, body)[0] == 401
    other = next(i["key"] for n, i in INSTANCES.items() if n != name)
    assert _post(live, inst["port"], other, body)[0] == 401


def test_per_instance_override_reaches_vllm(live):
    for name, inst in INSTANCES.items():
        out = live.check_output(
            f"curl -sS -H 'Authorization: Bearer {inst['key']}' http://127.0.0.1:{inst['port']}/v1/models"
        )
        model = json.loads(out)["data"][0]
        assert model["id"] == "tiny"
        assert model["max_model_len"] == inst["max_model_len"], name


def test_not_reachable_from_outside_the_host(live):
    ss = live.check_output("ss -ltnH")
    for inst in INSTANCES.values():
        assert f"127.0.0.1:{inst['port']}" in ss
        assert f"0.0.0.0:{inst['port']}" not in ss


# --- Re-runs of the scenario's converge (the vLLM layer of playbooks/site.yml) against the live host ---


def _playbook(host, *extra: str) -> subprocess.CompletedProcess:
    cmd = [
        "ansible-playbook",
        "-i",
        os.environ["MOLECULE_INVENTORY_FILE"],
        "--limit",
        host.backend.get_hostname(),
        str(ROOT / "molecule/stack/converge.yml"),
        *extra,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=os.environ.copy())


def _main_pid(host, name: str) -> str:
    return host.run(f"systemctl show -p MainPID --value vllm@{name}.service").stdout.strip()


def _recap_changed(out: str) -> int:
    return int(re.search(r"changed=(\d+)", out.split("PLAY RECAP")[-1]).group(1))


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (
            {"vllm_instances": [{"name": "a", "port": 9000}, {"name": "b", "port": 9000}]},
            r"instance 'a' has port 9000, which is also used by b",
        ),
        (
            {"vllm_gpu_memory_utilization": 1.5},
            r"vllm_gpu_memory_utilization\s+is 1.5, it must be in \(0, 1\]",
        ),
        ({"vllm_model_controller_dir": ""}, r"No model for\s+vllm instance 'alpha'.*vllm_model"),
        ({"vllm_device": "tpu"}, r"vllm_device.*(cpu, cuda|cuda, cpu)"),
        ({"vllm_device": "cuda"}, r"vllm_device is 'cuda' but no usable NVIDIA GPU"),
        ({"vllm_wheelhouse": "/nonexistent"}, r"vllm_wheelhouse is '/nonexistent'"),
    ],
    ids=["port-twice", "gpu-util", "no-model", "device", "no-gpu", "wheelhouse"],
)
def test_bad_variables_fail_in_preflight_naming_them(live, extra, expected):
    """Run on the serving host only (preflight is the same everywhere): nothing is changed or restarted."""
    host = live
    before = {n: _main_pid(host, n) for n in INSTANCES}
    res = _playbook(host, "--tags", "vllm_preflight", "-e", json.dumps(extra))
    out = res.stdout + res.stderr
    assert res.returncode != 0, out[-3000:]
    assert not any(key in out for key in KEYS), "an API key leaked into Ansible's output"
    assert re.search(expected, re.sub(r"\s+", " ", out)) or re.search(expected, out, re.S), out[-3000:]
    assert {n: _main_pid(host, n) for n in INSTANCES} == before


def test_failed_hub_download_names_model_and_token_and_changes_nothing(live):
    """The hub is unreachable from the test bed, so a model id cannot download: the play must stop
    before any config changes, name the model and vllm_hf_token, and leave no token behind."""
    host = live
    token = "hf_selfhostTestToken0123456789"
    before = {n: _main_pid(host, n) for n in INSTANCES}
    extra = {
        "vllm_model_controller_dir": "",
        "vllm_model": "selfhost-test/no-such-model",
        "vllm_hf_token": token,
    }
    res = _playbook(host, "-e", json.dumps(extra))
    out = res.stdout + res.stderr
    assert res.returncode != 0, out[-3000:]
    flat = re.sub(r"\s+", " ", out)
    assert "Downloading the model 'selfhost-test/no-such-model'" in flat, out[-3000:]
    assert "vllm_hf_token" in flat
    assert token not in out and not any(key in out for key in KEYS)
    assert not host.file("/var/lib/vllm/.hf-download-token").exists
    assert host.run("ls /var/lib/vllm/hf/.textgen/ 2>/dev/null | grep -q no-such-model").rc != 0
    assert "model: /var/lib/vllm/models/tiny-model" in host.file("/etc/vllm/alpha.yaml").content_string
    assert {n: _main_pid(host, n) for n in INSTANCES} == before


def test_changing_one_instance_restarts_only_that_one(live):
    """Change beta's environment: beta restarts and serves again (the play checks it), alpha keeps its
    process. Runs last; the scenario's next converge puts beta's setting back."""
    import yaml

    mol = yaml.safe_load((ROOT / "molecule/stack/molecule.yml").read_text())
    changed = json.loads(
        json.dumps(mol["provisioner"]["inventory"]["group_vars"]["gpu_servers"]["vllm_instances"])
    )
    changed[1]["env"] = {"VLLM_LOGGING_LEVEL": "WARNING"}
    alpha, beta = _main_pid(live, "alpha"), _main_pid(live, "beta")
    res = _playbook(live, "-e", json.dumps({"vllm_instances": changed}))
    assert res.returncode == 0, res.stdout[-4000:]
    assert not any(key in res.stdout + res.stderr for key in KEYS), "an API key leaked into Ansible's output"
    assert _main_pid(live, "alpha") == alpha
    assert _main_pid(live, "beta") not in (beta, "0", "")
    assert _recap_changed(res.stdout) == 2, res.stdout[-4000:]  # beta's env file, beta's restart
    assert 'VLLM_LOGGING_LEVEL="WARNING"' in live.file("/etc/vllm/beta.env").content_string
    assert live.service("vllm@beta.service").is_running
