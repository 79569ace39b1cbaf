#!/usr/bin/env bash
# Installs the Debian packages the build, the tests and the demo need (idempotent; root only).
set -euo pipefail
pkgs=(qemu-system-x86 acpica-tools busybox-static zstd xz-utils cpio iperf3 iproute2 util-linux gcc make python3 time ethtool dpdk dpdk-dev librte-net-virtio23 librte-net-vhost23 librte-net-tap23)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then exit 0; fi
if [ "$(id -u)" -ne 0 ]; then
  echo "setup-host: missing packages: ${missing[*]} (run as root, or: sudo apt-get install ${missing[*]})" >&2
  exit 1
fi
echo "setup-host: installing ${missing[*]}"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
