#!/bin/sh
# Install the headless browser the status page's browser test drives (tests/page/test_browser.py):
# Debian's chromium and its matching chromedriver. Run as root (CI does: sh scripts/install-browser.sh).
set -eu
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
    echo "chromium and chromedriver already installed: $(chromium --version 2>/dev/null || true)"
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y --no-install-recommends chromium chromium-driver fonts-dejavu-core
chromium --version
chromedriver --version
