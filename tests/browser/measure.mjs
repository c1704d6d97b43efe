// Measures what a phone user of a running Matchday gets from the board:
//   node tests/browser/measure.mjs [http://127.0.0.1:8080] [seconds]
// - bytes and requests of the first load (as sent, i.e. compressed where the
//   server compresses), and time to the first price on screen and to "Live";
// - tick latency: for every price tick the page receives, receipt time minus
//   the tick's ts_ms (when the price engine set it; same machine clock);
// - main-thread cost of keeping the board live: script + layout + style +
//   paint time per second of wall clock, from Chromium's own counters.

import { launchBrowser } from "./harness.mjs";

const base = process.argv[2] ?? "http://127.0.0.1:8080";
const seconds = Number(process.argv[3] ?? 30);
const browser = await launchBrowser();
const percentile = (sorted, p) => sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
try {
  const context = await browser.newContext({
    viewport: { width: 390, height: 844 }, deviceScaleFactor: 2, isMobile: true, hasTouch: true,
    reducedMotion: process.env.REDUCED_MOTION ? "reduce" : "no-preference",
  });
  const page = await context.newPage();
  let bytes = 0;
  let requests = 0;
  page.on("requestfinished", async (request) => {
    requests += 1;
    const sizes = await request.sizes().catch(() => null);
    if (sizes) bytes += sizes.responseBodySize + sizes.responseHeadersSize;
  });
  const lags = [];
  page.on("websocket", (ws) => ws.on("framereceived", ({ payload }) => {
    const now = Date.now();
    try {
      const message = JSON.parse(payload);
      if (message.type === "prices") for (const tick of message.ticks) lags.push(now - tick.ts_ms);
    } catch {
      // Not JSON: not ours to measure.
    }
  }));
  const started = Date.now();
  await page.goto(base);
  await page.locator(".board-row .price").first().waitFor();
  const firstPrice = Date.now() - started;
  await page.locator('#connection[data-state="live"]').waitFor();
  const live = Date.now() - started;
  await page.waitForTimeout(3000);
  const firstLoad = { bytes, requests };

  const cdp = await context.newCDPSession(page);
  await cdp.send("Performance.enable");
  const metrics = async () => Object.fromEntries((await cdp.send("Performance.getMetrics")).metrics.map((m) => [m.name, m.value]));
  lags.length = 0;
  const before = await metrics();
  await page.waitForTimeout(seconds * 1000);
  const after = await metrics();
  const busy = ["ScriptDuration", "LayoutDuration", "RecalcStyleDuration"]
    .map((name) => after[name] - before[name]).reduce((a, b) => a + b, 0);
  const task = after.TaskDuration - before.TaskDuration;
  lags.sort((a, b) => a - b);
  const rows = await page.locator(".board-row").count();
  console.log(JSON.stringify({
    url: base,
    rows,
    first_load_kib: Math.round(firstLoad.bytes / 102.4) / 10,
    first_load_requests: firstLoad.requests,
    first_price_ms: firstPrice,
    live_ms: live,
    window_s: seconds,
    ticks: lags.length,
    tick_lag_ms: { p50: percentile(lags, 50), p99: percentile(lags, 99), max: lags.at(-1) },
    main_thread_ms_per_s: {
      script_layout_style: Math.round((busy * 1000) / seconds * 10) / 10,
      all_tasks: Math.round((task * 1000) / seconds * 10) / 10,
    },
  }, null, 2));
} finally {
  await browser.close();
}
