#!/usr/bin/env bash
# Fuzzes the HTTP API against its contract (docs/openapi.json, served at GET /openapi.json) with
# schemathesis (pinned; installed into .venv/ by scripts/setup.sh). Starts its own `wrangler dev`
# on a free port with a throw-away state directory, mints a user and an admin token, runs
# schemathesis once per token with every check (no 5xx, status codes, content types, headers and
# bodies as documented, ...), then fails if the Worker's log shows a panic. Deterministic
# (schemathesis' deterministic generation, no example database, one worker), so a run is the
# same every time. Part of `make test` (`make fuzz-http`). Check settings: scripts/schemathesis.toml.
#   FUZZ_MAX_EXAMPLES  test cases per operation in the fuzzing phase (default 20)
set -euo pipefail
cd "$(dirname "$0")/.."
export WRANGLER_SEND_METRICS=false

ST=.venv/bin/schemathesis
[ -x "$ST" ] || { echo "schemathesis missing: run scripts/setup.sh (make setup)" >&2; exit 1; }
MAX_EXAMPLES="${FUZZ_MAX_EXAMPLES:-20}"

free_port() { node -e 'const s=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})'; }
port="$(free_port)"
inspector="$(free_port)"
base="http://127.0.0.1:$port"
work="$(mktemp -d)"
log="$work/wrangler.log"
started=$(date +%s)

# Its own process group (npx → node → workerd), so the whole server stops with it.
setsid npx wrangler dev --ip 127.0.0.1 --port "$port" --inspector-port "$inspector" \
  --show-interactive-dev-session=false --persist-to "$work/state" </dev/null >"$log" 2>&1 &
server=$!
cleanup() {
  kill -TERM -- "-$server" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 -- "-$server" 2>/dev/null || break; sleep 0.1; done
  kill -KILL -- "-$server" 2>/dev/null || true
  wait "$server" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# Ready when /health answers (the first start may build the Worker: minutes on a loaded machine).
node -e '
  const [base, pid] = process.argv.slice(1);
  const deadline = Date.now() + 600_000;
  (async () => {
    for (;;) {
      try { process.kill(Number(pid), 0); } catch { console.error("wrangler dev exited before it was ready"); process.exit(1); }
      try { const r = await fetch(base + "/health"); if (r.ok) return; } catch {}
      if (Date.now() > deadline) { console.error("wrangler dev not ready after 600 s"); process.exit(1); }
      await new Promise((r) => setTimeout(r, 500));
    }
  })();' "$base" "$server" || { tail -40 "$log" >&2; exit 1; }
echo "wrangler dev ready on $base after $(( $(date +%s) - started )) s"

mint() { cargo run -q -p edge-realtime-core --bin mint-token -- "$@"; }
user_token="$(mint fuzz-user --name "Fuzz User")"
admin_token="$(mint fuzz-admin --name "Fuzz Admin" --admin)"

total=0
status=0
for who in user admin; do
  token="$user_token"; [ "$who" = admin ] && token="$admin_token"
  echo
  echo "== schemathesis $("$ST" --version | awk '{print $NF}') with the $who token ($MAX_EXAMPLES examples per operation)"
  out="$work/$who.log"
  # `Connection: close`: a fresh connection per request, so wrangler's dev proxy never reuses a
  # keep-alive connection the runtime just closed (it would answer its own 503 for a request
  # the Worker never saw, cloudflare/workers-sdk#14641; see tests/e2e/support.rs).
  "$ST" --config-file scripts/schemathesis.toml run "$base/openapi.json" --url "$base" \
    --checks all --phases examples,coverage,fuzzing \
    --max-examples "$MAX_EXAMPLES" --generation-deterministic \
    --workers 1 --request-timeout 30 --no-color \
    --header "Authorization: Bearer $token" --header "Connection: close" \
    2>&1 | tee "$out"
  [ "${PIPESTATUS[0]}" = 0 ] || status=1
  n=$(grep -oE '^ *[0-9]+ generated' "$out" | grep -oE '[0-9]+' || echo 0)
  echo "$who run: $n generated test cases"
  total=$(( total + n ))
done

# wrangler logs every request it served: `[wrangler:info] GET /health 200 OK (3ms)`.
requests=$(grep -cE '^\[wrangler:info\] [A-Z]+ /' "$log" || true)
server_errors=$(grep -cE '^\[wrangler:info\] [A-Z]+ [^ ]+ 5[0-9][0-9] ' "$log" || true)
panics=$(grep -c 'panicked' "$log" || true)
echo
echo "fuzz-http: $total generated test cases, $requests requests served, $server_errors with a 5xx status, $panics panics in the Worker log, $(( $(date +%s) - started )) s"
if [ "$server_errors" != 0 ]; then
  grep -E '^\[wrangler:info\] [A-Z]+ [^ ]+ 5[0-9][0-9] ' "$log" | head -20 >&2
  status=1
fi
if [ "$panics" != 0 ]; then
  grep -n -A5 'panicked' "$log" | head -40 >&2
  status=1
fi
[ "$requests" -gt 0 ] || { echo "fuzz-http: no request reached the server" >&2; status=1; }
exit "$status"
