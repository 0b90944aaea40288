#!/bin/sh
# Called by wrangler ([build] command). Builds the Worker with the pinned, locally installed
# wasm-bindgen CLI: worker-build must not download anything.
set -e
BIN="${CARGO_HOME:-$HOME/.cargo}/bin"
export WASM_BINDGEN_BIN="${WASM_BINDGEN_BIN:-$BIN/wasm-bindgen}"
exec "$BIN/worker-build" --release
