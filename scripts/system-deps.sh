#!/usr/bin/env bash
# Install the Debian packages cupixfs needs (FUSE 3 and the headers to build pyfuse3),
# plus the tools its tests and benchmarks drive. Does nothing when all are present.
set -euo pipefail
packages=(fuse3 libfuse3-dev pkg-config unzip curl openssl)  # openssl: the TLS tests make a certificate
[ "${1:-}" = "--bench" ] && packages+=(rclone iproute2 rsync)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "installing Debian packages: ${missing[*]}"
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
