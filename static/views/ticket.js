// The trade ticket: buy or sell at the live price, with an optional limit.
// One idempotency key stands for one intent (side, quantity, limit): a double
// tap, or a retry after a network failure, sends the same key and so can
// never fill twice. A decided outcome, or a changed order, starts a new key.

import { h, setText } from "../lib/dom.js";
import { money, secondsUntil } from "../lib/format.js";
import { post, Intent, describeAttempt } from "../lib/api.js";
import { market } from "../lib/market.js";
import { session } from "../lib/session.js";

const MAX_QUANTITY = 1000000;

/** Parses "12.34" / "12" / "12.3" into cents without floats; null if invalid. */
export function parseCents(text) {
  const match = /^\s*(\d{1,9})(?:\.(\d{1,2}))?\s*$/.exec(text);
  if (!match) return null;
  return Number(match[1]) * 100 + Number((match[2] ?? "0").padEnd(2, "0"));
}

/**
 * Builds the ticket for `player`. `onFilled(order)` runs after a fill.
 * Returns `{element, refresh, destroy}`; `refresh` re-reads price and lock.
 */
export function createTicket(player, { onFilled, holdings = () => null } = {}) {
  const id = `ticket-${player.id}`;
  const side = (value, label) => h("label", {},
    h("input", { type: "radio", name: `${id}-side`, value, checked: value === "buy" }),
    h("span", {}, label));
  const quantity = h("input", {
    type: "number", id: `${id}-qty`, name: "quantity", min: 1, max: MAX_QUANTITY, step: 1,
    value: 1, inputmode: "numeric", required: true,
  });
  const limit = h("input", {
    type: "text", id: `${id}-limit`, name: "limit", inputmode: "decimal", placeholder: "None",
    autocomplete: "off", "aria-describedby": `${id}-limit-hint`,
  });
  const estimate = h("span", { class: "money", id: `${id}-estimate` });
  const available = h("p", { class: "muted", id: `${id}-available` });
  // Not a live region: its countdown changes every second.
  const lockNotice = h("p", { class: "message info", id: `${id}-lock` });
  const message = h("p", { class: "message", id: `${id}-message`, role: "alert" });
  const submit = h("button", { type: "submit", class: "button buy", id: `${id}-submit` }, "Buy");
  const form = h("form", { class: "panel ticket form", novalidate: true, "aria-labelledby": `${id}-title` },
    h("h2", { id: `${id}-title` }, `Trade ${player.name}`),
    h("fieldset", { class: "segmented" },
      h("legend", { class: "visually-hidden" }, "Side"),
      side("buy", "Buy"), side("sell", "Sell")),
    h("div", { class: "row" },
      h("div", { class: "field" }, h("label", { for: quantity.id }, "Quantity"), quantity),
      h("div", { class: "field" }, h("label", { for: limit.id }, "Limit price ($, optional)"), limit)),
    h("p", { class: "muted", id: `${id}-limit-hint` }, "A buy fills only at or below the limit; a sell at or above it."),
    h("p", { class: "estimate" }, h("span", {}, "Estimated total"), estimate),
    available, lockNotice, message, submit);

  const intent = new Intent(`order.${player.id}`);
  let inFlight = false;

  const currentSide = () => form.querySelector(`input[name="${id}-side"]:checked`)?.value ?? "buy";

  function orderBody() {
    const qty = Number(quantity.value);
    if (!Number.isInteger(qty) || qty < 1 || qty > MAX_QUANTITY) return { error: "Quantity must be a whole number from 1 to 1,000,000." };
    const body = { player_id: player.id, side: currentSide(), quantity: qty };
    if (limit.value.trim() !== "") {
      const cents = parseCents(limit.value);
      if (cents === null || cents < 1) return { error: "Limit price must be an amount like 12.50." };
      body.limit_price_cents = cents;
    }
    return { body };
  }

  function refresh() {
    const sideNow = currentSide();
    submit.className = `button ${sideNow}`;
    const qty = Number(quantity.value);
    const valid = Number.isInteger(qty) && qty >= 1 && qty <= MAX_QUANTITY;
    setText(estimate, valid ? money(player.price_cents * qty) : "—");
    setText(submit, inFlight ? "Sending…" : `${sideNow === "buy" ? "Buy" : "Sell"}${valid ? ` ${qty}` : ""}`);
    const held = holdings();
    setText(available, held === null ? "" : sideNow === "buy"
      ? `Cash available: ${money(held.spendable_cents)}`
      : `You hold ${held.quantity} share${held.quantity === 1 ? "" : "s"}`);
    const locked = market.isLocked(player);
    setText(lockNotice, locked
      ? `Trading on ${player.name} is locked after a match event. It reopens in ${secondsUntil(player.locked_until_ms)} s.`
      : "");
    // In flight the button stays focusable (the inFlight guard ignores
    // presses), so keyboard focus is not thrown back to the page.
    submit.disabled = locked || !session.token;
    submit.setAttribute("aria-disabled", String(inFlight));
    if (!session.token) setText(lockNotice, lockNotice.textContent || "Sign in to trade.");
  }

  function show(kind, text) {
    message.className = `message ${kind}`;
    message.textContent = text;
  }

  form.addEventListener("input", () => {
    refresh();
    if (message.classList.contains("error")) show("", "");
  });
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (inFlight) return;
    const { body, error } = orderBody();
    if (error) {
      show("error", error);
      return;
    }
    const key = intent.keyFor(body);
    inFlight = true;
    refresh();
    show("", "");
    try {
      const order = await post("/orders", body, { idempotencyKey: key });
      intent.settle();
      const verb = order.side === "buy" ? "Bought" : "Sold";
      if (order.status === "pending") {
        // The delay policy: it fills (or is cancelled) when its wait is over.
        const wait = Math.max(0, Math.round((Date.parse(order.fills_at) - Date.now()) / 1000));
        show("info", `Order placed: it fills at the price in ${wait} s, unless a match event on ${player.name} comes first. Your orders list shows how it ends.`);
      } else {
        const provisional = order.status === "provisional"
          ? ` Provisional until ${new Date(order.final_at).toLocaleTimeString()}: voided if a match event turns out to have happened before it.`
          : "";
        show("ok", `${verb} ${order.quantity} × ${player.name} at ${money(order.price_cents)}, total ${money(order.total_cents)}. Cash now ${money(order.balance_cents)}.${provisional}`);
      }
      window.dispatchEvent(new Event("matchday:account-changed"));
      onFilled?.(order);
    } catch (failure) {
      // Only an undecided outcome keeps its key for the retry.
      if (!failure.retryable) intent.settle();
      show(failure.code === "request_in_progress" ? "info" : "error",
        describeAttempt(failure, { playerName: player.name }));
      if (failure.code === "player_locked" && failure.details.retry_after_ms) {
        player.locked_until_ms = Math.max(player.locked_until_ms, Date.now() + failure.details.retry_after_ms);
      }
    } finally {
      inFlight = false;
      refresh();
    }
  });

  const timer = setInterval(refresh, 1000);
  session.addEventListener("change", refresh);
  refresh();
  return {
    element: form,
    refresh,
    destroy() {
      clearInterval(timer);
      session.removeEventListener("change", refresh);
    },
  };
}
