// A player's page: live chart (history, then the socket), recent events from
// this session, the holding, and the trade ticket.

import { h, replace, setText, flashingNumber } from "../lib/dom.js";
import { money, percentChange, direction, secondsUntil, countdown, eventKind, clock } from "../lib/format.js";
import { get, ApiError } from "../lib/api.js";
import { market } from "../lib/market.js";
import { session } from "../lib/session.js";
import { socket } from "../lib/socket.js";
import { createTicket } from "./ticket.js";

const HISTORY_POINTS = 1000;
const EVENTS_SHOWN = 20;

export function mount(main, params) {
  const id = Number(params[0]);
  let stopped = false;
  let cleanup = () => {};
  replace(main, h("p", { class: "notice", role: "status" }, "Loading player…"));
  market.load().then(() => {
    if (stopped) return;
    const player = market.player(id);
    if (!player) {
      document.title = "Not found · Matchday";
      replace(main, h("h1", {}, "Player not found"), h("p", {}, h("a", { href: "/", "data-link": true }, "Back to the market")));
      return;
    }
    cleanup = show(main, player);
  }).catch(() => {
    if (stopped) return;
    replace(main, h("p", { class: "message error" }, "Could not load the player. Check your connection and reload."));
  });
  return () => {
    stopped = true;
    cleanup();
  };
}

