// The one WebSocket of the app. It keeps the set of channels the screens want,
// reconnects with exponential backoff and jitter, and on every (re)connect
// subscribes to all of them again, which brings fresh snapshots. Messages are
// dispatched as "message" events; the connection state as "state" events.

import { session } from "./session.js";
import { get } from "./api.js";

const BACKOFF_BASE_MS = 500;
const BACKOFF_CAP_MS = 15000;
// An application-level ping: a socket that stops answering (a phone that
// changed networks) is noticed and replaced.
const PING_EVERY_MS = 20000;
const PONG_TIMEOUT_MS = 10000;
// A connection that lived this long resets the backoff.
const STABLE_AFTER_MS = 5000;
// Channels per subscribe frame: keeps each frame far below the server's
// 16 KiB limit. (The server accepts at most 1,000 player channels a socket.)
const CHANNELS_PER_FRAME = 200;

class LiveSocket extends EventTarget {
  constructor() {
    super();
    this.wanted = new Map(); // channel → how many screens want it
    this.ws = null;
    this.attempt = 0;
    this.state = "connecting";
    this.retryTimer = null;
    this.pingTimer = null;
    this.pongTimer = null;
    this.stableTimer = null;
    this.failuresBeforeOpen = 0;
    session.addEventListener("change", () => this.reconnectNow());
    window.addEventListener("online", () => {
      if (!this.isOpen()) this.reconnectNow();
    });
    document.addEventListener("visibilitychange", () => {
      if (document.visibilityState === "visible" && !this.isOpen()) this.reconnectNow();
    });
  }

  isOpen() {
    return this.ws?.readyState === WebSocket.OPEN;
  }

  /** Screens ask for channels; the socket subscribes once per channel. */
  subscribe(channels) {
    const fresh = [];
    for (const channel of channels) {
      const count = this.wanted.get(channel) ?? 0;
      this.wanted.set(channel, count + 1);
      if (count === 0) fresh.push(channel);
    }
    if (this.isOpen()) this.sendChannels("subscribe", fresh);
  }

  sendChannels(op, channels) {
    for (let i = 0; i < channels.length; i += CHANNELS_PER_FRAME) {
      this.send({ op, channels: channels.slice(i, i + CHANNELS_PER_FRAME) });
    }
  }

  unsubscribe(channels) {
    const gone = [];
    for (const channel of channels) {
      const count = this.wanted.get(channel) ?? 0;
      if (count <= 1) {
        this.wanted.delete(channel);
        if (count === 1) gone.push(channel);
      } else {
        this.wanted.set(channel, count - 1);
      }
    }
    if (this.isOpen()) this.sendChannels("unsubscribe", gone);
  }

  send(message) {
    if (this.isOpen()) this.ws.send(JSON.stringify(message));
  }

  start() {
    if (!this.ws) this.connect();
  }

  setState(state, detail = {}) {
    this.state = state;
    this.dispatchEvent(new CustomEvent("state", { detail: { state, ...detail } }));
  }

  connect() {
    clearTimeout(this.retryTimer);
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const token = session.token;
    const url = `${scheme}://${location.host}/ws${token ? `?token=${encodeURIComponent(token)}` : ""}`;
    this.setState(this.attempt === 0 ? "connecting" : "reconnecting");
    let opened = false;
    const ws = new WebSocket(url);
    this.ws = ws;
    ws.addEventListener("open", () => {
      if (this.ws !== ws) return;
      opened = true;
      this.failuresBeforeOpen = 0;
      this.setState("live");
      this.sendChannels("subscribe", [...this.wanted.keys()]);
      this.stableTimer = setTimeout(() => { this.attempt = 0; }, STABLE_AFTER_MS);
      this.schedulePing();
    });
    ws.addEventListener("message", (event) => {
      // A socket already given up on (signed out, timed out) says nothing more.
      if (this.ws !== ws) return;
      this.schedulePing();
      let message;
      try {
        message = JSON.parse(event.data);
      } catch {
        return;
      }
      if (message.type === "pong") return;
      this.dispatchEvent(new CustomEvent("message", { detail: message }));
    });
    ws.addEventListener("close", () => {
      if (this.ws !== ws) return;
      if (!opened) this.failuresBeforeOpen += 1;
      this.abandon();
      this.scheduleReconnect();
      // An upgrade refused again and again may be a token the server no
      // longer accepts: ask the REST API, which signs out on a 401.
      if (token && this.failuresBeforeOpen === 3) get("/me").catch(() => {});
    });
  }

  /** Forgets the current socket at once (its close may take a minute on a dead network). */
  abandon() {
    const old = this.ws;
    this.ws = null;
    clearTimeout(this.stableTimer);
    clearTimeout(this.pingTimer);
    clearTimeout(this.pongTimer);
    if (old && old.readyState !== WebSocket.CLOSED) old.close();
  }

  schedulePing() {
    clearTimeout(this.pingTimer);
    clearTimeout(this.pongTimer);
    this.pingTimer = setTimeout(() => {
      this.send({ op: "ping" });
      this.pongTimer = setTimeout(() => {
        // No answer: the connection is dead even if the browser has not noticed.
        this.abandon();
        this.scheduleReconnect();
      }, PONG_TIMEOUT_MS);
    }, PING_EVERY_MS);
  }

  scheduleReconnect() {
    const ceiling = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** this.attempt);
    // Equal jitter: half the delay fixed, half random, so a crowd that lost
    // the same server does not come back in the same millisecond.
    const delay = Math.round(ceiling / 2 + Math.random() * (ceiling / 2));
    this.attempt += 1;
    this.setState("reconnecting", { retryAt: Date.now() + delay });
    this.retryTimer = setTimeout(() => this.connect(), delay);
  }

  /** Drops the current connection (if any) and connects again at once. */
  reconnectNow() {
    clearTimeout(this.retryTimer);
    this.abandon();
    this.attempt = 0;
    this.connect();
  }
}

export const socket = new LiveSocket();
