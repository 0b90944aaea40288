// The demo page in a real browser: Debian's chromium, headless, driven by playwright-core (no
// browser download). Two contexts (two people) see each other's counter clicks and chat
// messages; a second device of the same user sees the session move. Screenshots go to
// test-output/.

import assert from "node:assert/strict";
import { join } from "node:path";
import { test } from "node:test";
import { type Browser, type Page } from "playwright-core";

import { SCREENSHOTS, demoPageSuite } from "./chromium.js";
import { mintToken, unique } from "./support.js";

/**
 * Every wait in the browser: generous, so a loaded machine only makes a run slower. Nothing
 * here waits a fixed time; each wait ends as soon as what it waits for shows up.
 */
const WAIT = 60_000;
const OUT = SCREENSHOTS;

let base = "";
let browser: Browser | undefined;
demoPageSuite((b, br) => {
  base = b;
  browser = br;
});

/** How a tab signs in: a pasted token, or the dev sign-in (`DEV_TOKENS=1`, which the run sets). */
type SignIn = { token: string } | { devUser: string };

async function open(signIn: SignIn | string, counter: string, room: string, errors: string[]): Promise<Page> {
  assert.ok(browser);
  const context = await browser.newContext({ viewport: { width: 1200, height: 860 } });
  context.setDefaultTimeout(WAIT);
  context.setDefaultNavigationTimeout(WAIT);
  const page = await context.newPage();
  page.on("pageerror", (e) => errors.push(String(e)));
  page.on("console", (m) => m.type() === "error" && errors.push(m.text()));
  await page.goto(`${base}/`);
  const how: SignIn = typeof signIn === "string" ? { token: signIn } : signIn;
  // The run's server has DEV_TOKENS=1 (test/support.ts): the page offers "Sign in as …".
  await page.waitForSelector("body[data-signin=dev]", { state: "attached", timeout: WAIT });
  if ("devUser" in how) {
    await page.fill("#dev-user", how.devUser);
    assert.equal(await text(page, "#signin"), `Sign in as ${how.devUser}`);
  } else {
    await page.click("#use-token");
    await page.waitForSelector("body[data-signin=token]", { state: "attached", timeout: WAIT });
    await page.fill("#token", how.token);
  }
  await page.fill("#counter-name", counter);
  await page.fill("#room-name", room);
  await page.click("#signin");
  for (const id of ["#counter-status", "#chat-status", "#session-status"]) {
    await page.waitForFunction((sel) => document.querySelector(sel)?.textContent === "open", id, { timeout: WAIT });
  }
  return page;
}

const text = (page: Page, sel: string) => page.textContent(sel).then((t) => t ?? "");

test("assets: the page is served at / and API routes still reach the Worker", async () => {
  const page = await fetch(`${base}/`);
  assert.equal(page.status, 200);
  assert.match(page.headers.get("content-type") ?? "", /text\/html/);
  assert.match(await page.text(), /edge-realtime/);
  const js = await fetch(`${base}/client/index.js`);
  assert.equal(js.status, 200, "the client build is in public/client (make setup)");
  const health = await fetch(`${base}/health`);
  assert.equal(((await health.json()) as { status: string }).status, "ok");
  const missing = await fetch(`${base}/nope`);
  assert.equal(missing.status, 404);
  assert.equal(((await missing.json()) as { error: { code: string } }).error.code, "not_found");
  const counter = await fetch(`${base}/api/counter/x`);
  assert.equal(counter.status, 401, "API routes are authenticated by the Worker, not served as files");
});

