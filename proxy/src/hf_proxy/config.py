"""Settings, built once at start from defaults < config file (TOML) < environment < command line."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ENV_PREFIX = "HF_PROXY_"


@dataclass
class Settings:
    upstreams: list[str] = field(default_factory=lambda: ["http://127.0.0.1:8000"])
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 0  # 0: one per CPU core, at most 8
    served_model: str = ""  # "": discovered from the upstream's /v1/models
    model_id: str = ""  # reported by /info; "": the served model's name
    tokenizer: str = ""  # tokenizer.json or a directory holding it; "": the model dir when local
    max_concurrent_requests: int = 128
    max_best_of: int = 2
    max_stop_sequences: int = 4
    max_top_n_tokens: int = 5
    max_input_tokens: int = 0  # 0: upstream max_model_len - 1
    max_total_tokens: int = 0  # 0: upstream max_model_len
    max_client_batch_size: int = 4
    default_max_new_tokens: int = 0  # 0: as TGI 3.x (max_total_tokens - input length)
    max_body_bytes: int = 2_000_000
    health_check_interval: float = 2.0
    connect_timeout: float = 5.0
    request_timeout: float = 0.0  # 0: no limit on one generation
    keepalive_interval: float = 15.0
    compute_type: str = "gpu+optimized"
    upstream_api_key_file: str = ""
    upstream_api_key: str = field(default="", repr=False)  # only from the env or the key file
    log_level: str = "info"


_SECRET_FIELDS = {"upstream_api_key"}


class ConfigError(ValueError):
    pass


def _coerce(name: str, value: Any, default: Any) -> Any:
    try:
        if isinstance(default, bool):
            if isinstance(value, str):
                return value.strip().lower() in ("1", "true", "yes", "on")
            return bool(value)
        if isinstance(default, int):
            if isinstance(value, bool):
                raise ValueError
            return int(value)
        if isinstance(default, float):
            return float(value)
        if isinstance(default, list):
            if isinstance(value, str):
                return [v.strip() for v in value.split(",") if v.strip()]
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ValueError
            return list(value)
        if not isinstance(value, str):
            raise ValueError
        return value
    except (TypeError, ValueError):
        raise ConfigError(f"setting {name!r}: invalid value {value!r}") from None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="hf-proxy",
        description="HF Inference Endpoints / TGI-compatible proxy in front of vLLM's OpenAI server.",
    )
    p.add_argument("--config", help="TOML config file (see README)")
    p.add_argument(
        "--upstream", action="append", help="vLLM base URL, e.g. http://127.0.0.1:8000 (repeatable)"
    )
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--workers", type=int, help="worker processes (default: one per CPU core, at most 8)")
    p.add_argument("--tokenizer", help="tokenizer.json, or a directory holding it")
    p.add_argument("--served-model", help="upstream model name (default: discovered)")
    p.add_argument("--max-concurrent-requests", type=int)
    p.add_argument("--log-level")
    return p.parse_args(argv)


def load(argv: list[str] | None = None, environ: dict[str, str] | None = None) -> Settings:
    args = parse_args(argv)
    env = os.environ if environ is None else environ
    defaults = Settings()
    values: dict[str, Any] = {}
    names = {f.name: f for f in dataclasses.fields(Settings)}

    config_path = args.config or env.get(ENV_PREFIX + "CONFIG")
    if config_path:
        try:
            data = tomllib.loads(Path(config_path).read_text())
        except OSError as e:
            raise ConfigError(f"cannot read config file {config_path}: {e}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file {config_path}: {e}") from None
        for k, v in data.items():
            if k not in names or k in _SECRET_FIELDS:
                raise ConfigError(f"config file {config_path}: unknown setting {k!r}")
            values[k] = _coerce(k, v, getattr(defaults, k))

    for name in names:
        ev = env.get(ENV_PREFIX + name.upper())
        if ev is not None:
            values[name] = _coerce(ENV_PREFIX + name.upper(), ev, getattr(defaults, name))

    cli = {
        "upstreams": args.upstream,
        "host": args.host,
        "port": args.port,
        "workers": args.workers,
        "tokenizer": args.tokenizer,
        "served_model": args.served_model,
        "max_concurrent_requests": args.max_concurrent_requests,
        "log_level": args.log_level,
    }
    values.update({k: v for k, v in cli.items() if v is not None})
    s = dataclasses.replace(defaults, **values)

    if s.upstream_api_key_file and not s.upstream_api_key:
        try:
            s.upstream_api_key = Path(s.upstream_api_key_file).read_text().strip()
        except OSError as e:
            raise ConfigError(f"upstream_api_key_file: {e}") from None
    validate_settings(s)
    return s


def validate_settings(s: Settings) -> None:
    if not s.upstreams:
        raise ConfigError("upstreams: at least one upstream URL is needed")
    for u in s.upstreams:
        if not u.startswith("http://"):
            raise ConfigError(f"upstreams: {u!r} must be an http:// URL")
    if not 0 <= s.port <= 65535:
        raise ConfigError(f"port: {s.port} is not a TCP port")
    for name in ("max_concurrent_requests", "max_best_of", "max_body_bytes"):
        if getattr(s, name) < 1:
            raise ConfigError(f"{name}: must be >= 1")
    for name in (
        "workers",
        "max_stop_sequences",
        "max_top_n_tokens",
        "max_input_tokens",
        "max_total_tokens",
        "default_max_new_tokens",
    ):
        if getattr(s, name) < 0:
            raise ConfigError(f"{name}: must be >= 0")
    if s.health_check_interval <= 0 or s.connect_timeout <= 0 or s.keepalive_interval <= 0:
        raise ConfigError("health_check_interval, connect_timeout, keepalive_interval: must be > 0")
    if s.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError(f"log_level: {s.log_level!r} is not one of debug, info, warning, error")
