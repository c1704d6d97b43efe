// The REST client: every call of API.md the app makes goes through `request`,
// which returns the parsed body or throws an ApiError carrying the server's
// error code, so screens can say exactly what went wrong.

import { session } from "./session.js";

const BASE = "/api/v1";

/** A non-2xx answer (or no answer at all: status 0, code "network"). */
export class ApiError extends Error {
  constructor(status, code, message, details = {}) {
    super(message);
    this.status = status;
    this.code = code;
    this.details = details;
  }

  /** Worth retrying with the same idempotency key: nothing was decided. */
  get retryable() {
    // 429 and 5xx are not stored under the key, so a retry with it executes.
    return this.status === 0 || this.status === 429 || this.status >= 500 || this.code === "request_in_progress";
  }
}

/**
 * Calls the API. `body` is sent as JSON; `idempotencyKey` sets the header;
 * `auth` (default true) sends the session's token when there is one.
 */
export async function request(method, path, { body, idempotencyKey, auth = true, signal } = {}) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (idempotencyKey) headers["Idempotency-Key"] = idempotencyKey;
  const token = auth ? session.token : null;
  if (token) headers.Authorization = `Bearer ${token}`;
  let response;
  try {
    response = await fetch(BASE + path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      signal,
      cache: "no-store",
    });
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ApiError(0, "network", "The server could not be reached. Check your connection.");
  }
  if (response.status === 204) return null;
  let data = null;
  try {
    data = await response.json();
  } catch {
    data = null;
  }
  if (response.ok) return data;
  const error = data?.error ?? {};
  const retryAfter = Number(response.headers.get("Retry-After"));
  const details = { ...error };
  if (!details.retry_after_ms && Number.isFinite(retryAfter) && retryAfter > 0) {
    details.retry_after_ms = retryAfter * 1000;
  }
  const apiError = new ApiError(response.status, error.code ?? "http_" + response.status,
    error.message ?? response.statusText, details);
  if (response.status === 401 && token) session.expired();
  throw apiError;
}

export const get = (path, options) => request("GET", path, options);
export const post = (path, body, options = {}) => request("POST", path, { ...options, body });

/**
 * A fresh idempotency key (visible ASCII, ≤ 64 chars). One key stands for
 * one intent: a double tap or a retry of the same order reuses it.
 */
export function newIdempotencyKey() {
  if (globalThis.crypto?.randomUUID) return crypto.randomUUID();
  // randomUUID needs a secure context; plain-http self-hosting still has this.
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/**
 * One intent (an order, a purchase) and its idempotency key, kept in
 * sessionStorage until the outcome is known: pressing again, leaving the
 * screen and coming back, or reloading the tab all resend the same key for
 * the same request, so it can never execute twice. A different request
 * (another quantity, side or limit) is a new intent with a new key.
 */
export class Intent {
  constructor(scope) {
    this.storageKey = `matchday.intent.${session.user?.user_id ?? "anonymous"}.${scope}`;
  }

  keyFor(body) {
    const text = JSON.stringify(body);
    let saved = this.read();
    if (!saved || saved.body !== text) {
      saved = { key: newIdempotencyKey(), body: text };
      this.write(saved);
    }
    return saved.key;
  }

  read() {
    try {
      const stored = sessionStorage.getItem(this.storageKey);
      if (stored) return JSON.parse(stored);
    } catch {
      // Storage unavailable (private mode) or unreadable: this screen's copy.
    }
    return this.fallback ?? null;
  }

  write(saved) {
    this.fallback = saved;
    try {
      sessionStorage.setItem(this.storageKey, JSON.stringify(saved));
    } catch {
      // The key then lives as long as this screen.
    }
  }

  /** The outcome is known: the next request is a new intent. */
  settle() {
    this.fallback = null;
    try {
      sessionStorage.removeItem(this.storageKey);
    } catch {
      // Nothing stored.
    }
  }
}

/**
 * `describeError`, plus, for an attempt whose outcome is unknown (no answer,
 * 429, 5xx), that pressing again is safe: the same idempotency key goes out.
 */
export function describeAttempt(error, context = {}) {
  const text = describeError(error, context);
  const undecided = error instanceof ApiError && error.retryable && error.code !== "request_in_progress";
  return undecided ? `${text} Press again to retry safely.` : text;
}

function seconds(ms) {
  return Math.max(1, Math.ceil((ms ?? 1000) / 1000));
}

/** What to tell the user for an error, by its code. `context` names things. */
export function describeError(error, context = {}) {
  if (!(error instanceof ApiError)) return "Something went wrong. Please try again.";
  const player = context.playerName ?? "this player";
  switch (error.code) {
    case "network":
      return error.message;
    case "player_locked":
      return `Trading on ${player} is locked after a match event. It reopens in ${seconds(error.details.retry_after_ms)} s.`;
    case "insufficient_funds":
      return "Not enough cash for this order. Lower the quantity or sell something first.";
    case "insufficient_holdings":
      return `You don't hold that many shares of ${player}.`;
    case "holdings_provisional":
      return `Some of your ${player} shares were bought moments ago and are provisional until the feed has caught up. They can be sold in ${seconds(error.details.retry_after_ms)} s.`;
    case "price_moved":
      return "The price moved past your limit, so nothing was bought or sold. Check the price and try again.";
    case "rate_limited":
      return `Too many requests right now. Try again in ${seconds(error.details.retry_after_ms)} s.`;
    case "idempotency_key_reused":
      return "This order was already sent with different details. Start a new order.";
    case "request_in_progress":
      return "Your order is still being processed…";
    case "unauthorized":
      return "Please sign in again.";
    case "invalid_credentials":
      return "Wrong username or password.";
    case "username_taken":
      return "That username is taken. Pick another.";
    case "invalid_input":
    case "bad_request":
      return error.message ? `Check your input: ${error.message}` : "Check your input.";
    case "not_found":
      return "Not found.";
    case "sold_out":
      return "Sold out: not enough units left for that quantity. Join the waitlist to get released units.";
    case "sale_not_open":
      return "This drop hasn't opened yet.";
    case "limit_exceeded":
      return "That would take you past this drop's per-user limit.";
    case "not_sold_out":
      return "The waitlist opens once the drop sells out. You can still buy now.";
    case "leaderboard_unavailable":
      return "The leaderboard is being computed. It will appear in a moment.";
    default:
      if (error.status >= 500) return "The server had a problem. Your request can be safely retried.";
      return error.message || `Request failed (${error.status}).`;
  }
}
