#!/bin/sh
# Called by wrangler ([build] command). Builds the Worker with the pinned, locally installed
# wasm-bindgen CLI and npm binaryen: worker-build must not download anything.
set -e
BIN="${CARGO_HOME:-$HOME/.cargo}/bin"
export WASM_BINDGEN_BIN="${WASM_BINDGEN_BIN:-$BIN/wasm-bindgen}"
# wasm-opt from the pinned npm `binaryen` package (installed by `npm ci`).
export WASM_OPT_BIN="${WASM_OPT_BIN:-$(pwd)/node_modules/.bin/wasm-opt}"

# The HTTP contract is served as a static asset (GET /openapi.json, before the Worker runs),
# not compiled into the WASM: copy it on every build (public/openapi.json is git-ignored).
cp docs/openapi.json public/openapi.json

# wrangler runs this on every start (the e2e restart tests restart it often): skip the
# bindgen + wasm-opt passes when nothing that goes into the Worker changed since the last build.
out=build/worker/shim.mjs
if [ -f "$out" ] && [ -f build/index_bg.wasm ] && [ -z "${FORCE_BUILD:-}" ] \
   && [ -z "$(find Cargo.toml Cargo.lock build.rs src crates/core/Cargo.toml crates/core/src scripts/build-worker.sh -newer build/index_bg.wasm 2>/dev/null | head -1)" ] \
   && [ "${KEEP_NAMES:+kept}" = "$( [ -f build/.names-kept ] && echo kept)" ]; then
  echo "build/ is up to date (FORCE_BUILD=1 to rebuild)"
  exit 0
fi
"$BIN/worker-build" --release

# worker-build always keeps the wasm "name" section (it passes --debuginfo to wasm-opt): 220 KB
# of function names, a sixth of the module, that only a profiler or a stack trace reads. Panic
# messages stay legible without it (console_error_panic_hook prints the message and the
# file:line, which live in the data section). KEEP_NAMES=1 keeps them, for a CPU profile
# with named WASM frames (docs/benchmarks.md "Profiling").
if [ -n "${KEEP_NAMES:-}" ]; then
  touch build/.names-kept
  echo "kept the wasm names section (KEEP_NAMES=1)"
else
  rm -f build/.names-kept
  # The feature set worker-build 0.8.7 passes (never --all-features: newer binaryen encodings,
  # e.g. compact imports, do not load in workerd).
  "$WASM_OPT_BIN" --enable-mutable-globals --enable-sign-ext --enable-nontrapping-float-to-int \
    --enable-bulk-memory --enable-multivalue --enable-reference-types --enable-exception-handling \
    --strip-debug --strip-producers build/index_bg.wasm -o build/index_bg.wasm
  echo "stripped the wasm names section: $(wc -c < build/index_bg.wasm) bytes"
fi
