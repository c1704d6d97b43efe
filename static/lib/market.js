// Live state of every player, shared by all screens: prices from the REST
// list, then from socket snapshots, ticks and events. A price carries the
// server's per-player `seq`; anything not newer than what we have (a replayed
// snapshot after a reconnect, a late tick) is dropped, so prices are never
// duplicated or reordered.

import { get } from "./api.js";
import { socket } from "./socket.js";

/** Sparkline length, in history points (one a second). */
export const SPARK_POINTS = 120;
const MAX_EVENTS = 100;
/** Events read at start-up for the ticker. */
const RECENT_EVENTS = 20;

class Market extends EventTarget {
  constructor() {
    super();
    this.players = new Map();
    this.events = [];
    this.seenEvents = new Set();
    this.loading = null;
    this.reloadTimer = null;
    socket.addEventListener("message", (event) => this.onMessage(event.detail));
  }

  /** Loads the catalog once (and again when an unknown player shows up). */
  load() {
    this.loading ??= this.fetchPlayers().finally(() => { this.loading = null; });
    return this.loading;
  }

  async fetchPlayers() {
    const list = await get("/players", { auth: false });
    const fresh = [];
    for (const item of list) {
      const known = this.players.get(item.id);
      if (known) {
        Object.assign(known, { name: item.name, team: item.team, position: item.position });
        known.open_price_cents = item.open_price_cents ?? known.open_price_cents;
        // The socket's seq-ordered price wins over a REST read of unknown age.
        if (known.seq === null && item.epoch >= known.epoch) {
          known.price_cents = item.price_cents;
          known.epoch = item.epoch;
          known.locked_until_ms = lockTime(item.locked_until);
        }
      } else {
        this.players.set(item.id, {
          id: item.id, name: item.name, team: item.team, position: item.position,
          price_cents: item.price_cents, open_price_cents: item.open_price_cents ?? item.price_cents,
          epoch: item.epoch, seq: null, locked_until_ms: lockTime(item.locked_until),
          spark: null,
        });
        fresh.push(`player:${item.id}`);
      }
    }
    if (fresh.length) socket.subscribe(fresh);
    this.dispatchEvent(new Event("players"));
    return this.players;
  }

  reloadSoon() {
    clearTimeout(this.reloadTimer);
    this.reloadTimer = setTimeout(() => this.load().catch(() => {}), 300);
  }

  list() {
    return [...this.players.values()];
  }

  player(id) {
    return this.players.get(Number(id));
  }

  isLocked(player) {
    return player.locked_until_ms > Date.now();
  }

  /** Fills a player's sparkline from the history endpoint (once). */
  async loadSpark(player) {
    if (player.spark) return player.spark;
    player.spark = [];
    try {
      const points = await get(`/players/${player.id}/history?limit=${SPARK_POINTS}`, { auth: false });
      const live = player.spark;
      player.spark = points.map((p) => ({ t: Date.parse(p.ts), price: p.price_cents }));
      // Ticks that arrived while the history loaded come after it.
      const lastT = player.spark.at(-1)?.t ?? 0;
      player.spark.push(...live.filter((p) => p.t > lastT));
    } catch {
      // A sparkline is decoration: without history it fills from ticks.
    }
    this.dispatchEvent(new CustomEvent("spark", { detail: { id: player.id } }));
    return player.spark;
  }

  onMessage(message) {
    switch (message.type) {
      case "subscribed":
        for (const { channel, data } of message.snapshot ?? []) {
          if (channel.startsWith("player:") && data) this.applyPrice(data, "snapshot");
        }
        break;
      case "prices":
        for (const tick of message.ticks ?? []) this.applyPrice(tick, "tick");
        break;
      case "event":
        this.applyEvent(message);
        break;
      default:
    }
  }

  applyPrice(update, source) {
    const player = this.players.get(update.player_id);
    if (!player) {
      this.reloadSoon();
      return false;
    }
    if (update.locked_until !== undefined && (update.epoch ?? 0) >= player.epoch) {
      player.locked_until_ms = lockTime(update.locked_until);
    }
    if (update.seq !== undefined && player.seq !== null && update.seq <= player.seq) {
      return false;
    }
    const previous = player.price_cents;
    player.price_cents = update.price_cents;
    player.epoch = Math.max(player.epoch, update.epoch ?? player.epoch);
    if (update.seq !== undefined) player.seq = update.seq;
    const ts = update.ts_ms ?? Date.now();
    if (player.spark) {
      const last = player.spark.at(-1);
      // One point a second, like the history.
      if (last && ts - last.t < 1000) last.price = update.price_cents;
      else player.spark.push({ t: ts, price: update.price_cents });
      if (player.spark.length > SPARK_POINTS) player.spark.splice(0, player.spark.length - SPARK_POINTS);
    }
    this.dispatchEvent(new CustomEvent("price", { detail: { id: player.id, previous, source, ts } }));
    return true;
  }

  applyEvent(message) {
    this.applyPrice(message, "event");
    const player = this.players.get(message.player_id);
    if (player && (message.epoch ?? 0) >= player.epoch) {
      player.locked_until_ms = lockTime(message.locked_until);
      this.dispatchEvent(new CustomEvent("lock", { detail: { id: player.id } }));
    }
    this.remember(message, false);
  }

  /**
   * Lists an event once (it may come from the socket's two channels, or
   * from the recent-events read and the socket both), newest first.
   */
  remember(event, earlier) {
    const key = event.event_id ?? `${event.player_id}:${event.epoch}`;
    if (this.seenEvents.has(key)) return;
    this.seenEvents.add(key);
    const entry = { ...event, received_ms: Date.now() };
    this.events.unshift(entry);
    this.events.sort((a, b) => (b.ts_ms ?? b.received_ms) - (a.ts_ms ?? a.received_ms));
    if (this.events.length > MAX_EVENTS) {
      const dropped = this.events.pop();
      this.seenEvents.delete(dropped.event_id ?? `${dropped.player_id}:${dropped.epoch}`);
    }
    this.dispatchEvent(new CustomEvent("event", { detail: { ...entry, earlier } }));
  }

  /**
   * The events applied before this page opened (oldest first into the
   * list, so the newest ends on top). Their prices are history: the live
   * price comes only from the socket.
   */
  async loadRecentEvents() {
    const events = await get(`/events?limit=${RECENT_EVENTS}`, { auth: false });
    for (const event of events.reverse()) this.remember(event, true);
  }
}

function lockTime(value) {
  if (!value) return 0;
  const ms = typeof value === "number" ? value : Date.parse(value);
  return Number.isFinite(ms) ? ms : 0;
}

export const market = new Market();
socket.subscribe(["events"]);
