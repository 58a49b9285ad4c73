#!/bin/sh
# Build afmon's image from Debian packages and afmon's wheels, with no base image pulled:
#   1. a wheelhouse on this machine: afmon's wheel (from this checkout) and its server
#      dependencies (pip wheel, through this machine's own index and proxy settings);
#   2. a Debian root filesystem by mmdebstrap (python3, venv, CA certificates), afmon
#      installed into /opt/afmon from the wheelhouse alone (pip --no-index: nothing is
#      fetched inside the chroot), the user afmon (uid 10001);
#   3. the image: Containerfile (FROM scratch + that tar) with podman build.
# Needs root (or MMDEBSTRAP_MODE=unshare), mmdebstrap, podman, a Debian mirror and a Python
# package index. The wheels are built by this machine's python3, which must be the suite's
# Python version (bookworm: 3.11). Usage: deploy/container/build.sh [TAG]  (default afmon:0.1.0)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
tag=${1:-afmon:0.1.0}
suite=${SUITE:-bookworm}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

"${PYTHON:-python3}" -m pip wheel --no-deps --wheel-dir "$work/wheelhouse" "$root"
name=$(basename "$(ls "$work"/wheelhouse/afmon-*.whl)")
"${PYTHON:-python3}" -m pip wheel --wheel-dir "$work/wheelhouse" "$work/wheelhouse/$name[server]"

mmdebstrap --variant=minbase --mode="${MMDEBSTRAP_MODE:-auto}" \
  --include=python3,python3-venv,ca-certificates,tzdata \
  --customize-hook="copy-in $work/wheelhouse /tmp" \
  --customize-hook='chroot "$1" python3 -m venv /opt/afmon' \
  --customize-hook="chroot \"\$1\" /opt/afmon/bin/pip install --no-cache-dir --no-index --find-links /tmp/wheelhouse \"/tmp/wheelhouse/$name[server]\"" \
  --customize-hook='rm -rf "$1/tmp/wheelhouse"' \
  --customize-hook='chroot "$1" groupadd --system --gid 10001 afmon' \
  --customize-hook='chroot "$1" useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/afmon --shell /usr/sbin/nologin afmon' \
  --customize-hook='mkdir -p "$1/var/lib/afmon" && chroot "$1" chown afmon:afmon /var/lib/afmon' \
  --customize-hook='rm -rf "$1/var/cache/apt"/*.bin "$1/var/lib/apt/lists"/* "$1/usr/share/doc" "$1/usr/share/man"' \
  "$suite" "$here/afmon-rootfs.tar"

podman build --file "$here/Containerfile" --tag "$tag" "$here"
rm -f "$here/afmon-rootfs.tar"
podman run --rm "$tag" --version
