#!/usr/bin/env bash
# The demo in one command: builds it (web/build.sh) and serves web/www on
# http://127.0.0.1:${PORT:-8000}/ . Open that address in a browser with WebGPU (Chrome, Edge;
# Chromium on Linux needs --enable-unsafe-webgpu). Without WebGPU the page says so and runs
# the library's CPU reference instead.
set -euo pipefail
cd "$(dirname "$0")"
./build.sh
port="${PORT:-8000}"
echo "== serving http://127.0.0.1:$port/ (Ctrl-C to stop)"
exec python3 -m http.server --bind 127.0.0.1 --directory www "$port"
