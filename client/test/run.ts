// `npm test` runner: start one `wrangler dev` for every test file, run them with node's test
// runner (one file at a time: they share the server and the machine is small), stop wrangler.
// A test that hangs fails after 5 minutes (every wait inside has its own, shorter deadline).

import { spawn } from "node:child_process";
import { readdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

import { startWrangler } from "./support.js";

const here = dirname(fileURLToPath(import.meta.url));
const only = process.argv.slice(2);
const files = readdirSync(here)
  .filter((f) => f.endsWith(".test.js"))
  .filter((f) => only.length === 0 || only.some((o) => f.includes(o)))
  .sort()
  .map((f) => join(here, f));

const started = Date.now();
const server = await startWrangler();
console.log(`wrangler dev ready at ${server.base} in ${((Date.now() - started) / 1000).toFixed(1)} s`);
let code = 1;
try {
  code = await new Promise<number>((ok) => {
    const child = spawn(process.execPath, ["--test", "--test-concurrency=1", "--test-timeout=300000", ...files], {
      stdio: "inherit",
      env: { ...process.env, EDGE_BASE_URL: server.base },
    });
    child.on("exit", (c, sig) => ok(c ?? (sig ? 1 : 0)));
  });
} finally {
  await server.stop();
}
console.log(`client tests: ${((Date.now() - started) / 1000).toFixed(1)} s in total`);
process.exit(code);
