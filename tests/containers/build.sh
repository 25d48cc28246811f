#!/usr/bin/env bash
# Builds the Dockerfile's train and runtime-cpu stages with podman, as `make compose-test`
# runs them, and prints each build's seconds and the images' sizes.
#
#   tests/containers/build.sh          train and runtime-cpu (make compose-test)
#   tests/containers/build.sh gpu      train and runtime on GPU_BASE=pip (make gpu-image-test)
#
# The GPU image's wheels (about 1.6 GB: onnxruntime-gpu, CUDA and cuDNN) are downloaded by
# pip on the host into .cache/gpu-wheels (ignored by git and the build context) and the
# build installs from there alone (--no-index): a rerun downloads nothing again, and no
# wheel is copied into a layer.
#
# --format docker: podman builds OCI images by default, and the OCI image format has no
# HEALTHCHECK, so the image's own health check would be dropped. --network host: the
# build's pip reaches the package index the way the host does.
#
# Behind a TLS-intercepting proxy, pip in the build must trust the host's CA bundle
# (BUILD_CA_BUNDLE, default $PIP_CERT or $SSL_CERT_FILE when one names a file). It is
# bind-mounted into each RUN step with a pip.conf naming it, never copied into a layer,
# so no image holds it.
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${CONTAINERS_CONF:?set CONTAINERS_CONF (make compose-test sets tests/containers/containers.conf)}"

tests/containers/stand_in_base.sh

what=${1:-cpu}
args=(--format docker --network host --pull=never)
conf=$(mktemp -d)
trap 'rm -rf "$conf"' EXIT
printf '[global]\n' > "$conf/pip.conf"
ca=${BUILD_CA_BUNDLE:-${PIP_CERT:-${SSL_CERT_FILE:-}}}
if [ -n "$ca" ] && [ -f "$ca" ]; then
    printf 'cert = /run/build-ca/ca.crt\n' >> "$conf/pip.conf"
    args+=(-v "$ca:/run/build-ca/ca.crt:ro")
    echo "build: pip trusts $ca (mounted, not copied)"
fi
chmod -R a+rX "$conf"

build() {  # TARGET TAG PIP_CONF [EXTRA_VOLUME]
    local start=$SECONDS
    podman build "${args[@]}" -v "$3:/etc/pip.conf:ro" ${4:+-v "$4"} --target "$1" -t "$2" .
    echo "build: $1 -> $2 in $((SECONDS - start)) s"
}
build train convlstm-serve:train "$conf/pip.conf"
if [ "$what" = gpu ]; then
    # The image's Python (3.11 on bookworm) and platform, whatever the host runs; and the
    # build-system's setuptools, which `pip install .` fetches for its isolated build.
    wheels=$PWD/.cache/gpu-wheels
    mkdir -p "$wheels"
    start=$SECONDS
    python=${PYTHON:-.venv/bin/python}
    "$python" -c "$(sed -n 's/^ARG PINS="//p' Dockerfile | sed 's/"$//')" serve gpu cuda \
        > "$conf/requirements.txt"
    "$python" -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['build-system']['requires'], sep='\n')" \
        >> "$conf/requirements.txt"
    "$python" -m pip download --quiet --dest "$wheels" --only-binary=:all: \
        --python-version 3.11 --implementation cp --platform manylinux_2_28_x86_64 \
        --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -r "$conf/requirements.txt"
    echo "build: wheels in $wheels ($(du -sh "$wheels" | cut -f1)) ready in $((SECONDS - start)) s"
    cp "$conf/pip.conf" "$conf/pip-gpu.conf"
    printf 'no-index = true\nfind-links = /run/wheels\n' >> "$conf/pip-gpu.conf"
    chmod -R a+rX "$conf"
    build runtime convlstm-serve:gpu "$conf/pip-gpu.conf" "$wheels:/run/wheels:ro"
else
    build runtime-cpu convlstm-serve:cpu "$conf/pip.conf"
fi
podman image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' \
    | grep -E '(convlstm-serve|python):' | sed 's/^/build: size /'
