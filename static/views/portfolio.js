// The portfolio: cash, held cash, holdings valued at live prices with P&L,
// and the order history. Prices move the values as they tick; any order,
// purchase or portfolio message on the user channel reloads the books.

import { h, replace, setText } from "../lib/dom.js";
import { money, signedMoney, direction, clock } from "../lib/format.js";
import { get, describeError } from "../lib/api.js";
import { market } from "../lib/market.js";
import { session } from "../lib/session.js";
import { socket } from "../lib/socket.js";
import { signInPrompt } from "./auth.js";

const ORDERS_SHOWN = 50;

export function mount(main) {
  document.title = "Portfolio · Matchday";
  if (!session.token) {
    replace(main, h("h1", {}, "Portfolio"), signInPrompt("see your portfolio"));
    return () => {};
  }
  const summary = h("div", { class: "summary", id: "portfolio-summary" });
  const holdingsBody = h("tbody", {});
  const ordersBody = h("tbody", {});
  const status = h("p", { class: "message", role: "alert" });
  replace(main,
    h("h1", {}, "Portfolio"),
    status,
    h("section", { class: "panel" }, summary),
    h("section", { class: "panel" }, h("h2", {}, "Holdings"),
      h("div", { class: "table-wrap", tabindex: 0, role: "region", "aria-label": "Holdings table" }, h("table", { id: "holdings" },
        h("thead", {}, h("tr", {},
          h("th", { scope: "col" }, "Player"), h("th", { scope: "col", class: "num" }, "Qty"),
          h("th", { scope: "col", class: "num" }, "Avg cost"), h("th", { scope: "col", class: "num" }, "Price"),
          h("th", { scope: "col", class: "num" }, "Value"), h("th", { scope: "col", class: "num" }, "P&L"))),
        holdingsBody))),
    h("section", { class: "panel" }, h("h2", {}, "Orders"),
      h("div", { class: "table-wrap", tabindex: 0, role: "region", "aria-label": "Orders table" }, h("table", { id: "orders" },
        h("thead", {}, h("tr", {},
          h("th", { scope: "col" }, "Time"), h("th", { scope: "col" }, "Player"), h("th", { scope: "col" }, "Side"),
          h("th", { scope: "col", class: "num" }, "Qty"), h("th", { scope: "col", class: "num" }, "Price"),
          h("th", { scope: "col", class: "num" }, "Total"), h("th", { scope: "col" }, "Status"))),
        ordersBody))));

  let books = null;
  let stopped = false;

  function cell(text, className = "num") {
    return h("td", { class: className }, text);
  }

  // Rows are built when the books load and only their numbers change on a
  // tick, so keyboard focus and scroll position survive live prices.
  let rows = [];
  const summaryItems = {};

  function build() {
    const sameRows = rows.length === books.holdings.length && rows.length > 0
      && rows.every((row, i) => row.holding.player_id === books.holdings[i].player_id);
    if (sameRows) {
      // The same positions: change numbers in place (an order on one of them).
      rows.forEach((row, i) => { row.holding = books.holdings[i]; });
      render();
      return;
    }
    rows = books.holdings.map((holding) => {
      const player = market.player(holding.player_id);
      const cells = { quantity: cell(""), average: cell(""), price: cell(""), value: cell(""), profit: cell("") };
      const element = h("tr", { "data-player-id": holding.player_id },
        h("td", {}, h("a", { href: `/players/${holding.player_id}`, "data-link": true }, player?.name ?? `#${holding.player_id}`)),
        cells.quantity, cells.average, cells.price, cells.value, cells.profit);
      return { holding, cells, element };
    });
    replace(holdingsBody, rows.length ? rows.map((row) => row.element)
      : h("tr", {}, h("td", { colspan: 6, class: "muted" }, "No holdings yet. Buy a player from the market.")));
    const item = (label, id) => {
      const value = h("span", { class: "value money", id });
      summaryItems[id] = value;
      return h("div", {}, h("span", { class: "label" }, label), value);
    };
    replace(summary,
      item("Net worth", "net-worth"), item("Cash", "cash"), item("Held for drops", "held"),
      item("Spendable", "spendable"), item("Holdings", "holdings-value"), item("Unrealised P&L", "profit"));
    render();
  }

  function render() {
    if (!books) return;
    let holdingsValue = 0;
    let profit = 0;
    for (const { holding, cells } of rows) {
      const price = market.player(holding.player_id)?.price_cents ?? holding.price_cents;
      const value = price * holding.quantity;
      const cost = holding.cost_cents ?? holding.avg_cost_cents * holding.quantity;
      holdingsValue += value;
      profit += value - cost;
      setText(cells.quantity, String(holding.quantity));
      setText(cells.average, money(holding.avg_cost_cents));
      setText(cells.price, money(price));
      setText(cells.value, money(value));
      setText(cells.profit, signedMoney(value - cost));
      cells.profit.className = `num ${direction(value - cost)}`;
    }
    setText(summaryItems["net-worth"], money(books.cash_cents + holdingsValue));
    setText(summaryItems.cash, money(books.cash_cents));
    setText(summaryItems.held, money(books.held_cents));
    setText(summaryItems.spendable, money(books.cash_cents - books.held_cents));
    setText(summaryItems["holdings-value"], money(holdingsValue));
    setText(summaryItems.profit, signedMoney(profit));
    summaryItems.profit.className = `value money ${direction(profit)}`;
  }

  function renderOrders(orders) {
    replace(ordersBody, orders.length ? orders.map((order) => h("tr", {},
      cell(clock(Date.parse(order.executed_at ?? order.requested_at)), ""),
      h("td", {}, market.player(order.player_id)?.name ?? `#${order.player_id}`),
      cell(order.side === "buy" ? "Buy" : "Sell", order.side === "buy" ? "up" : "down"),
      cell(String(order.quantity)), cell(money(order.price_cents)), cell(money(order.total_cents)),
      h("td", { title: order.reason ?? "" }, order.status ?? "filled")))
      : h("tr", {}, h("td", { colspan: 7, class: "muted" }, "No orders yet.")));
  }

  let loading = false;
  let again = false;
  async function load() {
    if (loading) { again = true; return; }
    loading = true;
    try {
      const [portfolio, orders] = await Promise.all([get("/portfolio"), get(`/orders?limit=${ORDERS_SHOWN}`), market.load()]);
      if (stopped) return;
      books = portfolio;
      setText(status, "");
      status.className = "message";
      build();
      renderOrders(orders);
    } catch (error) {
      if (stopped) return;
      status.className = "message error";
      setText(status, describeError(error));
    } finally {
      loading = false;
      if (again && !stopped) { again = false; load(); }
    }
  }

  let renderQueued = false;
  const onPrice = () => {
    // Many ticks land together; value the book once per frame.
    if (renderQueued) return;
    renderQueued = true;
    requestAnimationFrame(() => { renderQueued = false; if (!stopped) render(); });
  };
  const onUser = (event) => {
    const type = event.detail.type;
    if (type === "order" || type === "purchase") load();
  };
  market.addEventListener("price", onPrice);
  socket.addEventListener("message", onUser);
  load();
  return () => {
    stopped = true;
    market.removeEventListener("price", onPrice);
    socket.removeEventListener("message", onUser);
  };
}
