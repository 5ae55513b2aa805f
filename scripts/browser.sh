#!/usr/bin/env bash
# A headless browser for the page tests (`ddbsc serve`): Debian's chromium and its
# WebDriver, chromium-driver.
#
#   scripts/browser.sh install
#       apt-get installs chromium and chromium-driver (scripts/apt-install.sh) when
#       `chromium` or `chromedriver` is missing. Does nothing when both are there.
#
#   scripts/browser.sh check
#       prints where both are and their versions; exits 1 (saying what to run) when one is
#       missing.
#
# The tests start chromedriver themselves on a free loopback port and run chromium with
# --headless --no-sandbox (the tests run as root) and a new empty profile; CHROMIUM and
# CHROMEDRIVER override the binaries they use.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly ROOT

log() { echo "browser: $*" >&2; }
die() {
    log "error: $*"
    exit 1
}

usage() {
    cat >&2 <<EOF
usage: $0 install
       $0 check
EOF
    exit 2
}

chromium_bin() { command -v "${CHROMIUM:-chromium}" 2>/dev/null || true; }
driver_bin() { command -v "${CHROMEDRIVER:-chromedriver}" 2>/dev/null || true; }

install() {
    if [[ -n "$(chromium_bin)" && -n "$(driver_bin)" ]]; then
        return 0
    fi
    # Without recommends: no desktop services or extra fonts (DejaVu comes with fontconfig).
    "$ROOT/scripts/apt-install.sh" --no-recommends chromium chromium-driver
    check >/dev/null
}

check() {
    local browser driver
    browser="$(chromium_bin)"
    driver="$(driver_bin)"
    [[ -n "$browser" ]] || die "chromium not found: run scripts/browser.sh install"
    [[ -n "$driver" ]] || die "chromedriver not found: run scripts/browser.sh install"
    echo "chromium: $browser ($("$browser" --version 2>/dev/null || echo "version unknown"))"
    echo "chromedriver: $driver ($("$driver" --version 2>/dev/null || echo "version unknown"))"
}

case "${1:-}" in
install)
    shift
    [[ $# -eq 0 ]] || usage
    install
    ;;
check)
    shift
    [[ $# -eq 0 ]] || usage
    check
    ;;
*) usage ;;
esac
