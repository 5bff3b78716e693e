#!/usr/bin/env bash
# The browser test: installs Debian's Chromium (if missing) and the test's npm package
# (playwright-core, which downloads no browser), builds the demo and the native command, then
# runs web/tests/ with node's test runner against headless Chromium on WebGPU (SwiftShader).
# SCREENSHOT=web/screenshot.png also refreshes the README's screenshot.
set -euo pipefail
cd "$(dirname "$0")/.."
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
    echo "== installing Debian's chromium and chromium-driver"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium chromium-driver >/dev/null
fi
if ! command -v node >/dev/null 2>&1; then
    echo "== installing node and npm"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nodejs npm >/dev/null
fi

echo "== npm packages (playwright-core; no browser download)"
(cd web && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error)

web/build.sh
echo "== native wgpu-optim (the twin the page is compared with)"
cargo build --quiet --bin wgpu-optim

echo "== browser test"
cd web
node --test --test-reporter=spec tests/
