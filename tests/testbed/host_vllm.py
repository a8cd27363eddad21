"""A real CPU vLLM OpenAI server on this host, serving the tiny test model as `tiny`.

Shared by the integration tests' `vllm_url` fixture and benchmarks/check_accuracy.py. The venv comes
from host-vllm.sh (installed offline from the wheelhouse, cached); the model from tests/tiny_model.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MODEL_DIR = ROOT / ".build" / "tiny-model"
SERVED_NAME = "tiny"


class VllmStartError(RuntimeError):
    """vLLM exited or did not answer /health in time; the message ends with its log."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def tiny_model(out: Path = MODEL_DIR) -> Path:
    if not (out / "model.safetensors").exists():
        subprocess.run([sys.executable, str(ROOT / "tests/tiny_model/build.py"), str(out)], check=True)
    return out


def venv() -> str:
    out = subprocess.run(
        ["bash", str(ROOT / "tests/testbed/host-vllm.sh")], check=True, capture_output=True, text=True
    )
    return out.stdout.strip().splitlines()[-1]


def start(
    work: Path,
    model_dir: Path = MODEL_DIR,
    timeout_s: float = 900,
    preexec_fn: Callable[[], None] | None = None,
) -> tuple[subprocess.Popen[bytes], str]:
    """Start vLLM (its log and caches under `work`) and wait until it is healthy: (process, base URL)."""
    python = f"{venv()}/bin/python"
    tiny_model(model_dir)
    port = free_port()
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
    log_path = work / "vllm.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [
                python, "-m", "vllm.entrypoints.openai.api_server",
                "--model", str(model_dir), "--served-model-name", SERVED_NAME,
                "--max-model-len", "512", "--dtype", "float32", "--enforce-eager",
                "--host", "127.0.0.1", "--port", str(port),
            ],
            env=env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=preexec_fn,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while not healthy(url):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise VllmStartError(
                "vLLM did not become healthy:\n" + log_path.read_text(errors="replace")[-4000:]
            )
        time.sleep(1)
    return proc, url


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
