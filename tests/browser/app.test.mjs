// The SPA in headless Chromium against the real binary, Postgres and Redis:
// what a user on a phone does during a match. Each test leaves a screenshot
// in tests/browser/artifacts/ when it fails.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { join } from "node:path";
import { Matchday, launchBrowser, money, sleep, ARTIFACTS } from "./harness.mjs";

const require = createRequire(import.meta.url);
const AXE_SOURCE = readFileSync(require.resolve("axe-core/axe.min.js"), "utf8");
const PHONE = { viewport: { width: 390, height: 844 }, deviceScaleFactor: 2, isMobile: true, hasTouch: true };
const STARTING_CASH = 1000000;
const PASSWORD = "correct horse battery";

let app;
let browser;
let context;
let page;
let players;
const username = `fan_${Date.now().toString(36)}`;

before(async () => {
  app = await Matchday.start();
  players = {
    striker: await app.createPlayer("Ada Striker", "Red Rovers", 1500),
    keeper: await app.createPlayer("Bo Keeper", "Red Rovers", 1200),
    winger: await app.createPlayer("Cy Winger", "Blue City", 900),
  };
  browser = await launchBrowser();
  context = await browser.newContext(PHONE);
  page = await context.newPage();
  page.on("pageerror", (error) => console.error("page error:", error));
});

after(async () => {
  await browser?.close();
  await app?.shutdown();
});

/** Runs a test body; on failure saves a full-page screenshot first. */
function scenario(name, body) {
  test(name, async () => {
    try {
      await body();
    } catch (error) {
      const file = join(ARTIFACTS, `${name.replace(/[^a-z0-9]+/gi, "-")}.png`);
      await page?.screenshot({ path: file, fullPage: true }).catch(() => {});
      console.error(`screenshot: ${file}`);
      throw error;
    }
  });
}

async function token() {
  return page.evaluate(() => JSON.parse(localStorage.getItem("matchday.session"))?.token);
}

async function expectLive() {
  await page.locator('#connection[data-state="live"]').waitFor({ timeout: 20000 });
}

function boardRow(player) {
  return page.locator(`.board-row[data-player-id="${player.id}"]`);
}

/**
 * Lets the first POST to `url` reach the server and execute, then drops its
 * answer on the way back, as a flaky mobile network does.
 */
async function loseFirstAnswer(url) {
  let lost = false;
  await page.route(url, async (route) => {
    if (route.request().method() === "POST" && !lost) {
      lost = true;
      await route.fetch();
      await route.abort("connectionreset");
      return;
    }
    await route.continue();
  });
}

async function axeSeriousViolations() {
  await page.addScriptTag({ content: AXE_SOURCE }).catch(() => {});
  // The CSP forbids inline scripts; evaluate the library in the page instead.
  const hasAxe = await page.evaluate(() => typeof window.axe !== "undefined");
  if (!hasAxe) await page.evaluate(AXE_SOURCE);
  const results = await page.evaluate(async () => window.axe.run(document, { resultTypes: ["violations"] }));
  return results.violations
    .filter((v) => v.impact === "serious" || v.impact === "critical")
    .map((v) => `${v.id} (${v.impact}): ${v.help} — ${v.nodes.map((n) => n.target.join(" ")).slice(0, 3).join(", ")}`);
}

scenario("a new user signs up and lands on the live board", async () => {
  await page.goto(`${app.base}/signup`);
  await page.getByLabel("Username").fill(username);
  await page.getByLabel("Password").fill(PASSWORD);
  await page.getByRole("button", { name: "Create account" }).click();
  await page.waitForURL(`${app.base}/`);
  await page.locator("#account").getByText(username).waitFor();
  await page.locator("#account-cash").getByText(money(STARTING_CASH)).waitFor();
  await boardRow(players.striker).waitFor();
  assert.equal(await boardRow(players.striker).locator(".name").textContent(), "Ada Striker");
  await expectLive();
});

scenario("a price on the board changes after an event is pushed through the admin API", async () => {
  await page.goto(`${app.base}/`);
  await expectLive();
  const row = boardRow(players.striker);
  await row.waitFor();
  const event = await app.pushEvent(players.striker.id, "goal");
  assert.ok(event.applied);
  // A locked player does not tick, so the board shows exactly the event's price.
  await row.locator(".price").getByText(money(event.price_cents), { exact: true }).waitFor({ timeout: 5000 });
  await row.locator(".badge").getByText(/^Locked \d:\d\d$/).waitFor();
  // A goal moves the price up: the row flashed green.
  await row.locator(".flash-layer.up").waitFor({ state: "attached" });
  await page.locator(".ticker-list").getByText("Goal").first().waitFor();
  assert.match(await page.locator(".ticker-list li").first().textContent(), /Ada Striker/);
});

