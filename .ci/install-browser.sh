#!/usr/bin/env bash
# Install Debian's Chromium for the browser test (tests/test_browser.py).
# Playwright's own browser download is not used: CI has no route to its CDN.
# Idempotent: returns at once when /usr/bin/chromium is already there. Runs as root (or via sudo).
set -euo pipefail

if [ -x /usr/bin/chromium ]; then
    echo "chromium already installed: $(/usr/bin/chromium --version 2>/dev/null || echo '?')"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "install-browser.sh: run as root (or install sudo)" >&2; exit 1; }
    SUDO="sudo"
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# Fonts so the screenshot renders text; no recommends keeps the install small.
$SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null

/usr/bin/chromium --version
