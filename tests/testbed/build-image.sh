#!/usr/bin/env bash
# Build a systemd-as-PID-1 base image for Molecule targets with debootstrap (no registry needed).
# Usage: build-image.sh bookworm|noble [--force]
# Exit 0: image present or built. Exit 3: the distribution archive did not answer (caller skips loudly).
set -euo pipefail

dist="${1:?usage: build-image.sh bookworm|noble [--force]}"
force="${2:-}"
image="textgen-testbed:${dist}"
cache="${TEXTGEN_CACHE_DIR:-/var/cache/selfhost-textgen}"
pkgs="systemd,systemd-sysv,dbus,python3,python3-apt,iproute2,ca-certificates,sudo,curl,procps,gnupg"

if [ -z "$force" ] && docker image inspect "$image" >/dev/null 2>&1; then
  echo "build-image: $image present"
  exit 0
fi

debian_mirror() {
  # The host's own Debian mirror (deb822 or one-line format), else the public one.
  local uri
  uri=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  [ -n "$uri" ] || uri=$(awk '/^deb / && $2 ~ /debian\/?$/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
  echo "${uri:-http://deb.debian.org/debian}"
}

ubuntu_mirror="${TEXTGEN_UBUNTU_MIRROR:-http://archive.ubuntu.com/ubuntu}"
root=$(mktemp -d /var/tmp/textgen-rootfs.XXXXXX)
trap 'rm -rf "$root"' EXIT

case "$dist" in
  bookworm)
    mirror=$(debian_mirror)
    debootstrap --variant=minbase --components=main --include="$pkgs" bookworm "$root" "$mirror"
    cat > "$root/etc/apt/sources.list" <<SRC
deb $mirror bookworm main
deb $mirror bookworm-updates main
SRC
    ;;
  noble)
    if ! curl -fsS --max-time 20 -o /dev/null "$ubuntu_mirror/dists/noble/Release"; then
      echo "build-image: the Ubuntu archive ($ubuntu_mirror) does not answer" >&2
      exit 3
    fi
    krdir="$cache/ubuntu-keyring"
    if [ ! -f "$krdir/usr/share/keyrings/ubuntu-archive-keyring.gpg" ]; then
      mkdir -p "$krdir"
      curl -fsS --max-time 120 -o "$krdir/k.deb" \
        "$ubuntu_mirror/pool/main/u/ubuntu-keyring/ubuntu-keyring_2023.11.28.1_all.deb"
      dpkg-deb -x "$krdir/k.deb" "$krdir"
    fi
    debootstrap --variant=minbase --components=main,universe \
      --keyring="$krdir/usr/share/keyrings/ubuntu-archive-keyring.gpg" \
      --include="$pkgs" noble "$root" "$ubuntu_mirror" /usr/share/debootstrap/scripts/gutsy
    cat > "$root/etc/apt/sources.list" <<SRC
deb $ubuntu_mirror noble main universe
deb $ubuntu_mirror noble-updates main universe
SRC
    ;;
  *) echo "build-image: unknown distribution $dist" >&2; exit 2 ;;
esac

# A container boots straight to multi-user with no getty or udev noise.
rm -f "$root"/etc/machine-id && : > "$root/etc/machine-id"
for unit in getty.target systemd-udevd.service systemd-udev-trigger.service systemd-timesyncd.service \
            console-getty.service; do
  ln -sf /dev/null "$root/etc/systemd/system/$unit"
done
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
tar -C "$root" -c . | docker import -c 'CMD ["/lib/systemd/systemd"]' - "$image"
echo "build-image: built $image"
