#!/usr/bin/env bash
# Debian's chromium for the demo page's browser test (make client-test / make test only; `make dev`
# does not need it). Playwright never downloads a browser here.
set -euo pipefail
step() { printf '\n== %s\n' "$*"; }
step "chromium (Debian's, for the browser test; never a downloaded browser)"
if [ -x /usr/bin/chromium ]; then
  echo "present"
elif [ "$(id -u)" = 0 ]; then
  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium
else
  sudo apt-get update -q && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium
fi
