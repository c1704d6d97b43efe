// Unit tests of the app's live price state (static/lib/market.js), in Node
// with the browser's globals stubbed: the ordering rules that keep prices
// from being duplicated or going backwards across reconnects.

import { test } from "node:test";
import assert from "node:assert/strict";

// The smallest browser the modules need: no network, no DOM.
globalThis.window = new EventTarget();
globalThis.document = Object.assign(new EventTarget(), { visibilityState: "visible" });
globalThis.localStorage = { getItem: () => null, setItem() {}, removeItem() {} };
globalThis.location = { protocol: "http:", host: "test" };
globalThis.WebSocket = class { static OPEN = 1; };
globalThis.fetch = async () => { throw new Error("no network in unit tests"); };

const { market } = await import("../../static/lib/market.js");
const { socket } = await import("../../static/lib/socket.js");

function list(id, price, epoch = 0, locked_until = null) {
  return { id, name: `P${id}`, team: "T", position: "MF", price_cents: price, open_price_cents: 1000, epoch, locked_until };
}

function receive(message) {
  socket.dispatchEvent(new CustomEvent("message", { detail: message }));
}

function seed(id, price) {
  market.players.set(id, {
    ...list(id, price), seq: null, locked_until_ms: 0, spark: null, lastTs: 0,
  });
}

function prices(id) {
  const seen = [];
  const listener = (event) => { if (event.detail.id === id) seen.push(market.player(id).price_cents); };
  market.addEventListener("price", listener);
  return { seen, stop: () => market.removeEventListener("price", listener) };
}

test("a tick applies only when its seq is newer than the last one applied", () => {
  seed(1, 1000);
  const watch = prices(1);
  receive({ type: "prices", ticks: [{ player_id: 1, price_cents: 1010, epoch: 0, seq: 5, ts_ms: 1 }] });
  receive({ type: "prices", ticks: [{ player_id: 1, price_cents: 1010, epoch: 0, seq: 5, ts_ms: 1 }] });
  receive({ type: "prices", ticks: [{ player_id: 1, price_cents: 990, epoch: 0, seq: 4, ts_ms: 0 }] });
  receive({ type: "prices", ticks: [{ player_id: 1, price_cents: 1020, epoch: 0, seq: 6, ts_ms: 2 }] });
  watch.stop();
  assert.deepEqual(watch.seen, [1010, 1020]);
  assert.equal(market.player(1).seq, 6);
});

test("a snapshot after a reconnect never takes a price back, and moves it on when newer", () => {
  seed(2, 1000);
  const watch = prices(2);
  receive({ type: "prices", ticks: [{ player_id: 2, price_cents: 1100, epoch: 1, seq: 10, ts_ms: 5 }] });
  // A replica that is a little behind answers the resubscription.
  receive({ type: "subscribed", channels: ["player:2"], snapshot: [{ channel: "player:2", data: { player_id: 2, price_cents: 1090, epoch: 1, seq: 9, ts_ms: 4, locked_until: null } }] });
  assert.equal(market.player(2).price_cents, 1100);
  receive({ type: "subscribed", channels: ["player:2"], snapshot: [{ channel: "player:2", data: { player_id: 2, price_cents: 1200, epoch: 2, seq: 12, ts_ms: 9, locked_until: null } }] });
  watch.stop();
  assert.deepEqual(watch.seen, [1100, 1200]);
});

test("a REST read of unknown age does not overwrite a socket price", async () => {
  seed(3, 1000);
  receive({ type: "prices", ticks: [{ player_id: 3, price_cents: 1300, epoch: 0, seq: 3, ts_ms: 1 }] });
  globalThis.fetch = async () => new Response(JSON.stringify([list(3, 1000)]), { status: 200 });
  await market.load();
  globalThis.fetch = async () => { throw new Error("no network"); };
  assert.equal(market.player(3).price_cents, 1300);
});

test("an event heard on two channels is listed once and locks the player", () => {
  seed(4, 1000);
  const listed = [];
  const listener = (event) => listed.push(event.detail.event_id);
  market.addEventListener("event", listener);
  const lockedUntil = new Date(Date.now() + 60000).toISOString();
  const event = { type: "event", event_id: "e-1", player_id: 4, kind: "goal", price_cents: 1150, epoch: 1, seq: 2, locked_until: lockedUntil, ts_ms: 7 };
  receive(event);
  receive({ ...event });
  market.removeEventListener("event", listener);
  assert.deepEqual(listed, ["e-1"]);
  assert.equal(market.player(4).price_cents, 1150);
  assert.ok(market.isLocked(market.player(4)));
});
