#!/usr/bin/env bash
# Builds the browser demo into web/www/pkg: the wasm crate (web/) for wasm32-unknown-unknown,
# then wasm-bindgen's JS glue. Installs the wasm target and wasm-bindgen-cli (from crates.io, at
# exactly the version of the wasm-bindgen crate in web/Cargo.lock) when they are missing.
set -euo pipefail
cd "$(dirname "$0")"

if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
    rustup target add wasm32-unknown-unknown
fi

version=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/[^0-9.]/, ""); print; exit }' Cargo.lock)
if [ -z "$version" ]; then
    echo "web/build.sh: no wasm-bindgen in web/Cargo.lock" >&2
    exit 1
fi
if ! wasm-bindgen --version 2>/dev/null | grep -qx "wasm-bindgen $version"; then
    echo "== installing wasm-bindgen-cli $version (once; about 2 minutes)"
    cargo install wasm-bindgen-cli --version "$version"
fi

echo "== building the wasm crate"
cargo build --release --target wasm32-unknown-unknown
wasm-bindgen --target web --no-typescript --out-dir www/pkg \
    target/wasm32-unknown-unknown/release/wgpu_optim_web.wasm
echo "== built web/www ($(du -sh www/pkg/wgpu_optim_web_bg.wasm | cut -f1) of wasm)"
