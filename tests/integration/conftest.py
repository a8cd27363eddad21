"""Shared fixtures for integration tests: a real CPU vLLM server with the tiny model, on this host.

The server is started once per test session (about 50 s) from the venv that
tests/testbed/host-vllm.sh installs from the wheelhouse. Set TEXTGEN_VLLM_URL to reuse a server
that is already running (development only; CI always starts its own).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVED_NAME = "tiny"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    out = ROOT / ".build" / "tiny-model"
    if not (out / "model.safetensors").exists():
        subprocess.run([sys.executable, str(ROOT / "tests/tiny_model/build.py"), str(out)], check=True)
    return out


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


@pytest.fixture(scope="session")
def vllm_url(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL of a real vLLM OpenAI server serving the tiny model as `tiny`."""
    if os.environ.get("TEXTGEN_VLLM_URL"):
        yield os.environ["TEXTGEN_VLLM_URL"].rstrip("/")
        return
    venv = (
        subprocess.run(
            ["bash", str(ROOT / "tests/testbed/host-vllm.sh")], check=True, capture_output=True, text=True
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    port = free_port()
    work = tmp_path_factory.mktemp("vllm")
    env = dict(
        os.environ,
        VLLM_CPU_KVCACHE_SPACE="1",
        HF_HUB_OFFLINE="1",
        VLLM_NO_USAGE_STATS="1",
        DO_NOT_TRACK="1",
        VLLM_CACHE_ROOT=str(work / "vllm-cache"),
        TORCHINDUCTOR_CACHE_DIR=str(work / "inductor"),
        XDG_CACHE_HOME=str(work / "xdg"),
    )
    log = (work / "vllm.log").open("w")
    proc = subprocess.Popen(
        [
            f"{venv}/bin/python",
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(tiny_model_dir),
            "--served-model-name",
            SERVED_NAME,
            "--max-model-len",
            "512",
            "--dtype",
            "float32",
            "--enforce-eager",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 900
    while not _healthy(url):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail("vLLM did not become healthy:\n" + (work / "vllm.log").read_text()[-4000:])
        time.sleep(1)
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


def post_json(url: str, body: dict, timeout: float = 60) -> dict:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())
