#!/usr/bin/env bash
# Builds the Dockerfile's train and runtime-cpu stages with podman, as `make compose-test`
# runs them, and prints each build's seconds and the images' sizes.
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

args=(--format docker --network host --pull=never)
ca=${BUILD_CA_BUNDLE:-${PIP_CERT:-${SSL_CERT_FILE:-}}}
if [ -n "$ca" ] && [ -f "$ca" ]; then
    conf=$(mktemp -d)
    trap 'rm -rf "$conf"' EXIT
    printf '[global]\ncert = /run/build-ca/ca.crt\n' > "$conf/pip.conf"
    chmod -R a+rX "$conf"
    args+=(-v "$ca:/run/build-ca/ca.crt:ro" -v "$conf/pip.conf:/etc/pip.conf:ro")
    echo "build: pip trusts $ca (mounted, not copied)"
fi

build() {  # TARGET TAG
    local start=$SECONDS
    podman build "${args[@]}" --target "$1" -t "$2" .
    echo "build: $1 -> $2 in $((SECONDS - start)) s"
}
build train convlstm-serve:train
build runtime-cpu convlstm-serve:cpu
podman image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' \
    | grep -E '(convlstm-serve|python):' | sed 's/^/build: size /'
