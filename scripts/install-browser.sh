#!/usr/bin/env bash
# Install Debian's Chromium for the console's browser tests (tests/console, Playwright for Python drives it
# at /usr/bin/chromium). Idempotent: does nothing when Chromium is already there. Playwright's own browser
# download is never used (`playwright install` cannot reach its CDN here).
set -euo pipefail

if [ -x /usr/bin/chromium ]; then
    echo "chromium already installed: $(/usr/bin/chromium --version 2>/dev/null || echo /usr/bin/chromium)"
    exit 0
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# fonts-liberation: readable text in screenshots (Chromium's default sans/mono fall back to it)
$SUDO apt-get install -y -qq --no-install-recommends chromium fonts-liberation >/dev/null
echo "chromium installed: $(/usr/bin/chromium --version 2>/dev/null || echo /usr/bin/chromium)"
