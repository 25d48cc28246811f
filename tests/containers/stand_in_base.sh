#!/usr/bin/env bash
# Makes python:3.11-slim-bookworm for the Dockerfile's train and runtime-cpu stages when
# the real image can be neither found locally nor pulled (a machine that reaches Debian's
# package mirror but no container registry). The stand-in is a look-alike built from
# Debian bookworm packages: CPython 3.11 with `python` and `pip` in /usr/local/bin, where
# the official image has them (a venv there, so pip is not "externally managed"), plus
# ca-certificates and passwd (groupadd/useradd), as in the official image.
#
# The CUDA base of the GPU stage (nvidia/cuda:...) cannot be made this way; that stage
# keeps its static checks only (tests/test_containers.py).
set -euo pipefail
IMAGE=docker.io/library/python:3.11-slim-bookworm

if podman image exists "$IMAGE"; then
    echo "stand_in_base: $IMAGE is present: $(podman image inspect --format '{{.Id}}' "$IMAGE" | cut -c1-12)"
    exit 0
fi
if podman pull --quiet "$IMAGE" >/dev/null 2>&1; then
    echo "stand_in_base: pulled the real $IMAGE"
    exit 0
fi
echo "stand_in_base: $IMAGE cannot be pulled; building a stand-in from Debian packages"
if ! command -v mmdebstrap >/dev/null; then
    echo "stand_in_base: mmdebstrap is missing (apt-get install mmdebstrap)" >&2
    exit 1
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# The customize hooks run after the packages are in: the venv at /usr/local puts python,
# python3 and pip in /usr/local/bin; apt's lists and the docs go, as in a slim image.
mmdebstrap --quiet --variant=minbase \
    --include=python3.11,python3.11-venv,ca-certificates,passwd \
    --customize-hook='chroot "$1" python3.11 -m venv /usr/local' \
    --customize-hook='chroot "$1" /usr/local/bin/python -c "import ssl, sqlite3, venv"' \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/usr/share/doc/* "$1"/usr/share/man/*' \
    bookworm "$work/rootfs.tar" http://deb.debian.org/debian
podman import \
    --change 'ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PYTHON_VERSION=3.11' \
    --change 'CMD ["python3"]' \
    "$work/rootfs.tar" "$IMAGE" >/dev/null
podman run --rm --network none "$IMAGE" sh -c \
    'test "$(command -v python)" = /usr/local/bin/python && test "$(command -v pip)" = /usr/local/bin/pip && python -c "import sys; assert sys.version_info[:2] == (3, 11), sys.version"'
echo "stand_in_base: built $IMAGE ($(podman image inspect --format '{{.Size}}' "$IMAGE") bytes)"
