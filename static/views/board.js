// The market board: every player with live price, change since the day's
// open, a sparkline, a flash on each tick and a lock badge with countdown.

import { h, replace, setText, flashingNumber } from "../lib/dom.js";
import { money, percentChange, direction, secondsUntil, countdown } from "../lib/format.js";
import { market } from "../lib/market.js";

const SPARK_WIDTH = 100;
const SPARK_HEIGHT = 30;
// History requests in flight at once while sparklines fill in.
const SPARK_CONCURRENCY = 4;

export function mount(main) {
  document.title = "Market · Matchday";
  const search = h("input", {
    type: "search", id: "board-search", placeholder: "Search players", autocomplete: "off",
  });
  const team = h("select", { id: "board-team" }, h("option", { value: "" }, "All teams"));
  const sort = h("select", { id: "board-sort" },
    h("option", { value: "team" }, "By team"),
    h("option", { value: "movers" }, "Biggest movers"),
    h("option", { value: "price" }, "Highest price"));
  const list = h("ul", { class: "board", id: "board", "aria-label": "Players" });
  const status = h("p", { class: "notice", role: "status" }, "Loading players…");
  replace(main,
    h("h1", {}, "Market"),
    h("div", { class: "board-tools" },
      h("div", { class: "field" }, h("label", { for: "board-search", class: "visually-hidden" }, "Search players"), search),
      h("div", { class: "field" }, h("label", { for: "board-team", class: "visually-hidden" }, "Team"), team),
      h("div", { class: "field" }, h("label", { for: "board-sort", class: "visually-hidden" }, "Sort"), sort)),
    status,
    list);

  const rows = new Map();

  function buildRow(player) {
    const price = flashingNumber({ class: "price" });
    const change = h("span", { class: "change num" });
    const badge = h("span", { class: "badge", hidden: true });
    const polyline = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
    polyline.setAttribute("fill", "none");
    polyline.setAttribute("stroke-width", "2");
    polyline.setAttribute("vector-effect", "non-scaling-stroke");
    const spark = document.createElementNS("http://www.w3.org/2000/svg", "svg");
    spark.setAttribute("class", "spark");
    spark.setAttribute("viewBox", `0 0 ${SPARK_WIDTH} ${SPARK_HEIGHT}`);
    spark.setAttribute("preserveAspectRatio", "none");
    spark.setAttribute("aria-hidden", "true");
    spark.append(polyline);
    const link = h("a", { class: "board-row", href: `/players/${player.id}`, "data-link": true, "data-player-id": player.id },
      h("span", { class: "name" }, player.name),
      h("span", { class: "meta" }, h("span", { class: "team" }, `${player.team} · ${player.position}`), badge),
      spark, price.element, change);
    const row = { item: h("li", {}, link), link, price, change, badge, polyline };
    rows.set(player.id, row);
    updatePrice(player, row);
    updateBadge(player, row);
    drawSpark(player, row);
    return row;
  }

  function updatePrice(player, row) {
    row.price.set(money(player.price_cents));
    const delta = player.price_cents - player.open_price_cents;
    setText(row.change, `${percentChange(player.open_price_cents, player.price_cents)}`);
    row.change.className = `change num ${direction(delta)}`;
  }

  function updateBadge(player, row) {
    const locked = market.isLocked(player);
    row.badge.hidden = !locked;
    if (locked) setText(row.badge, `Locked ${countdown(secondsUntil(player.locked_until_ms))}`);
  }

  function drawSpark(player, row) {
    const points = player.spark ?? [];
    if (points.length < 2) {
      row.polyline.setAttribute("points", "");
      return;
    }
    let low = Infinity;
    let high = -Infinity;
    for (const p of points) {
      low = Math.min(low, p.price);
      high = Math.max(high, p.price);
    }
    const span = Math.max(1, high - low);
    const step = SPARK_WIDTH / (points.length - 1);
    const coords = points.map((p, i) =>
      `${(i * step).toFixed(1)},${(SPARK_HEIGHT - 2 - ((p.price - low) / span) * (SPARK_HEIGHT - 4)).toFixed(1)}`);
    row.polyline.setAttribute("points", coords.join(" "));
    const trend = points.at(-1).price - points[0].price;
    row.polyline.setAttribute("stroke", trend < 0 ? "var(--down)" : trend > 0 ? "var(--up)" : "var(--muted)");
  }

  function render() {
    const query = search.value.trim().toLowerCase();
    const teamFilter = team.value;
    const byName = (a, b) => a.team.localeCompare(b.team) || a.name.localeCompare(b.name);
    const move = (p) => Math.abs(p.price_cents - p.open_price_cents) / Math.max(1, p.open_price_cents);
    const order = {
      team: byName,
      movers: (a, b) => move(b) - move(a) || byName(a, b),
      price: (a, b) => b.price_cents - a.price_cents || byName(a, b),
    }[sort.value] ?? byName;
    // The order is taken when the list is drawn (filter, sort, new players),
    // never on a tick: rows do not jump under a finger.
    const players = market.list().sort(order);
    const teams = [...new Set(players.map((p) => p.team))].sort();
    if (team.options.length !== teams.length + 1) {
      const chosen = team.value;
      replace(team, h("option", { value: "" }, "All teams"), teams.map((t) => h("option", { value: t }, t)));
      team.value = teams.includes(chosen) ? chosen : "";
    }
    const shown = players.filter((p) =>
      (!teamFilter || p.team === teamFilter) && (!query || p.name.toLowerCase().includes(query)));
    replace(list, shown.map((p) => (rows.get(p.id) ?? buildRow(p)).item));
    status.textContent = players.length === 0 ? "No players listed yet."
      : shown.length === 0 ? "No player matches." : "";
    status.hidden = status.textContent === "";
    fillSparks(shown);
  }

  let sparkQueue = [];
  let sparkRunning = 0;
  function fillSparks(players) {
    sparkQueue = players.filter((p) => !p.spark);
    while (sparkRunning < SPARK_CONCURRENCY && sparkQueue.length) nextSpark();
  }
  function nextSpark() {
    const player = sparkQueue.shift();
    if (!player) return;
    sparkRunning += 1;
    market.loadSpark(player).finally(() => {
      sparkRunning -= 1;
      if (!stopped) nextSpark();
    });
  }

  // Ticks arrive in bursts (one socket message carries many players): rows
  // are updated once per animation frame, and sparklines, whose shape a
  // single tick barely changes, at most once a second.
  const dirty = new Map(); // id → price shown before this frame's ticks
  const sparksDirty = new Set();
  let frame = 0;
  function drawFrame() {
    frame = 0;
    for (const [id, shown] of dirty) {
      const player = market.player(id);
      const row = rows.get(id);
      if (!player || !row) continue;
      updatePrice(player, row);
      if (shown !== null && player.price_cents !== shown) {
        row.price.flash(player.price_cents > shown ? "up" : "down");
      }
      sparksDirty.add(id);
    }
    dirty.clear();
  }
  const onPrice = (event) => {
    const { id, previous, source } = event.detail;
    if (!rows.has(id)) return;
    // A snapshot (after a reconnect) corrects the price without a flash.
    if (!dirty.has(id)) dirty.set(id, source === "snapshot" ? null : previous);
    frame ||= requestAnimationFrame(drawFrame);
  };
  const onSpark = (event) => {
    const player = market.player(event.detail.id);
    const row = rows.get(event.detail.id);
    if (player && row) drawSpark(player, row);
  };
  const onLock = (event) => {
    const player = market.player(event.detail.id);
    const row = rows.get(event.detail.id);
    if (player && row) updateBadge(player, row);
  };
  market.addEventListener("price", onPrice);
  market.addEventListener("spark", onSpark);
  market.addEventListener("lock", onLock);
  market.addEventListener("players", render);
  search.addEventListener("input", render);
  team.addEventListener("change", render);
  sort.addEventListener("change", render);
  const timer = setInterval(() => {
    for (const [id, row] of rows) {
      const player = market.player(id);
      if (player) updateBadge(player, row);
    }
    for (const id of sparksDirty) {
      const player = market.player(id);
      const row = rows.get(id);
      if (player && row) drawSpark(player, row);
    }
    sparksDirty.clear();
  }, 1000);
  let stopped = false;

  if (market.players.size) render();
  market.load().then(render).catch(() => {
    status.hidden = false;
    status.textContent = "Could not load players. Retrying…";
    setTimeout(() => !stopped && market.load().then(render).catch(() => {}), 3000);
  });

  return () => {
    stopped = true;
    clearInterval(timer);
    cancelAnimationFrame(frame);
    market.removeEventListener("price", onPrice);
    market.removeEventListener("spark", onSpark);
    market.removeEventListener("lock", onLock);
    market.removeEventListener("players", render);
  };
}
