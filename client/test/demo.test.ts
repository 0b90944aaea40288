// The demo page's other panels in a real browser (Debian's chromium, headless): two people meet
// in one community, one channel and one game; the channel survives a reload without loss or
// duplicates; the rate-limiter panel answers an admin and refuses a plain user. Screenshots go
// to test-output/. Every wait ends as soon as what it waits for shows up (60 s deadline).

import assert from "node:assert/strict";
import { join } from "node:path";
import { test } from "node:test";
import { type Browser, type Page } from "playwright-core";

import { SCREENSHOTS, demoPageSuite } from "./chromium.js";
import { mintToken, unique } from "./support.js";

const WAIT = 60_000;
const OUT = SCREENSHOTS;

let base = "";
let browser: Browser | undefined;
demoPageSuite((b, br) => {
  base = b;
  browser = br;
});

const PANELS = ["#waddle-status", "#channel-status", "#game-status"];

/** A signed-in tab: the token is in sessionStorage before the page loads (the page reconnects with it). */
async function open(token: string, query: string, errors: string[]): Promise<Page> {
  assert.ok(browser);
  const context = await browser.newContext({ viewport: { width: 1200, height: 1400 } });
  context.setDefaultTimeout(WAIT);
  context.setDefaultNavigationTimeout(WAIT);
  await context.addInitScript((t) => sessionStorage.setItem("token", t), token);
  const page = await context.newPage();
  page.on("pageerror", (e) => errors.push(String(e)));
  page.on("console", (m) => m.type() === "error" && errors.push(m.text()));
  await page.goto(`${base}/?${query}`);
  await waitOpen(page);
  return page;
}

async function waitOpen(page: Page): Promise<void> {
  for (const id of PANELS) {
    await page.waitForFunction((sel) => document.querySelector(sel)?.textContent === "open", id, { timeout: WAIT });
  }
}

const until = (page: Page, fn: () => boolean) => page.waitForFunction(fn, null, { timeout: WAIT });

test("two browsers: community presence and typing, a channel that resumes after a reload, a game, the rate limiter", async () => {
  const alice = unique("alice");
  const bob = unique("bob");
  const query = new URLSearchParams({ waddle: unique("pond"), channel: unique("news"), game: unique("match") }).toString();
  const errors: string[] = [];
  const a = await open(mintToken(alice, { name: "Alice", roles: ["admin"] }), query, errors);
  const b = await open(mintToken(bob, { name: "Bob" }), query, errors);

  // Community: each sees the other online; Bob goes away; Alice types and Bob sees it.
  await until(a, () => document.querySelectorAll("#waddle-members li.online").length === 2);
  await b.selectOption("#waddle-select", "away");
  await a.waitForSelector(`#waddle-members li.away[data-user="${bob}"]`, { timeout: WAIT });
  await a.fill("#waddle-input", "hello");
  await b.waitForFunction((who) => (document.querySelector("#waddle-typing")?.textContent ?? "").includes(who), alice, { timeout: WAIT });

  // Channel: two posts arrive in order; Bob reloads and sees exactly the same, then a third.
  for (const text of ["first", "second"]) {
    await a.fill("#channel-input", text);
    await a.click("#channel-send");
  }
  await until(b, () => document.querySelectorAll("#channel-log li").length === 2);
  await b.reload();
  await waitOpen(b);
  await until(b, () => document.querySelectorAll("#channel-log li").length === 2);
  await a.fill("#channel-input", "third");
  await a.press("#channel-input", "Enter");
  await b.waitForSelector("#channel-log li >> text=third", { timeout: WAIT });
  const seqs = await b.$$eval("#channel-log li", (lis) => lis.map((li) => Number((li as HTMLElement).dataset.seq)));
  assert.deepEqual(seqs, [1, 2, 3], "every message once, in sequence order, across the reload");
  const texts = await b.$$eval("#channel-log li", (lis) => lis.map((li) => li.textContent ?? ""));
  assert.deepEqual(texts.map((t) => t.split(": ").pop()), ["first", "second", "third"]);

  // Game: Alice joins first, so she moves first; then it is Bob's turn.
  await a.click("#game-join");
  await until(a, () => document.querySelectorAll("#game-players li").length === 1);
  await b.click("#game-join");
  await until(a, () => (document.querySelector("#game-state")?.textContent ?? "").startsWith("playing"));
  await until(a, () => !(document.querySelector("#game-move") as HTMLButtonElement).disabled);
  assert.ok(await b.isDisabled("#game-move"), "not Bob's turn yet");
  await a.click("#game-move");
  await b.waitForSelector(`#game-log li >> text=#1 ${alice} played`, { timeout: WAIT });
  await until(b, () => !(document.querySelector("#game-move") as HTMLButtonElement).disabled);

  // Rate limiter: an admin gets a decision, a plain user a 403.
  await a.fill("#rl-key", unique("demo-key"));
  await a.click("#rl-check");
  await a.waitForSelector("#rl-result.allowed", { timeout: WAIT });
  await b.click("#rl-check");
  await b.waitForSelector("#rl-result.error >> text=403", { timeout: WAIT });

  await a.screenshot({ path: join(OUT, "demo-panels-alice.png"), fullPage: true });
  await b.screenshot({ path: join(OUT, "demo-panels-bob.png"), fullPage: true });
  assert.deepEqual(errors.filter((e) => !e.includes("403")), []);
});