test("two browsers: counter clicks and chat messages show up live in both; the session moves on every device", async () => {
  const alice = unique("alice");
  const bob = unique("bob");
  const counter = unique("demo");
  const room = unique("lobby");
  const errors: string[] = [];
  // Alice signs in with one click (dev sign-in), Bob pastes a token.
  const a = await open({ devUser: alice }, counter, room, errors);
  assert.match(await text(a, "#who"), new RegExp(alice));
  const b = await open(mintToken(bob, { name: "Bob" }), counter, room, errors);

  for (let i = 0; i < 3; i++) await a.click("#inc");
  await b.waitForFunction(() => document.querySelector("#counter-value")?.textContent === "3", null, { timeout: WAIT });
  await a.waitForFunction(() => document.querySelector("#counter-value")?.textContent === "3", null, { timeout: WAIT });
  await b.click("#dec");
  await a.waitForFunction(() => document.querySelector("#counter-value")?.textContent === "2", null, { timeout: WAIT });

  await a.fill("#chat-input", "hello from Alice");
  await a.click("#chat-send");
  await b.waitForSelector("#chat-log li.user >> text=hello from Alice", { timeout: WAIT });
  await b.fill("#chat-input", "hi Alice, Bob here");
  await b.press("#chat-input", "Enter");
  await a.waitForSelector("#chat-log li.user >> text=hi Alice, Bob here", { timeout: WAIT });
  await a.waitForFunction(() => document.querySelector("#chat-users")?.textContent === "2 online", null, { timeout: WAIT });

  // Alice's second device: devices and games move on both of her tabs.
  const a2 = await open(mintToken(alice, { name: "Alice" }), counter, room, errors);
  await a.fill("#game-input", "chess-1");
  await a.click("#game-form button");
  await a2.waitForSelector("#games li >> text=chess-1", { timeout: WAIT });
  await a.waitForFunction(() => (document.querySelector("#devices")?.textContent ?? "").split(", ").length === 2, null, { timeout: WAIT });
  await a2.waitForFunction(() => document.querySelector("#counter-value")?.textContent === "2", null, { timeout: WAIT });
  await a2.waitForFunction(() => document.querySelectorAll("#chat-log li.user").length === 2, null, { timeout: WAIT });

  await a.screenshot({ path: join(OUT, "demo-alice.png"), fullPage: true });
  await b.screenshot({ path: join(OUT, "demo-bob.png"), fullPage: true });

  // Log out everywhere from one tab: every tab of Alice goes back to the sign-in form.
  await a2.click("#logout-all");
  for (const p of [a, a2]) await p.waitForSelector("#signin-panel:not([hidden])", { timeout: WAIT });
  assert.match(await text(a, "#signin-error"), /Logged out on every device/);
  // Bob is not affected: after the logout his tab still round-trips a click through the
  // counter object Alice was connected to, and all three of his sockets are still open.
  await b.click("#inc");
  await b.waitForFunction(() => document.querySelector("#counter-value")?.textContent === "3", null, { timeout: WAIT });
  for (const id of ["#counter-status", "#chat-status", "#session-status"]) assert.equal(await text(b, id), "open", `Bob's ${id}`);
  assert.ok(await b.isHidden("#signin-panel"), "Bob is still signed in");
  assert.deepEqual(errors, []);
});

test("demo sign-in: the server's dev route gives one-click sign-in; without it (404) the page falls back to the token textarea", async () => {
  assert.ok(browser);
  // With the route (this run's server has DEV_TOKENS=1): the dev form, no textarea.
  const context = await browser.newContext();
  context.setDefaultTimeout(WAIT);
  const page = await context.newPage();
  await page.goto(`${base}/`);
  await page.waitForSelector("body[data-signin=dev]", { state: "attached", timeout: WAIT });
  assert.ok(await page.isVisible("#dev-user"));
  assert.ok(await page.isHidden("#token"));
  // The same page where /__dev/token answers 404 (a server without DEV_TOKENS, as proven by
  // tests/e2e foundation::dev_tokens_only_with_the_var): the textarea, no dev form.
  const fallback = await browser.newContext();
  fallback.setDefaultTimeout(WAIT);
  await fallback.route("**/__dev/token", (route) =>
    route.fulfill({ status: 404, contentType: "application/json", body: '{"error":{"code":"not_found","message":"no route for /__dev/token"}}' }),
  );
  const plain = await fallback.newPage();
  await plain.goto(`${base}/`);
  await plain.waitForSelector("body[data-signin=token]", { state: "attached", timeout: WAIT });
  assert.ok(await plain.isVisible("#token"));
  assert.ok(await plain.isHidden("#dev-user"));
  assert.equal(await text(plain, "#signin"), "Connect");
  await context.close();
  await fallback.close();
});
