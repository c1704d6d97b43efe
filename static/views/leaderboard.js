// The leaderboard: the top 100 at live prices (the socket pushes the top 10
// after every revaluation, the rest is re-read every few seconds), with the
// signed-in user's own rank pinned at the bottom.

import { h, replace, setText } from "../lib/dom.js";
import { money } from "../lib/format.js";
import { get, describeError } from "../lib/api.js";
import { session } from "../lib/session.js";
import { socket } from "../lib/socket.js";

const SHOWN = 100;
const REFRESH_MS = 3000;

export function mount(main) {
  document.title = "Leaderboard · Matchday";
  const body = h("tbody", {});
  const asOf = h("p", { class: "muted", id: "leaderboard-as-of" });
  const status = h("p", { class: "message", role: "status" });
  const mine = h("p", { class: "panel pinned", id: "my-rank", hidden: true });
  replace(main,
    h("h1", {}, "Leaderboard"), asOf, status,
    h("section", { class: "panel" }, h("div", { class: "table-wrap", tabindex: 0, role: "region", "aria-label": "Leaderboard table" }, h("table", { id: "leaderboard" },
      h("thead", {}, h("tr", {},
        h("th", { scope: "col", class: "num" }, "Rank"), h("th", { scope: "col" }, "Player"),
        h("th", { scope: "col", class: "num" }, "Net worth"))),
      body))),
    mine);

  let entries = [];
  let shownAsOf = 0; // the newest valuation shown; an older answer is dropped
  let stopped = false;
  const userId = () => session.user?.user_id;

  function render() {
    replace(body, entries.length ? entries.map((entry) => h("tr", { class: entry.user_id === userId() ? "me" : "" },
      h("td", { class: "num" }, String(entry.rank)),
      h("td", {}, entry.username + (entry.user_id === userId() ? " (you)" : "")),
      h("td", { class: "num" }, money(entry.net_worth_cents))))
      : h("tr", {}, h("td", { colspan: 3, class: "muted" }, "Nobody ranked yet.")));
  }

  function showAsOf(value) {
    if (value) setText(asOf, `Valued at live prices, as of ${new Date(value).toLocaleTimeString()}`);
  }

  async function refresh() {
    try {
      const board = await get(`/leaderboard?limit=${SHOWN}`, { auth: false });
      if (stopped) return;
      const asOfMs = Date.parse(board.as_of) || 0;
      status.className = "message";
      setText(status, "");
      if (asOfMs >= shownAsOf) {
        shownAsOf = asOfMs;
        entries = board.entries;
        showAsOf(board.as_of);
        render();
      }
    } catch (error) {
      if (stopped) return;
      status.className = "message info";
      setText(status, describeError(error));
    }
    if (!session.token) {
      mine.hidden = true;
      return;
    }
    try {
      const me = await get("/leaderboard/me");
      if (stopped) return;
      mine.hidden = false;
      setText(mine, `You (${session.user.username}): #${me.rank} of ${me.total_users}, net worth ${money(me.net_worth_cents)}`);
    } catch {
      mine.hidden = true;
    }
  }

  const onMessage = (event) => {
    const message = event.detail;
    let update = null;
    if (message.type === "leaderboard") update = message;
    if (message.type === "subscribed") {
      update = (message.snapshot ?? []).find((item) => item.channel === "leaderboard")?.data ?? null;
    }
    if (!update?.entries?.length) return;
    const asOfMs = update.as_of_ms ?? (Date.parse(update.as_of) || 0);
    if (asOfMs < shownAsOf) return;
    shownAsOf = asOfMs;
    // The pushed top 10 replaces the head of the table at once.
    const top = update.entries;
    const rest = entries.filter((entry) => entry.rank > top.length && !top.some((t) => t.user_id === entry.user_id));
    entries = [...top, ...rest];
    showAsOf(update.as_of);
    render();
  };
  socket.addEventListener("message", onMessage);
  socket.subscribe(["leaderboard"]);
  refresh();
  const timer = setInterval(refresh, REFRESH_MS);
  return () => {
    stopped = true;
    clearInterval(timer);
    socket.unsubscribe(["leaderboard"]);
    socket.removeEventListener("message", onMessage);
  };
}