function show(main, player) {
  document.title = `${player.name} · Matchday`;
  const price = flashingNumber({ class: "price", id: "player-price" });
  const change = h("span", { class: "num" });
  const badge = h("span", { class: "badge", hidden: true });
  const chartBox = h("div", { class: "chart" });
  const events = h("ul", { class: "events", "aria-label": "Recent events" });
  const position = h("p", { class: "muted", id: "player-position" });
  let holding = null; // { quantity, spendable_cents }

  const ticket = createTicket(player, {
    onFilled: () => loadHolding(),
    holdings: () => holding,
  });

  replace(main,
    h("p", {}, h("a", { href: "/", "data-link": true }, "← Market")),
    h("div", { class: "player-head" },
      h("h1", {}, player.name),
      h("span", { class: "muted" }, `${player.team} · ${player.position}`),
      price.element, change, badge),
    // On a phone: chart, ticket, events, position; wider: two columns.
    h("div", { class: "two-col" },
      h("section", { class: "panel", "aria-label": `${player.name} price chart` }, chartBox),
      ticket.element,
      h("section", { class: "panel" }, h("h2", {}, "Recent events"), events),
      h("section", { class: "panel" }, h("h2", {}, "Your position"), position)));

  function updateHead() {
    price.set(money(player.price_cents));
    setText(change, `${percentChange(player.open_price_cents, player.price_cents)} today`);
    change.className = `num ${direction(player.price_cents - player.open_price_cents)}`;
    const locked = market.isLocked(player);
    badge.hidden = !locked;
    if (locked) setText(badge, `Locked ${countdown(secondsUntil(player.locked_until_ms))}`);
  }

  // Events applied before the page opened, then the live ones.
  let earlier = [];
  get(`/players/${player.id}/events?limit=${EVENTS_SHOWN}`, { auth: false }).then((events) => {
    earlier = events;
    renderEvents();
  }).catch(() => {});

  function renderEvents() {
    const seen = new Set();
    const mine = [...market.events.filter((e) => e.player_id === player.id), ...earlier]
      .filter((e) => !seen.has(e.event_id) && seen.add(e.event_id))
      .sort((a, b) => (b.ts_ms ?? b.received_ms) - (a.ts_ms ?? a.received_ms))
      .slice(0, EVENTS_SHOWN);
    replace(events, mine.length === 0
      ? h("li", { class: "muted" }, "No match events for this player yet.")
      : mine.map((e) => h("li", {},
        h("span", {}, `${e.minute ? `${e.minute}'` : clock(e.ts_ms ?? e.received_ms)} ${eventKind(e.kind)}${e.correction ? " (correction)" : ""}${e.reverted ? " (withdrawn)" : ""}`),
        h("span", { class: "num" }, money(e.price_cents)))));
  }

  async function loadHolding() {
    if (!session.token) {
      holding = null;
      setText(position, "Sign in to trade and see your position.");
      ticket.refresh();
      return;
    }
    try {
      const [portfolio, me] = await Promise.all([get("/portfolio"), get("/me")]);
      const row = portfolio.holdings.find((item) => item.player_id === player.id);
      holding = { quantity: row?.quantity ?? 0, spendable_cents: me.balance_cents - me.held_cents };
      setText(position, row
        ? `${row.quantity} share${row.quantity === 1 ? "" : "s"}, average cost ${money(row.avg_cost_cents)}`
        : "You hold no shares of this player.");
    } catch (error) {
      if (!(error instanceof ApiError)) throw error;
      setText(position, "Could not load your position.");
    }
    ticket.refresh();
  }

  // The chart library loads only when a player page opens, so the board
  // stays light. Prices are dollars for display only; money stays in cents.
  let chart = null;
  let series = null;
  let lastTime = 0;
  let historyLoaded = false;
  let destroyed = false;
  const pending = [];
  function plot(ms, cents) {
    const time = Math.floor(ms / 1000);
    if (!series || time < lastTime) return;
    lastTime = time;
    series.update({ time, value: cents / 100 });
  }
  (async () => {
    const charts = await import("../vendor/lightweight-charts.standalone.production.mjs");
    if (destroyed) return;
    chart = charts.createChart(chartBox, {
      autoSize: true,
      layout: { background: { color: "transparent" }, textColor: "#a3b1bf" },
      grid: { vertLines: { color: "#1f2933" }, horzLines: { color: "#1f2933" } },
      timeScale: { timeVisible: true, secondsVisible: true },
      rightPriceScale: { borderColor: "#2e3b48" },
    });
    series = chart.addSeries(charts.AreaSeries, {
      lineColor: "#5cb8ff", topColor: "rgba(92,184,255,0.35)", bottomColor: "rgba(92,184,255,0.02)",
      lineWidth: 2, priceFormat: { type: "price", precision: 2, minMove: 0.01 },
    });
    const points = await get(`/players/${player.id}/history?limit=${HISTORY_POINTS}`, { auth: false });
    if (destroyed) return;
    const data = [];
    for (const point of points) {
      const time = Math.floor(Date.parse(point.ts) / 1000);
      if (data.length && data.at(-1).time === time) data.at(-1).value = point.price_cents / 100;
      else if (!data.length || time > data.at(-1).time) data.push({ time, value: point.price_cents / 100 });
    }
    series.setData(data);
    lastTime = data.at(-1)?.time ?? 0;
    historyLoaded = true;
    for (const [ms, cents] of pending.splice(0)) plot(ms, cents);
    chart.timeScale().fitContent();
  })().catch(() => {
    historyLoaded = true;
  });

  const onPrice = (event) => {
    if (event.detail.id !== player.id) return;
    const { previous, source, ts } = event.detail;
    updateHead();
    if (source !== "snapshot" && player.price_cents !== previous) {
      price.flash(player.price_cents > previous ? "up" : "down");
    }
    if (historyLoaded) plot(ts, player.price_cents);
    else pending.push([ts, player.price_cents]);
    ticket.refresh();
  };
  const onEvent = (event) => {
    if (event.detail.player_id === player.id) renderEvents();
  };
  const onLock = (event) => {
    if (event.detail.id === player.id) { updateHead(); ticket.refresh(); }
  };
  const onUser = (event) => {
    const type = event.detail.type;
    if (type === "order" || type === "purchase") loadHolding();
  };
  market.addEventListener("price", onPrice);
  market.addEventListener("event", onEvent);
  market.addEventListener("lock", onLock);
  socket.addEventListener("message", onUser);
  session.addEventListener("change", loadHolding);
  const timer = setInterval(updateHead, 1000);
  updateHead();
  renderEvents();
  loadHolding();

  return () => {
    clearInterval(timer);
    ticket.destroy();
    destroyed = true;
    chart?.remove();
    market.removeEventListener("price", onPrice);
    market.removeEventListener("event", onEvent);
    market.removeEventListener("lock", onLock);
    socket.removeEventListener("message", onUser);
    session.removeEventListener("change", loadHolding);
  };
}
