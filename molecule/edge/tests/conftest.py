"""Shared fixtures for the edge verify tests (nginx and hf_proxy), written to run unchanged in any
scenario whose inventory gives:
- nginx_tokens with at least one plaintext `token` entry (the first one is used),
- edge_burst_token: a plaintext token listed in nginx_tokens whose per-token rate is low enough for a
  burst of 4 x (nginx_burst_per_token + 1) requests to see 429 (optional: the burst test skips without it),
- the hf_proxy and nginx role variables (defaults are assumed where a variable is not set).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import tempfile
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def hvars(host):
    return host.ansible.get_variables()


@pytest.fixture(scope="module")
def token(hvars):
    for entry in hvars.get("nginx_tokens", []):
        if entry.get("token"):
            return entry["token"]
    pytest.skip("no plaintext token in nginx_tokens")


@pytest.fixture(scope="module")
def https_port(hvars):
    return int(hvars.get("nginx_https_port", 443))


@pytest.fixture(scope="module")
def proxy_port(hvars):
    return int(hvars.get("hf_proxy_port", 8080))


def curl(host, url, *args, token=None, data=None):
    """curl on the target: returns (status, headers dict (lower-case), body str)."""
    cmd = ["curl", "-sk", "-o", "/dev/stdout", "-D", "/dev/stderr", "--max-time", "60", *args]
    if token:
        cmd += ["-H", f"Authorization: Bearer {token}"]
    if data is not None:
        cmd += ["-H", "Content-Type: application/json", "--data-binary", data]
    cmd.append(url)
    r = host.run(" ".join(shlex.quote(c) for c in cmd))
    lines = [ln for ln in r.stderr.replace("\r", "").split("\n") if ln]
    status_lines = [ln for ln in lines if ln.startswith("HTTP/")]
    assert status_lines, f"no HTTP response from {url}: rc={r.rc} {r.stderr}"
    headers = {}
    for ln in lines:
        if ":" in ln and not ln.startswith("HTTP/"):
            k, v = ln.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    return int(status_lines[-1].split()[1]), headers, r.stdout


def run_python(host, code: str, *args: str):
    """Run a Python snippet on the target (stdlib only) and return its JSON output."""
    quoted = " ".join(shlex.quote(a) for a in args)
    r = host.run(f"python3 - {quoted} <<'PYEOF'\n{code}\nPYEOF")
    assert r.rc == 0, r.stderr
    return json.loads(r.stdout)


def run_playbook(host, playbook: str, extra_vars: dict) -> subprocess.CompletedProcess:
    """Apply one of tests/playbooks/*.yml to this target with extra variables (given in a 0600 file)."""
    inventory = os.environ.get("MOLECULE_INVENTORY_FILE")
    if not inventory:
        pytest.skip("MOLECULE_INVENTORY_FILE is not set (run through molecule verify)")
    project = Path(os.environ.get("MOLECULE_PROJECT_DIRECTORY", HERE.parents[2]))
    env = dict(os.environ)
    env.setdefault("ANSIBLE_COLLECTIONS_PATH", str(project / ".build" / "collections"))
    env.setdefault("ANSIBLE_ROLES_PATH", str(project / "roles"))
    env["ANSIBLE_NOCOLOR"] = "1"
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(extra_vars, f)
        path = f.name
    os.chmod(path, 0o600)
    try:
        return subprocess.run(
            [
                "ansible-playbook",
                "-i",
                inventory,
                "--limit",
                host.backend.host,
                "-e",
                "@" + path,
                str(HERE / "playbooks" / playbook),
            ],
            capture_output=True,
            text=True,
            env=env,
            check=False,
            timeout=900,
        )
    finally:
        os.unlink(path)


def recap_changed(output: str) -> int:
    for line in output.splitlines():
        if " changed=" in line and "ok=" in line:
            return int(line.split(" changed=")[1].split()[0])
    raise AssertionError("no play recap in:\n" + output[-3000:])
