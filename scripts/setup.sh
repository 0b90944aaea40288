#!/usr/bin/env bash
# Installs what the project needs, skipping whatever is already there at the right version.
# Nothing is downloaded from GitHub: worker-build gets the locally installed wasm-bindgen CLI.
set -euo pipefail
cd "$(dirname "$0")/.."

WASM_BINDGEN_VERSION=0.2.130
WORKER_BUILD_VERSION=0.8.7
# The HTTP fuzzer of `make test` (scripts/fuzz-http.sh), from PyPI into .venv/ (git-ignored).
SCHEMATHESIS_VERSION=4.32.5
BIN="${CARGO_HOME:-$HOME/.cargo}/bin"

step() { printf '\n== %s\n' "$*"; }

step "wasm32 target"
if rustup target list --installed | grep -qx wasm32-unknown-unknown; then
  echo "present"
else
  rustup target add wasm32-unknown-unknown
fi

step "wasm-bindgen-cli $WASM_BINDGEN_VERSION"
if [ -x "$BIN/wasm-bindgen" ] && "$BIN/wasm-bindgen" --version 2>/dev/null | grep -q " $WASM_BINDGEN_VERSION"; then
  echo "present"
else
  cargo install wasm-bindgen-cli --version "$WASM_BINDGEN_VERSION" --force
fi

step "worker-build $WORKER_BUILD_VERSION"
if [ -x "$BIN/worker-build" ] && "$BIN/worker-build" --version 2>/dev/null | grep -q "$WORKER_BUILD_VERSION"; then
  echo "present"
else
  cargo install worker-build --version "$WORKER_BUILD_VERSION" --locked --force
fi

step "npm packages (wrangler 4.86.0)"
if [ -x node_modules/.bin/wrangler ] && node_modules/.bin/wrangler --version 2>/dev/null | grep -q "4.86.0" \
   && [ node_modules/.package-lock.json -nt package-lock.json ]; then
  echo "present"
else
  npm ci --no-audit --no-fund
fi

step ".dev.vars"
if [ -f .dev.vars ]; then
  echo "present"
else
  cp .dev.vars.example .dev.vars
  echo "created from .dev.vars.example (dev-only secret)"
fi

step "client SDK (client/: typescript, ws, playwright-core; pinned in client/package-lock.json)"
if [ -x client/node_modules/.bin/tsc ] && [ client/node_modules/.package-lock.json -nt client/package-lock.json ]; then
  echo "present"
else
  (cd client && npm ci --no-audit --no-fund)
fi

step "React hooks (client/react/: react 19, esbuild; pinned in client/react/package-lock.json)"
if [ -x client/react/node_modules/.bin/esbuild ] && [ client/react/node_modules/.package-lock.json -nt client/react/package-lock.json ]; then
  echo "present"
else
  (cd client/react && npm ci --no-audit --no-fund)
fi

step "client build → public/client/ (the demo page's ES modules)"
if [ -f public/client/index.js ] && [ -z "$(find client/src client/tsconfig.json -newer public/client/index.js 2>/dev/null)" ]; then
  echo "up to date"
else
  (cd client && npx tsc -p tsconfig.json)
  rm -rf public/client
  mkdir -p public/client
  cp -r client/dist/. public/client/
  find public/client -name '*.d.ts' -delete
  echo "built"
fi

step "schemathesis $SCHEMATHESIS_VERSION (.venv/, for scripts/fuzz-http.sh; pinned with scripts/fuzz-constraints.txt)"
if [ -x .venv/bin/schemathesis ] && .venv/bin/schemathesis --version 2>/dev/null | grep -q " $SCHEMATHESIS_VERSION\$" \
   && [ .venv/bin/schemathesis -nt scripts/fuzz-constraints.txt ]; then
  echo "present"
else
  # A fresh machine may have no Python: Debian's python3 and its venv module.
  if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then
      apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3 python3-venv
    else
      sudo apt-get update -q && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3 python3-venv
    fi
  fi
  rm -rf .venv
  python3 -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check -c scripts/fuzz-constraints.txt "schemathesis==$SCHEMATHESIS_VERSION"
  touch .venv/bin/schemathesis
  .venv/bin/schemathesis --version
fi
