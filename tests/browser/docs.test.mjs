// The API reference page (/api/v1/docs) in headless Chromium against the
// real binary: Swagger UI, served from the binary under its content
// security policy, draws every operation of the server's own document.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { Matchday, launchBrowser, ARTIFACTS } from "./harness.mjs";

let app;
let browser;
let page;
const problems = [];

before(async () => {
  app = await Matchday.start();
  browser = await launchBrowser();
  page = await (await browser.newContext()).newPage();
  page.on("pageerror", (error) => problems.push(`page error: ${error.message}`));
  page.on("console", (message) => {
    if (message.type() === "error") problems.push(`console: ${message.text()}`);
  });
  page.on("requestfailed", (request) => problems.push(`request failed: ${request.url()}`));
});

after(async () => {
  await browser?.close();
  await app?.shutdown();
});

test("the reference page lists every operation with its error codes, loading nothing from elsewhere", async () => {
  try {
    const requested = [];
    page.on("request", (request) => requested.push(request.url()));
    await page.goto(`${app.base}/api/v1/docs`);
    const document = await (await fetch(`${app.base}/api/v1/openapi.json`)).json();
    const operations = Object.values(document.paths).flatMap((item) => Object.keys(item)).length;
    await page.waitForFunction(
      (count) => document.querySelectorAll(".opblock").length >= count,
      operations,
      { timeout: 20000 },
    );
    assert.equal(await page.locator(".opblock").count(), operations);
    assert.match(await page.locator(".info .title").innerText(), /Matchday/);

    // One operation opened: its documented error codes are on the page.
    await page.locator("#operations-trading-place_order .opblock-summary").click();
    const order = page.locator("#operations-trading-place_order");
    await order.locator(".responses-table").first().waitFor();
    const text = await order.innerText();
    for (const expected of ["Idempotency-Key", "insufficient_funds", "player_locked", "423", "Retry-After"]) {
      assert.ok(text.includes(expected), `place_order shows ${expected}`);
    }
    // The WebSocket protocol is on the page too.
    assert.ok((await page.content()).includes("WsServerMessage"));

    const foreign = requested.filter((url) => !url.startsWith(app.base) && !url.startsWith("data:"));
    assert.deepEqual(foreign, [], "nothing is fetched from another origin");
    assert.deepEqual(problems, [], "no script errors, CSP violations or failed requests");
  } catch (error) {
    const file = join(ARTIFACTS, "api-docs.png");
    await page?.screenshot({ path: file, fullPage: true }).catch(() => {});
    console.error(`screenshot: ${file}`);
    throw error;
  }
});