scenario("events applied before the page opened are in the ticker and on the player's page", async () => {
  await page.goto(`${app.base}/`);
  await page.locator(".ticker-list li").first().waitFor();
  assert.match(await page.locator(".ticker-list li").first().textContent(), /Goal Ada Striker \$[\d,.]+$/);
  await page.goto(`${app.base}/players/${players.striker.id}`);
  await page.locator(".events li").getByText(/Goal$/).waitFor();
});

scenario("the board's search and team filter narrow the list", async () => {
  await page.goto(`${app.base}/`);
  await boardRow(players.winger).waitFor();
  await page.getByLabel("Search players").fill("ada");
  await page.locator(".board-row").nth(1).waitFor({ state: "detached" });
  assert.deepEqual(await page.locator(".board-row .name").allTextContents(), ["Ada Striker"]);
  await page.getByLabel("Search players").fill("");
  await page.locator("#board-team").selectOption("Blue City");
  await page.locator(`.board-row[data-player-id="${players.striker.id}"]`).waitFor({ state: "detached" });
  assert.deepEqual(await page.locator(".board-row .name").allTextContents(), ["Cy Winger"]);
  await page.locator("#board-team").selectOption("");
});

scenario("a locked player's ticket refuses with the lock message", async () => {
  await page.goto(`${app.base}/players/${players.striker.id}`);
  const notice = page.locator(`#ticket-${players.striker.id}-lock`);
  await notice.getByText(/Trading on Ada Striker is locked after a match event\. It reopens in \d+ s\./).waitFor();
  assert.ok(await page.locator(`#ticket-${players.striker.id}-submit`).isDisabled());
});

scenario("the server refuses a fill on a player locked since the page loaded, with the lock message", async () => {
  // The socket goes through a relay that can hold back the server's news,
  // as on a slow phone network: the ticket still thinks the player is open,
  // the server knows better.
  let holdBack = false;
  const mainPage = page;
  page = await context.newPage();
  await page.routeWebSocket(/\/ws/, (ws) => {
    const server = ws.connectToServer();
    ws.onMessage((message) => server.send(message));
    server.onMessage((message) => { if (!holdBack) ws.send(message); });
  });
  await page.goto(`${app.base}/players/${players.keeper.id}`);
  await expectLive();
  const submit = page.locator(`#ticket-${players.keeper.id}-submit`);
  await page.locator("#account-cash").waitFor();
  assert.ok(await submit.isEnabled());
  holdBack = true;
  const event = await app.pushEvent(players.keeper.id, "yellow_card");
  assert.ok(event.applied);
  await submit.click();
  await page.locator(`#ticket-${players.keeper.id}-message`)
    .getByText(/^Trading on Bo Keeper is locked after a match event\. It reopens in \d+ s\.$/).waitFor();
  // The refusal also locks the ticket until the server's retry_after_ms.
  await page.locator(`#ticket-${players.keeper.id}-lock`).getByText(/locked after a match event/).waitFor();
  assert.ok(await submit.isDisabled());
  const orders = await app.call("GET", "/orders", { token: await token(), status: 200 });
  assert.equal(orders.length, 0, "nothing filled");
  await page.close();
  page = mainPage;
});

