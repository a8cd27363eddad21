#!/usr/bin/env bash
# Rehearse tests/gpu/check.sh where no GPU exists: in a textgen-testbed:noble container (Ubuntu 24.04,
# Python 3.12, no network, no systemd), with a STAND-IN nvidia-smi that replays the real H100 captures of
# tests/unit/fixtures/nvidia/h100-driver580-ubuntu2404/ their /proc/driver/nvidia/version
# and the GPU's PCI function (tmpfs mounts over /proc/driver and /sys/bus/pci/devices).
# This checks the mechanics (wheels, ansible-core start-up, collection path, gpu_facts, the role's verify entry
# point) and the run time; it proves nothing about a real GPU: run check.sh on one for that.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
name=gpu-rehearse-$$
trap 'docker rm -f "$name" >/dev/null 2>&1 || true' EXIT
docker run --rm --name "$name" --network none --cap-add SYS_ADMIN \
  --security-opt seccomp=unconfined --security-opt apparmor=unconfined \
  -v "$repo:/src:ro" textgen-testbed:noble bash -euc '
    fix=/src/tests/unit/fixtures/nvidia/h100-driver580-ubuntu2404
    mount -t tmpfs tmpfs /proc/driver
    mkdir -p /proc/driver/nvidia && cp "$fix/proc-version.txt" /proc/driver/nvidia/version
    # The H100 of the captures on the PCI bus (00:06.0, device 0x2330, 3D controller), in a tmpfs over sysfs.
    mount -t tmpfs tmpfs /sys/bus/pci/devices
    d=/sys/bus/pci/devices/0000:00:06.0 && mkdir -p $d
    echo 0x10de > $d/vendor && echo 0x2330 > $d/device && echo 0x030200 > $d/class
    mkdir -p /opt/standin/bin
    cat > /opt/standin/bin/nvidia-smi <<PY
#!/usr/bin/python3
# STAND-IN for nvidia-smi: replays the H100 captures (no GPU in this container).
import re, sys
fix = "$fix"
args = sys.argv[1:]
if args == ["-q", "-x"]:
    sys.stdout.write(open(fix + "/nvidia-smi-q.xml").read())
elif args == ["-L"]:
    sys.stdout.write(open(fix + "/nvidia-smi-L.txt").read())
elif args and args[0].startswith("--query-gpu="):
    captured = re.search(r"--query-gpu=([a-z_.,]+) ", open(fix + "/README.md").read()).group(1).split(",")
    row = dict(zip(captured, [c.strip() for c in open(fix + "/query-gpu.csv").read().strip().split(",")]))
    print(", ".join(row[f] for f in args[0].split("=", 1)[1].split(",")))
else:
    sys.exit("stand-in nvidia-smi: unsupported arguments %s" % args)
PY
    chmod +x /opt/standin/bin/nvidia-smi
    PATH=/opt/standin/bin:$PATH bash /src/tests/gpu/check.sh   # writes nothing in the (read-only) tree
  '
