// Matchday in the browser: routing, the header (connection and account), the
// live match ticker, and the screens in views/. Everything it knows comes
// from the public REST API and the one WebSocket.

import { h, replace, setText } from "./lib/dom.js";
import { money, eventKind, clock, secondsUntil } from "./lib/format.js";
import { get, post } from "./lib/api.js";
import { session } from "./lib/session.js";
import { socket } from "./lib/socket.js";
import { market } from "./lib/market.js";
import * as board from "./views/board.js";
import * as player from "./views/player.js";
import * as portfolio from "./views/portfolio.js";
import * as leaderboard from "./views/leaderboard.js";
import * as drops from "./views/drops.js";
import * as auth from "./views/auth.js";

const TICKER_ITEMS = 20;

const routes = [
  { pattern: /^\/$/, view: board, nav: "board" },
  { pattern: /^\/players\/(\d+)$/, view: player, nav: "board" },
  { pattern: /^\/portfolio$/, view: portfolio, nav: "portfolio" },
  { pattern: /^\/leaderboard$/, view: leaderboard, nav: "leaderboard" },
  { pattern: /^\/drops$/, view: drops, nav: "drops" },
  { pattern: /^\/login$/, view: auth, mode: "login" },
  { pattern: /^\/signup$/, view: auth, mode: "signup" },
];

const main = document.getElementById("main");
let unmount = () => {};

function route({ focus = false } = {}) {
  unmount();
  const path = location.pathname;
  const match = routes.map((r) => ({ r, m: r.pattern.exec(path) })).find(({ m }) => m);
  for (const link of document.querySelectorAll("[data-nav]")) {
    if (match && link.dataset.nav === match.r.nav) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  if (!match) {
    document.title = "Not found · Matchday";
    replace(main, h("h1", {}, "Page not found"), h("p", {}, h("a", { href: "/", "data-link": true }, "Go to the market")));
    unmount = () => {};
  } else {
    unmount = match.r.view.mount(main, match.m.slice(1), match.r.mode) ?? (() => {});
  }
  if (focus) main.focus({ preventScroll: true });
}

/** Goes to an app path without reloading. */
export function navigate(path, { replace: replaceState = false } = {}) {
  if (replaceState) history.replaceState(null, "", path);
  else history.pushState(null, "", path);
  window.scrollTo(0, 0);
  route({ focus: true });
}

document.addEventListener("click", (event) => {
  const link = event.target.closest("a[data-link]");
  if (!link || event.defaultPrevented || event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
  const url = new URL(link.href);
  if (url.origin !== location.origin) return;
  event.preventDefault();
  navigate(url.pathname + url.search);
});
window.addEventListener("popstate", () => route({ focus: true }));

// Connection indicator.
const connection = document.getElementById("connection");
const connectionLabel = connection.querySelector(".label");
// Screen readers hear a change of state once, not every second of a countdown.
const connectionAnnounce = document.getElementById("connection-announce");
let retryTimer = null;
// Nothing to announce until the first connection: only a lost one is news.
let announced = "live";
socket.addEventListener("state", (event) => {
  const { state, retryAt } = event.detail;
  clearInterval(retryTimer);
  const heard = state === "live" ? "live" : "lost";
  if (heard !== announced) {
    announced = heard;
    setText(connectionAnnounce, heard === "live" ? "Live prices connected." : "Connection lost. Reconnecting…");
  }
  connection.dataset.state = state === "live" ? "live" : state === "reconnecting" && retryAt ? "offline" : "connecting";
  if (state === "live") setText(connectionLabel, "Live");
  else if (state === "reconnecting" && retryAt) {
    const show = () => setText(connectionLabel, `Reconnecting in ${secondsUntil(retryAt)} s`);
    show();
    retryTimer = setInterval(show, 500);
  } else setText(connectionLabel, state === "reconnecting" ? "Reconnecting…" : "Connecting…");
});

// Account area: name and spendable cash, or a sign-in link.
const account = document.getElementById("account");
let accountTimer = null;
async function renderAccount() {
  if (!session.token) {
    replace(account,
      h("a", { href: "/login", "data-link": true, class: "nowrap" }, "Sign in"),
      h("a", { href: "/signup", "data-link": true, class: "button primary" }, "Sign up"));
    return;
  }
  const cash = h("span", { class: "money", id: "account-cash" });
  const signOut = h("button", { type: "button", class: "link-button" }, "Sign out");
  signOut.addEventListener("click", async () => {
    try {
      await post("/auth/logout", undefined);
    } catch {
      // Signing out locally is what matters; the token expires anyway.
    }
    session.signOut();
    navigate("/");
  });
  replace(account, h("a", { href: "/portfolio", "data-link": true, class: "username" }, session.user.username), cash, signOut);
  refreshCash();
}
async function refreshCash() {
  if (!session.token) return;
  try {
    const me = await get("/me");
    const cash = document.getElementById("account-cash");
    if (cash) setText(cash, money(me.balance_cents - me.held_cents));
  } catch {
    // Shown again on the next order or purchase.
  }
}
session.addEventListener("change", () => {
  renderAccount();
  // A screen that depends on who is signed in draws itself again.
  route();
});
// Orders that end other than filled (the fairness policies: a delayed
// order cancelled, a provisional fill voided) are said so, with the reason.
const notices = h("div", { class: "order-notices", role: "status", "aria-live": "polite" });
document.body.append(notices);
function noticeFor(order) {
  const name = market.player(order.player_id)?.name ?? `#${order.player_id}`;
  const what = `${order.side === "buy" ? "Buy" : "Sell"} ${order.quantity} × ${name}`;
  if (order.status === "voided") {
    return `${what} was voided and reversed (cash and shares are as before): ${order.reason ?? "a match event happened before it"}.`;
  }
  return `${what} was cancelled: ${order.reason ?? "it could not fill"}.`;
}
socket.addEventListener("message", (event) => {
  const type = event.detail.type;
  if (type === "order" || type === "purchase") {
    clearTimeout(accountTimer);
    accountTimer = setTimeout(refreshCash, 200);
  }
  if (type === "order" && (event.detail.status === "voided" || event.detail.status === "cancelled")) {
    const item = h("p", { class: "notice" }, noticeFor(event.detail));
    notices.append(item);
    setTimeout(() => item.remove(), 15000);
    window.dispatchEvent(new Event("matchday:account-changed"));
  }
});

// A screen that just moved money says so: the header's cash follows at once.
window.addEventListener("matchday:account-changed", refreshCash);

// The ticker: match events as they land, newest first.
const ticker = document.querySelector(".ticker-list");
market.addEventListener("event", (event) => {
  const e = event.detail;
  const ts = e.ts_ms ?? e.received_ms;
  const player = market.player(e.player_id);
  const item = h("li", { class: e.earlier ? "ticker-item" : "ticker-item fresh", "data-ts": ts },
    h("a", { href: `/players/${e.player_id}`, "data-link": true },
      h("span", { class: "muted" }, e.minute ? `${e.minute}'` : clock(ts)), " ",
      h("span", { class: "kind" }, eventKind(e.kind), e.correction ? " (correction)" : ""), " ",
      player?.name ?? `#${e.player_id}`, " ",
      h("span", { class: "num" }, money(e.price_cents))));
  // Newest first: an earlier event read at start-up may belong below a live one.
  const older = [...ticker.children].find((li) => Number(li.dataset.ts) < ts);
  ticker.insertBefore(item, older ?? null);
  while (ticker.children.length > TICKER_ITEMS) ticker.lastElementChild.remove();
});

renderAccount();
route();
market.load().then(() => market.loadRecentEvents()).catch(() => {});
socket.start();