scenario("a buy from the ticket shows up in the portfolio with the new cash, and a retried tap fills once", async () => {
  await page.goto(`${app.base}/players/${players.winger.id}`);
  await expectLive();
  const quantity = page.locator(`#ticket-${players.winger.id}-qty`);
  await quantity.fill("3");
  // The first answer is lost on the way back (the server did fill it): the
  // user taps again, the ticket resends the same idempotency key, and the
  // server answers with the same order instead of filling a second one.
  await loseFirstAnswer("**/api/v1/orders");
  const submit = page.locator(`#ticket-${players.winger.id}-submit`);
  await submit.click();
  await page.locator(`#ticket-${players.winger.id}-message`).getByText(/retry safely/).waitFor();
  await submit.click();
  const message = page.locator(`#ticket-${players.winger.id}-message`);
  // The harness runs void_window (the recommended policy): the fill is provisional.
  await message.getByText(/^Bought 3 × Cy Winger at \$[\d,.]+, total \$[\d,.]+\. Cash now \$[\d,.]+\. Provisional until .+: voided if a match event turns out to have happened before it\.$/).waitFor();
  await page.unrouteAll();

  const orders = await app.call("GET", "/orders", { token: await token(), status: 200 });
  assert.equal(orders.length, 1, "one fill for two taps");
  const order = orders[0];
  assert.equal(order.quantity, 3);
  assert.match(await message.textContent(), new RegExp(`Cash now ${money(order.balance_cents).replace(/[$.]/g, "\\$&")}`));

  // The header's spendable cash follows the fill.
  await page.locator("#account-cash").getByText(money(order.balance_cents), { exact: true }).waitFor({ timeout: 5000 });

  await page.getByRole("link", { name: "Portfolio" }).click();
  await page.waitForURL(`${app.base}/portfolio`);
  await page.locator("#cash").getByText(money(STARTING_CASH - order.total_cents), { exact: true }).waitFor();
  const holding = page.locator(`#holdings tr[data-player-id="${players.winger.id}"]`);
  await holding.waitFor();
  assert.equal(await holding.locator("td").nth(1).textContent(), "3");
  assert.equal(await holding.locator("td").nth(2).textContent(), money(order.price_cents));
  await page.locator("#orders").getByText("Cy Winger").waitFor();
  assert.equal(order.status, "provisional");
  await page.locator("#orders").getByText("provisional", { exact: true }).waitFor();
});

scenario("a drop purchase goes from reserved to completed, once however often it is retried", async () => {
  const rookie = await app.createPlayer("Dee Rookie", "Blue City", 500);
  const sale = await app.admin("POST", "/admin/sales", {
    player_id: rookie.id, name: "Rookie drop", total_units: 50, unit_price_cents: 400, max_per_user: 60,
  }, 201);
  await page.getByRole("link", { name: "Drops" }).click();
  await page.waitForURL(`${app.base}/drops`);
  const card = page.locator(`#sale-${sale.sale_id}`);
  await card.getByRole("heading", { name: "Rookie drop" }).waitFor();
  const buy = card.getByRole("button", { name: "Buy" });
  // More than is left is refused whole (no partial fills), and the drop
  // stays open for a smaller quantity.
  await card.getByLabel("Quantity").fill("60");
  await buy.click();
  await page.locator(`#sale-${sale.sale_id}-message`).getByText(/^Sold out: not enough units left/).waitFor();
  await page.locator(`#sale-${sale.sale_id}-when`).getByText("Open now").waitFor();
  assert.ok(await buy.isEnabled());
  assert.ok(await card.getByRole("button", { name: "Join waitlist" }).isHidden(), "no waitlist while units remain");
  // The 202 is lost on the way back; pressing again resends the same key.
  await loseFirstAnswer(`**/api/v1/sales/${sale.sale_id}/purchases`);
  await card.getByLabel("Quantity").fill("2");
  await buy.click();
  // The page says the answer was lost, unless the purchase's own update on
  // the user channel (settlement takes milliseconds here) has already
  // replaced that message with the outcome. Pressing again while it says
  // so resends the same key: still one purchase.
  const message = page.locator(`#sale-${sale.sale_id}-message`);
  const lost = message.getByText(/retry safely|could not be reached/);
  await message.getByText(/retry safely|could not be reached|completed/).waitFor();
  if (await lost.isVisible()) await buy.click();
  await card.locator('[data-status="completed"]').waitFor({ timeout: 20000 });
  await page.unrouteAll();
  await page.locator(`#sale-${sale.sale_id}-remaining`).getByText("48", { exact: true }).waitFor({ timeout: 10000 });
  const purchases = await app.call("GET", `/sales/${sale.sale_id}/purchases`, { token: await token(), status: 200 });
  assert.equal(purchases.length, 1);
  assert.equal(purchases[0].status, "completed");
  assert.equal(purchases[0].quantity, 2);
});

