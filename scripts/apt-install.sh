#!/usr/bin/env bash
# Installs Debian packages for the project's scripts (DynamoDB Local's Java and npm, the
# page tests' browser): `scripts/apt-install.sh [--no-recommends] PACKAGE...`. Runs apt-get
# as root, or through sudo; fails naming the packages when neither is possible.
set -euo pipefail

log() { echo "apt-install: $*" >&2; }

options=()
if [[ "${1:-}" == "--no-recommends" ]]; then
    options=(--no-install-recommends)
    shift
fi
[[ $# -gt 0 ]] || {
    echo "usage: $0 [--no-recommends] PACKAGE..." >&2
    exit 2
}
if ! command -v apt-get >/dev/null 2>&1; then
    log "error: $* missing and apt-get is not available: install it by hand"
    exit 1
fi
sudo=()
if [[ "$(id -u)" -ne 0 ]]; then
    if ! command -v sudo >/dev/null 2>&1; then
        log "error: $* missing: install it (apt-get needs root)"
        exit 1
    fi
    sudo=(sudo)
fi
log "installing $* with apt-get"
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${options[@]}" "$@" >/dev/null
