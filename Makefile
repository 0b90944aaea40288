# edge-realtime — the two commands: `make dev` runs the service, `make test` passes the tests.
# Both install whatever is missing first (scripts/setup.sh skips what is already there).

PORT ?= 8787
export WRANGLER_SEND_METRICS = false

.PHONY: dev test setup token lint unit fuzz e2e client-test openapi-check fuzz-http deploy deploy-check bench bench-chat bench-counter bench-wake bench-size bench-ratelimit bench-sharded bench-scale bench-chat-1000 bench-idle bench-storm clean

## Run the service locally on the real runtime (workerd) at http://127.0.0.1:$(PORT)
dev: setup
	npx wrangler dev --ip 127.0.0.1 --port $(PORT)

## Set up, then run every test: unit, end-to-end on wrangler dev, client SDK + browser, the HTTP
## contract (OpenAPI validation + schemathesis fuzzing), lint, deploy dry-run
test: setup
	cargo test --workspace --all-targets
	$(MAKE) client-test
	$(MAKE) openapi-check
	$(MAKE) fuzz-http
	cargo clippy --workspace --all-targets -- -D warnings
	$(MAKE) deploy-check

setup:
	@./scripts/setup.sh

## Mint a dev token: make token USER=alice [NAME="Alice A."] [ADMIN=1]
token:
	@cargo run -q -p edge-realtime-core --bin mint-token -- "$(USER)" $(if $(NAME),--name "$(NAME)") $(if $(ADMIN),--admin)

unit:
	cargo test -p edge-realtime-core

## The property tests (crates/core/tests/props) run long: FUZZ_CASES cases per property
## (default 20000: over a million in total, minutes), optimized with overflow checks on.
## `make test` runs the same properties with 32 cases each. A failure's seed is saved under
## crates/core/tests/proptest-regressions/ and replayed first by every later run.
FUZZ_CASES ?= 20000
FUZZ = CARGO_PROFILE_RELEASE_OVERFLOW_CHECKS=true CARGO_PROFILE_RELEASE_DEBUG_ASSERTIONS=true \
	CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 CARGO_PROFILE_RELEASE_OPT_LEVEL=3 \
	cargo test --release -p edge-realtime-core --test props

fuzz:
	$(FUZZ) --no-run
	@n=$$($(FUZZ) -q -- --list 2>/dev/null | grep -c ': test$$') && \
	echo "property tests: $$n properties x $(FUZZ_CASES) cases = $$((n * $(FUZZ_CASES))) cases" && \
	start=$$(date +%s) && PROPTEST_CASES=$(FUZZ_CASES) $(FUZZ) -q && \
	echo "fuzz: $$((n * $(FUZZ_CASES))) cases passed in $$(($$(date +%s) - start)) s"

e2e: setup
	cargo test --test e2e

## The TypeScript client (client/): compile with tsc, then node's test runner against one
## `wrangler dev` — socket behaviour, resume, logout, frame types, and the demo page in chromium
client-test: setup
	@./scripts/setup-browser.sh
	cd client && npm test

## docs/openapi.json (served at GET /openapi.json) is a valid OpenAPI 3.1 document
## (@seriousme/openapi-schema-validator, pinned in package.json)
openapi-check: setup
	node scripts/openapi-check.mjs

## Fuzz the HTTP API against docs/openapi.json with schemathesis on its own wrangler dev, with a
## user and an admin token: no 5xx, nothing the document does not say, no panic in the log
fuzz-http: setup
	./scripts/fuzz-http.sh

## Rate-limiter checks/s and p99, one key and many keys (starts its own wrangler dev, or BENCH_BASE_URL=...)
bench-ratelimit: setup
	cargo run --example bench_ratelimit

## Deploy to your Cloudflare account from a fresh clone: setup (the [build] command needs the
## wasm32 target, wasm-bindgen-cli, worker-build and the npm packages it installs), then
## `wrangler deploy`. Set the secret first: `npx wrangler secret put AUTH_SECRET` (README "Deploy").
deploy: setup
	npx wrangler deploy

## `wrangler deploy --dry-run`: the bundle builds and validates without an account
deploy-check:
	@out=$$(mktemp -d) && npx wrangler deploy --dry-run --outdir "$$out" && ls -l "$$out" && rm -rf "$$out"

## Benchmarks (docs/benchmarks.md): each starts its own wrangler dev and prints a Markdown table
## with the machine. Options after ARGS, e.g. `make bench-chat ARGS="--receivers 20 --duration 5"`.
BENCH = cargo run -q --profile bench-driver -p edge-realtime-bench --

bench: setup
	@$(SCALE) all $(ARGS)
	cargo run -q --example bench_ratelimit

bench-chat: setup
	$(BENCH) chat $(ARGS)

bench-counter: setup
	$(BENCH) counter $(ARGS)

bench-wake: setup
	$(BENCH) wake $(ARGS)

bench-size: setup
	$(BENCH) size $(ARGS)

## One channel with 2,000 receivers, CHANNEL_SHARDS 1 vs 4 (docs/sharding.md); also in `make bench`.
bench-sharded: setup
	@$(SCALE) sharded $(ARGS)

## Scale runs (docs/benchmarks.md "Scale"), not part of `make bench`: several minutes each.
## Every socket is a file descriptor in the driver and in the Worker's workerd (and six in
## wrangler's dev-only proxy workerd, which `bench-idle` skips with --direct): the soft
## `ulimit -n` is raised to the hard limit first and printed.
SCALE = ulimit -n "$$(ulimit -Hn)" 2>/dev/null; echo "ulimit -n: $$(ulimit -n)"; $(BENCH)

bench-scale: bench-chat-1000 bench-idle bench-storm

bench-chat-1000: setup
	@$(SCALE) chat --receivers 1000 --senders 5 --duration 10 --warmup 2 $(ARGS)

bench-idle: setup
	@$(SCALE) idle --sockets 5000 --concurrency 32 --direct true $(ARGS)

bench-storm: setup
	@$(SCALE) storm --clients 1000 $(ARGS)

clean:
	rm -rf build target .wrangler
