// Debian's chromium, headless, through playwright-core: the one launch every browser test uses.
// Playwright never downloads a browser here (scripts/setup-browser.sh installs Debian's).

import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { chromium, type Browser } from "playwright-core";

export const CHROMIUM = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";

export async function launchChromium(): Promise<Browser> {
  assert.ok(existsSync(CHROMIUM), `${CHROMIUM} missing: run ./scripts/setup-browser.sh (apt-get install chromium; never a downloaded browser)`);
  // playwright-core launches with a fresh temporary --user-data-dir of its own.
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
      "--disable-component-update", "--disable-sync", "--disable-quic"],
  });
}
