#!/bin/sh
# Called by wrangler ([build] command). Builds the Worker with the pinned, locally installed
# wasm-bindgen CLI and npm binaryen: worker-build must not download anything.
set -e
BIN="${CARGO_HOME:-$HOME/.cargo}/bin"
export WASM_BINDGEN_BIN="${WASM_BINDGEN_BIN:-$BIN/wasm-bindgen}"
# wasm-opt from the pinned npm `binaryen` package (installed by `npm ci`).
export WASM_OPT_BIN="${WASM_OPT_BIN:-$(pwd)/node_modules/.bin/wasm-opt}"

# wrangler runs this on every start (the e2e restart tests restart it often): skip the
# bindgen + wasm-opt passes when nothing that goes into the Worker changed since the last build.
out=build/worker/shim.mjs
if [ -f "$out" ] && [ -f build/index_bg.wasm ] && [ -z "${FORCE_BUILD:-}" ] \
   && [ -z "$(find Cargo.toml Cargo.lock build.rs src crates/core/Cargo.toml crates/core/src docs/openapi.json -newer build/index_bg.wasm 2>/dev/null | head -1)" ]; then
  echo "build/ is up to date (FORCE_BUILD=1 to rebuild)"
  exit 0
fi
exec "$BIN/worker-build" --release
