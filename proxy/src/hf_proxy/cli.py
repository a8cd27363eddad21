"""`hf-proxy`: load settings, bind the listening sockets, run one worker per core (SO_REUSEPORT)."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
import time

from . import config as config_mod
from .metrics import Metrics

log = logging.getLogger("hf_proxy")
MAX_DEFAULT_WORKERS = 8  # the default is one per core up to this; more rarely helps in front of vLLM


def _bind(host: str, port: int, reuse_port: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _run_worker(settings: config_mod.Settings, sock: socket.socket, metrics: Metrics, slot: int) -> None:
    from .app import serve  # imported in the worker: uvloop and the tokenizer start after fork

    serve(settings, sock, metrics, slot)


def main(argv: list[str] | None = None) -> None:
    try:
        settings = config_mod.load(argv)
    except config_mod.ConfigError as e:
        print(f"hf-proxy: {e}", file=sys.stderr)
        sys.exit(2)
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(process)d %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    workers = max(1, settings.workers or min(cores, MAX_DEFAULT_WORKERS))
    try:
        socks = [_bind(settings.host, settings.port, workers > 1) for _i in range(workers)]
    except OSError as e:
        print(f"hf-proxy: cannot listen on {settings.host}:{settings.port}: {e}", file=sys.stderr)
        sys.exit(1)
    metrics = Metrics(workers)
    log.info(
        "hf-proxy listening on %s:%d with %d worker(s), upstreams %s",
        settings.host,
        socks[0].getsockname()[1],
        workers,
        ", ".join(settings.upstreams),
    )
    if workers == 1:
        _run_worker(settings, socks[0], metrics, 0)
        return

    children: dict[int, int] = {}  # pid -> slot
    stopping = False

    def spawn(slot: int) -> None:
        pid = os.fork()
        if pid == 0:
            for i, s in enumerate(socks):
                if i != slot:
                    s.close()
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            code = 0
            try:
                _run_worker(settings, socks[slot], metrics, slot)
            except BaseException:
                log.exception("worker %d failed", slot)
                code = 1
            os._exit(code)
        children[pid] = slot

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for slot in range(workers):
        spawn(slot)
    last_restart = 0.0
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        slot = children.pop(pid, None)
        if slot is None or stopping:
            continue
        log.error("worker %d (pid %d) exited with status %d: restarting", slot, pid, status)
        if time.monotonic() - last_restart < 1.0:
            time.sleep(1.0)
        last_restart = time.monotonic()
        metrics.reset_gauges(slot)
        spawn(slot)
    log.info("hf-proxy stopped")


if __name__ == "__main__":  # pragma: no cover
    main()
