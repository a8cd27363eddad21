"""Build the offline wheelhouse of the hf-proxy package on the controller (selfhost.textgen.hf_proxy).

The target never reaches a package index: this script builds the hf-proxy wheel from the collection's
`proxy/` source and downloads the exact wheels of requirements.lock for the target's CPython version
and architecture. Results are cached under --cache, keyed by the source and lock hash, so a second run
is a no-op. Prints one JSON object: dir, id (changes whenever what would be installed changes),
packages (requirement specifiers to install), changed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

SKIP_DIRS = {"tests", "build", "dist", ".venv", "__pycache__", ".pytest_cache", ".ruff_cache", ".git"}
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;]+)\s*(?:;\s*(.*))?$")
MARKER = re.compile(r"""^python_version\s*(<=|>=|==|!=|<|>)\s*["'](\d+)\.(\d+)["']$""")


def fail(msg: str) -> None:
    print(json.dumps({"failed": True, "msg": msg}))
    sys.exit(1)


def run_pip(cmd: list[str]) -> None:
    run = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if run.returncode != 0:
        fail(f"{' '.join(cmd[:7])} ... failed:\n{run.stderr.strip()[-3000:]}")


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def source_files(src: Path) -> list[Path]:
    out = []
    for root, dirs, files in os.walk(src):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.endswith(".egg-info"))
        out.extend(Path(root, f) for f in sorted(files) if not f.endswith((".pyc", ".pyo")))
    return out


def marker_applies(marker: str | None, py: tuple[int, int]) -> bool:
    if not marker:
        return True
    m = MARKER.match(marker.strip())
    if not m:
        fail(f"requirements.lock: unsupported marker {marker!r} (only python_version comparisons)")
    op, want = m.group(1), (int(m.group(2)), int(m.group(3)))
    return {
        "<": py < want,
        "<=": py <= want,
        ">": py > want,
        ">=": py >= want,
        "==": py == want,
        "!=": py != want,
    }[op]


def read_lock(path: Path, py: tuple[int, int]) -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = PIN.match(line)
        if not m:
            fail(f"{path}: not an exact pin: {line!r}")
        if marker_applies(m.group(3), py):
            pins[norm(m.group(1))] = m.group(2)
    return pins


def project_meta(src: Path) -> tuple[str, str, list[str]]:
    text = (src / "pyproject.toml").read_text()
    try:
        import tomllib

        project = tomllib.loads(text)["project"]
        return project["name"], project["version"], list(project.get("dependencies", []))
    except ModuleNotFoundError:  # Python 3.10 controller
        name = re.search(r'^name\s*=\s*"([^"]+)"', text, re.M)
        version = re.search(r'^version\s*=\s*"([^"]+)"', text, re.M)
        deps = re.search(r"^dependencies\s*=\s*\[(.*?)\]", text, re.M | re.S)
        if not (name and version):
            fail("proxy/pyproject.toml: cannot read the project name and version")
        found = re.findall(r'"([^"]+)"', deps.group(1)) if deps else []
        return name.group(1), version.group(1), found


def platforms(arch: str) -> list[str]:
    tags = [f"manylinux_2_{v}_{arch}" for v in (5, 12, 17, 24, 28, 31, 34, 35)]
    return [*tags, f"manylinux1_{arch}", f"manylinux2010_{arch}", f"manylinux2014_{arch}"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", required=True, type=Path)
    ap.add_argument("--lock", required=True, type=Path)
    ap.add_argument("--python-version", required=True, help="the target's CPython, e.g. 3.12")
    ap.add_argument("--arch", required=True, help="the target's machine, e.g. x86_64 or aarch64")
    ap.add_argument("--cache", required=True, type=Path)
    args = ap.parse_args()

    src = args.source.resolve()
    if not (src / "pyproject.toml").is_file():
        fail(f"{src}: no pyproject.toml (hf_proxy_source_dir must be the collection's proxy/ directory)")
    m = re.match(r"^(\d+)\.(\d+)", args.python_version)
    if not m:
        fail(f"cannot read the target's Python version from {args.python_version!r}")
    py = (int(m.group(1)), int(m.group(2)))
    name, version, deps = project_meta(src)
    pins = read_lock(args.lock, py)
    for dep in deps:
        d = PIN.match(dep.replace(" ", "").replace(";", " ;", 1)) if "==" in dep else None
        if d is None:
            fail(f"proxy/pyproject.toml: dependency {dep!r} is not an exact pin")
        if not marker_applies(d.group(3), py):
            continue
        if pins.get(norm(d.group(1))) != d.group(2):
            fail(
                f"{args.lock}: {d.group(1)} is pinned to {pins.get(norm(d.group(1)))!r} but "
                f"proxy/pyproject.toml wants {d.group(2)!r}: update the lock"
            )

    h = hashlib.sha256()
    for f in source_files(src):
        h.update(str(f.relative_to(src)).encode() + b"\0" + f.read_bytes() + b"\0")
    h.update(args.lock.read_bytes())
    digest = h.hexdigest()[:16]
    tag = f"cp{py[0]}{py[1]}-{args.arch}"
    key = f"{norm(name)}-{version}-{digest}-{tag}"
    dest = args.cache / key
    packages = [f"{name}=={version}"] + [f"{n}=={v}" for n, v in sorted(pins.items())]
    result = {
        "dir": str(dest),
        "id": f"{name}=={version} src={digest} python={py[0]}.{py[1]} arch={args.arch}",
        "packages": packages,
        "changed": False,
    }
    if (dest / ".complete").is_file():
        print(json.dumps(result))
        return

    args.cache.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    # The dependencies depend only on the lock and the target: downloaded once per lock and target.
    lock_digest = hashlib.sha256(args.lock.read_bytes()).hexdigest()[:16]
    deps = args.cache / f"deps-{lock_digest}-{tag}"
    if not (deps / ".complete").is_file():
        with tempfile.TemporaryDirectory(dir=args.cache, prefix=".deps-") as tmp:
            wheels = Path(tmp, "wheels")
            run_pip(
                [
                    *pip,
                    "download",
                    "--quiet",
                    "--no-deps",
                    "--only-binary=:all:",
                    "--implementation",
                    "cp",
                    "--python-version",
                    f"{py[0]}.{py[1]}",
                    *[a for p in platforms(args.arch) for a in ("--platform", p)],
                    "--dest",
                    str(wheels),
                    *[f"{n}=={v}" for n, v in sorted(pins.items())],
                ]
            )
            (wheels / ".complete").write_text(lock_digest + "\n")
            if deps.exists():
                shutil.rmtree(deps)
            wheels.rename(deps)
    with tempfile.TemporaryDirectory(dir=args.cache, prefix=".build-") as tmp:
        work = Path(tmp, "src")
        wheels = Path(tmp, "wheels")
        shutil.copytree(
            src,
            work,
            ignore=lambda _d, names: [n for n in names if n in SKIP_DIRS or n.endswith(".egg-info")],
        )
        run_pip([*pip, "wheel", "--quiet", "--no-deps", "--wheel-dir", str(wheels), str(work)])
        for whl in deps.glob("*.whl"):
            os.link(whl, wheels / whl.name)
        (wheels / ".complete").write_text(result["id"] + "\n")
        if dest.exists():
            shutil.rmtree(dest)
        wheels.rename(dest)
    # Older builds of this project for this target are no longer needed.
    for old in args.cache.glob(f"{norm(name)}-*-{tag}"):
        if old != dest and old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
    result["changed"] = True
    print(json.dumps(result))


if __name__ == "__main__":
    main()
