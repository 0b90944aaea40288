// Debian's chromium, headless, through playwright-core: the one launch every browser test uses.
// Playwright never downloads a browser here (scripts/setup-browser.sh installs Debian's).

import assert from "node:assert/strict";
import { existsSync, mkdirSync } from "node:fs";
import { join } from "node:path";
import { after, before } from "node:test";
import { chromium, type Browser } from "playwright-core";

import { ROOT, server, stopOwnServer } from "./support.js";

/** Where the demo tests put their screenshots. */
export const SCREENSHOTS = join(ROOT, "test-output");

export const CHROMIUM = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";

/** `extraArgs`: more chromium switches (the voice test's fake microphone). */
export async function launchChromium(extraArgs: string[] = []): Promise<Browser> {
  assert.ok(existsSync(CHROMIUM), `${CHROMIUM} missing: run ./scripts/setup-browser.sh (apt-get install chromium; never a downloaded browser)`);
  // playwright-core launches with a fresh temporary --user-data-dir of its own.
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
      "--disable-component-update", "--disable-sync", "--disable-quic", ...extraArgs],
  });
}

/**
 * The demo page's test files: before their tests, the shared `wrangler dev` and one chromium
 * (handed to `ready`); after them, both stopped.
 */
export function demoPageSuite(ready: (base: string, browser: Browser) => void): void {
  let browser: Browser | undefined;
  before(async () => {
    const { base } = await server();
    browser = await launchChromium();
    mkdirSync(SCREENSHOTS, { recursive: true });
    ready(base, browser);
  });
  after(async () => {
    await browser?.close();
    await stopOwnServer();
  });
}
