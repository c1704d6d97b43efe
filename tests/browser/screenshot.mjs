// Saves a picture of a running Matchday's market board, as a phone shows it:
//   node tests/browser/screenshot.mjs [http://127.0.0.1:8080] [docs/board.png]
// (the README's picture is taken this way from scripts/run).

import { launchBrowser, ROOT } from "./harness.mjs";
import { resolve } from "node:path";

const base = process.argv[2] ?? "http://127.0.0.1:8080";
const out = resolve(ROOT, process.argv[3] ?? "docs/board.png");
const browser = await launchBrowser();
try {
  const context = await browser.newContext({
    viewport: { width: 390, height: 760 }, deviceScaleFactor: 2, isMobile: true, hasTouch: true,
  });
  const page = await context.newPage();
  await page.goto(base);
  await page.locator('#connection[data-state="live"]').waitFor({ timeout: 20000 });
  await page.locator(".board-row").first().waitFor();
  // Let sparklines fill in and a few ticks flash.
  await page.waitForTimeout(Number(process.env.SETTLE_MS ?? 8000));
  await page.screenshot({ path: out });
  console.log(`saved ${out}`);
} finally {
  await browser.close();
}