scenario("a scheduled drop counts down, opens, sells out and offers the waitlist", async () => {
  const star = await app.createPlayer("Eve Star", "Red Rovers", 800);
  const startsAt = new Date(Date.now() + 6000).toISOString();
  const sale = await app.admin("POST", "/admin/sales", {
    player_id: star.id, name: "Star drop", total_units: 1, unit_price_cents: 300, starts_at: startsAt,
  }, 201);
  await page.goto(`${app.base}/drops`);
  const card = page.locator(`#sale-${sale.sale_id}`);
  const buy = card.getByRole("button", { name: "Buy" });
  await page.locator(`#sale-${sale.sale_id}-when`).getByText(/^Opens in 0:0\d$/).waitFor();
  assert.ok(await buy.isDisabled(), "no buying before starts_at");
  await page.locator(`#sale-${sale.sale_id}-when`).getByText("Open now").waitFor({ timeout: 10000 });
  // Someone else takes the only unit; the card hears it on the sale channel.
  const [rival] = (await app.admin("POST", "/admin/users/bulk", { count: 1, prefix: "quick_" }, 201)).users;
  await app.call("POST", `/sales/${sale.sale_id}/purchases`, {
    body: { quantity: 1 }, token: rival.token, headers: { "idempotency-key": "quick-1" }, status: 202,
  });
  await page.locator(`#sale-${sale.sale_id}-remaining`).getByText("0", { exact: true }).waitFor({ timeout: 10000 });
  await page.locator(`#sale-${sale.sale_id}-when`).getByText(/^Sold out/).waitFor();
  assert.ok(await buy.isDisabled());
  await card.getByRole("button", { name: "Join waitlist" }).click();
  await page.locator(`#sale-${sale.sale_id}-message`).getByText("You are number 1 on the waitlist.", { exact: false }).waitFor();
});

scenario("the leaderboard lists the user and pins their rank", async () => {
  await app.admin("POST", "/admin/users/bulk", { count: 5, prefix: "rival_", balance_cents: 500000 }, 201);
  await page.getByRole("link", { name: "Leaders" }).click();
  await page.waitForURL(`${app.base}/leaderboard`);
  await page.locator("#leaderboard").getByText(`${username} (you)`).waitFor({ timeout: 10000 });
  await page.locator("#my-rank").getByText(/^You \(.+\): #\d+ of \d+, net worth \$[\d,.]+$/).waitFor({ timeout: 10000 });
  // The rivals are ranked at once; the board re-reads the ranking every few seconds.
  await page.locator("#leaderboard tbody tr").nth(5).waitFor({ timeout: 10000 });
  const names = await page.locator("#leaderboard tbody tr td:nth-child(2)").allTextContents();
  assert.ok(names.filter((name) => name.startsWith("rival_")).length === 5, names.join(", "));
  const ranks = await page.locator("#leaderboard tbody tr td:nth-child(1)").allTextContents();
  assert.deepEqual(ranks, ranks.map((_, i) => String(i + 1)), "ranks are 1…n in order");
});

scenario("a server restart is survived by reconnecting, resubscribing and taking the snapshot", async () => {
  await page.goto(`${app.base}/`);
  await expectLive();
  await app.stop();
  await page.locator('#connection:not([data-state="live"])').waitFor({ timeout: 10000 });
  await app.boot();
  await expectLive();
  // Prices pushed after the restart reach the board: the socket subscribed again.
  const event = await app.pushEvent(players.winger.id, "assist");
  await boardRow(players.winger).locator(".price").getByText(money(event.price_cents), { exact: true }).waitFor({ timeout: 10000 });
  // And the board agrees with the server for every player.
  for (const player of await app.call("GET", "/players", { status: 200 })) {
    if (player.locked_until && Date.parse(player.locked_until) > Date.now()) {
      assert.equal(await boardRow(player).locator(".price").textContent(), money(player.price_cents));
    }
  }
});

scenario("the main screens have no serious accessibility violations", async () => {
  const screens = ["/", `/players/${players.winger.id}`, "/portfolio", "/leaderboard", "/drops", "/login", "/signup"];
  const found = [];
  for (const path of screens) {
    await page.goto(`${app.base}${path}`);
    await page.locator("main h1").first().waitFor();
    await sleep(300);
    for (const violation of await axeSeriousViolations()) found.push(`${path}: ${violation}`);
  }
  assert.deepEqual(found, []);
});

scenario("static assets are versioned and cached, and app routes fall back to the app", async () => {
  const index = await fetch(`${app.base}/portfolio`, { headers: { accept: "text/html" } });
  assert.equal(index.status, 200);
  assert.equal(index.headers.get("cache-control"), "no-cache");
  const html = await index.text();
  const script = /src="(\/assets\/[0-9a-f]{12}\/app\.js)"/.exec(html)?.[1];
  assert.ok(script, "index.html names a versioned app.js");
  const asset = await fetch(`${app.base}${script}`);
  assert.equal(asset.status, 200);
  assert.match(asset.headers.get("content-type"), /javascript/);
  assert.match(asset.headers.get("cache-control"), /immutable/);
  const api = await fetch(`${app.base}/api/v1/nope`, { headers: { accept: "text/html" } });
  assert.equal(api.status, 404);
  assert.equal((await api.json()).error.code, "not_found");
});
