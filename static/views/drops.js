// Drops: each sale with a countdown to its start, live remaining units (the
// sale channel), a buy button, the caller's purchases moving through
// reserved → held → completed (or failed), and the waitlist once sold out.

import { h, replace, setText } from "../lib/dom.js";
import { money, secondsUntil, countdown } from "../lib/format.js";
import { get, post, Intent, describeError, describeAttempt } from "../lib/api.js";
import { market } from "../lib/market.js";
import { session } from "../lib/session.js";
import { socket } from "../lib/socket.js";

const STEPS = ["reserved", "held", "completed"];
const LIST_REFRESH_MS = 10000;
// Purchases still settling are re-read this often, besides the user channel.
const PURCHASE_POLL_MS = 2000;

export function mount(main) {
  document.title = "Drops · Matchday";
  const list = h("div", { class: "drops", id: "drops" });
  const status = h("p", { class: "notice", role: "status" }, "Loading drops…");
  replace(main, h("h1", {}, "Drops"), status, list);

  const cards = new Map(); // sale_id → card
  let stopped = false;

  function buildCard(sale) {
    const id = `sale-${sale.sale_id}`;
    const remaining = h("span", { class: "num", id: `${id}-remaining` });
    const meter = h("span", {});
    const when = h("p", { class: "muted", id: `${id}-when` });
    const quantity = h("input", { type: "number", id: `${id}-qty`, min: 1, step: 1, value: 1, inputmode: "numeric" });
    const buy = h("button", { type: "submit", class: "button buy", id: `${id}-buy` }, "Buy");
    const waitlist = h("button", { type: "button", class: "button", id: `${id}-waitlist`, hidden: true }, "Join waitlist");
    const message = h("p", { class: "message", role: "alert", id: `${id}-message` });
    const purchases = h("ol", { class: "drop-purchases", id: `${id}-purchases`, "aria-label": "Your purchases" });
    const form = h("form", { class: "row", novalidate: true },
      h("div", { class: "field" }, h("label", { for: quantity.id }, "Quantity"), quantity), buy, waitlist);
    const player = market.player(sale.player_id);
    const element = h("article", { class: "panel drop", id, "aria-labelledby": `${id}-title` },
      h("div", { class: "drop-head" },
        h("h2", { id: `${id}-title` }, sale.name),
        h("span", { class: "money" }, `${money(sale.unit_price_cents)} per share`)),
      h("p", {}, player ? h("a", { href: `/players/${player.id}`, "data-link": true }, player.name) : `Player #${sale.player_id}`,
        sale.max_per_user ? ` · at most ${sale.max_per_user} per person` : ""),
      h("p", {}, remaining, ` of ${sale.total_units} left`),
      h("div", { class: "meter", role: "presentation" }, meter),
      when, form, message, purchases);
    const card = { sale, element, remaining, meter, when, quantity, buy, waitlist, message, purchases, intent: new Intent(`purchase.${sale.sale_id}`), mine: new Map(), inFlight: false };

    form.addEventListener("submit", (event) => {
      event.preventDefault();
      purchase(card);
    });
    waitlist.addEventListener("click", () => joinWaitlist(card));
    cards.set(sale.sale_id, card);
    update(card);
    loadMine(card);
    return card;
  }

  function update(card) {
    const { sale } = card;
    setText(card.remaining, String(sale.remaining_units));
    card.meter.style.width = `${sale.total_units ? (100 * sale.remaining_units) / sale.total_units : 0}%`;
    const startsAt = sale.starts_at ? Date.parse(sale.starts_at) : 0;
    const opensIn = secondsUntil(startsAt);
    const scheduled = sale.status === "scheduled" && opensIn > 0;
    setText(card.when, scheduled ? `Opens in ${countdown(opensIn)}`
      : sale.status === "sold_out" ? "Sold out. Join the waitlist for units that come back." : "Open now");
    card.buy.disabled = !session.token || scheduled || sale.status === "sold_out";
    card.buy.setAttribute("aria-disabled", String(card.inFlight));
    card.waitlist.hidden = sale.status !== "sold_out" || !session.token;
    if (!session.token && !card.message.textContent) {
      card.message.className = "message info";
      card.message.textContent = "Sign in to buy.";
    }
  }

  function showMessage(card, kind, text) {
    card.message.className = `message ${kind}`;
    card.message.textContent = text;
  }

  async function purchase(card) {
    if (card.inFlight) return;
    const quantity = Number(card.quantity.value);
    if (!Number.isInteger(quantity) || quantity < 1) {
      showMessage(card, "error", "Quantity must be a whole number of at least 1.");
      return;
    }
    // One key per intent: a retry of the same quantity reuses it.
    const key = card.intent.keyFor({ quantity });
    card.inFlight = true;
    update(card);
    try {
      const bought = await post(`/sales/${card.sale.sale_id}/purchases`, { quantity }, { idempotencyKey: key });
      card.intent.settle();
      showMessage(card, "ok", `Reserved ${bought.quantity}. Settling your purchase…`);
      track(card, bought);
    } catch (error) {
      if (!error.retryable) card.intent.settle();
      showMessage(card, error.code === "rate_limited" ? "info" : "error", describeAttempt(error));
      // Sold out may mean only "fewer left than asked": read what is left.
      if (error.code === "sold_out" || error.code === "sale_not_open") refreshSale(card);
    } finally {
      card.inFlight = false;
      update(card);
    }
  }

  async function refreshSale(card) {
    try {
      Object.assign(card.sale, await get(`/sales/${card.sale.sale_id}`, { auth: false }));
      update(card);
    } catch {
      // The list refresh and the sale channel bring it anyway.
    }
  }

  async function joinWaitlist(card) {
    try {
      const answer = await post(`/sales/${card.sale.sale_id}/waitlist`, undefined);
      showMessage(card, "info", `You are number ${answer.position} on the waitlist. A unit that comes back will be reserved for you.`);
    } catch (error) {
      showMessage(card, "error", describeError(error));
    }
  }

  function track(card, purchase) {
    const known = card.mine.get(purchase.purchase_id);
    // Status only moves forward: reserved → held → completed/failed.
    if (known && rank(known.status) > rank(purchase.status)) return;
    card.mine.set(purchase.purchase_id, purchase);
    renderPurchases(card);
  }

  function rank(status) {
    return status === "completed" || status === "failed" ? 3 : STEPS.indexOf(status);
  }

  function renderPurchases(card) {
    const items = [...card.mine.values()].sort((a, b) => b.purchase_id - a.purchase_id);
    replace(card.purchases, items.map((p) => {
      const steps = p.status === "failed" ? ["reserved", "failed"] : STEPS;
      const at = steps.indexOf(p.status);
      return h("li", { class: "panel", "data-purchase-id": p.purchase_id, "data-status": p.status },
        h("span", {}, `Purchase of ${p.quantity}: `),
        h("ol", { class: "progress", "aria-label": `Purchase ${p.purchase_id} progress` },
          steps.map((step, i) => h("li", {
            class: step === "failed" ? "failed" : i < at ? "done" : i === at ? (step === "completed" ? "done current" : "current") : "",
            "aria-current": i === at ? "step" : false,
          }, step))),
        p.status === "failed" ? h("span", { class: "down" }, `Failed: ${(p.failure_reason ?? "unknown").replaceAll("_", " ")}. You were not charged.`) : null,
        p.status === "completed" && p.share_numbers ? h("span", { class: "muted" }, `Share numbers ${p.share_numbers.join(", ")}`) : null);
    }));
  }

  async function loadMine(card) {
    if (!session.token) return;
    try {
      for (const p of await get(`/sales/${card.sale.sale_id}/purchases`)) track(card, p);
    } catch {
      // The list is shown again on the next refresh.
    }
  }

  async function refreshList() {
    try {
      const [sales] = await Promise.all([get("/sales", { auth: false }), market.load()]);
      if (stopped) return;
      // Cards already shown stay where they are (focus, a half-typed
      // quantity); new drops go on top, newest first.
      const fresh = [];
      for (const sale of sales.sort((a, b) => a.sale_id - b.sale_id)) {
        const card = cards.get(sale.sale_id);
        if (card) {
          Object.assign(card.sale, sale);
          update(card);
        } else {
          fresh.push(buildCard(sale));
        }
      }
      for (const card of fresh) list.prepend(card.element);
      socket.subscribe(fresh.map((card) => `sale:${card.sale.sale_id}`));
      status.textContent = cards.size ? "" : "No drops yet. New players are sold here when they are listed.";
      status.hidden = cards.size > 0;
    } catch (error) {
      if (!stopped) status.textContent = describeError(error);
    }
  }

  async function pollSettling() {
    for (const card of cards.values()) {
      for (const p of card.mine.values()) {
        if (p.status === "completed" || p.status === "failed") continue;
        try {
          track(card, await get(`/sales/${card.sale.sale_id}/purchases/${p.purchase_id}`));
        } catch {
          // Next poll.
        }
      }
    }
  }

  const onMessage = (event) => {
    const message = event.detail;
    if (message.type === "sale") {
      const card = cards.get(message.sale_id);
      if (!card) return;
      card.sale.remaining_units = message.remaining_units;
      card.sale.status = message.status;
      update(card);
    } else if (message.type === "subscribed") {
      for (const { channel, data } of message.snapshot ?? []) {
        if (!channel.startsWith("sale:") || !data) continue;
        const card = cards.get(data.sale_id);
        if (card) {
          card.sale.remaining_units = data.remaining_units;
          card.sale.status = data.status;
          update(card);
        }
      }
    } else if (message.type === "purchase") {
      const card = cards.get(message.sale_id);
      if (card) track(card, message);
      if (card && message.status === "completed") showMessage(card, "ok", `Purchase of ${message.quantity} completed. The shares are in your portfolio.`);
      window.dispatchEvent(new Event("matchday:account-changed"));
    }
  };
  socket.addEventListener("message", onMessage);
  refreshList();
  const listTimer = setInterval(refreshList, LIST_REFRESH_MS);
  const pollTimer = setInterval(pollSettling, PURCHASE_POLL_MS);
  const clockTimer = setInterval(() => cards.forEach(update), 1000);
  return () => {
    stopped = true;
    clearInterval(listTimer);
    clearInterval(pollTimer);
    clearInterval(clockTimer);
    socket.removeEventListener("message", onMessage);
    socket.unsubscribe([...cards.keys()].map((id) => `sale:${id}`));
  };
}
