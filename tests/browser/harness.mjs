// The browser tests' world: a real Matchday binary on a fresh Postgres
// database and its own Redis key prefix, and headless Chromium driven by
// playwright-core. Nothing is faked.

import { spawn, execFileSync } from "node:child_process";
import { createServer } from "node:net";
import { mkdirSync, openSync } from "node:fs";
import { randomBytes } from "node:crypto";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const here = dirname(fileURLToPath(import.meta.url));
export const ROOT = resolve(here, "../..");
export const ARTIFACTS = join(here, "artifacts");
export const ADMIN_TOKEN = "browser-test-admin-token";

function required(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set: run the browser tests through scripts/test-browser`);
  return value;
}

function freePort() {
  return new Promise((resolvePort, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolvePort(port));
    });
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** One Matchday process (restartable on the same port and database). */
export class Matchday {
  static async start() {
    const adminUrl = required("MATCHDAY_TEST_PG_ADMIN_URL");
    const redisUrl = required("MATCHDAY_TEST_REDIS_URL");
    const name = `browser_${randomBytes(6).toString("hex")}`;
    execFileSync("psql", [adminUrl, "-qc", `CREATE DATABASE ${name}`]);
    const databaseUrl = adminUrl.replace(/\/[^/]*$/, `/${name}`);
    const app = new Matchday({ adminUrl, databaseUrl, redisUrl, name, port: await freePort() });
    await app.boot();
    return app;
  }

  constructor(settings) {
    Object.assign(this, settings);
    this.base = `http://127.0.0.1:${this.port}`;
    this.process = null;
    mkdirSync(ARTIFACTS, { recursive: true });
  }

  async boot() {
    const binary = process.env.MATCHDAY_BIN ?? join(ROOT, "target/debug/matchday");
    const log = openSync(join(ARTIFACTS, `${this.name}.log`), "a");
    this.process = spawn(binary, ["serve"], {
      cwd: ROOT,
      stdio: ["ignore", log, log],
      env: {
        ...process.env,
        MATCHDAY__SERVER__PORT: String(this.port),
        MATCHDAY__DATABASE__URL: this.databaseUrl,
        MATCHDAY__REDIS__URL: this.redisUrl,
        MATCHDAY__REDIS__KEY_PREFIX: `${this.name}:`,
        MATCHDAY__ADMIN__TOKEN: ADMIN_TOKEN,
        MATCHDAY__FEED__SOURCE: "none",
        MATCHDAY__TRADING__LOCK_SECONDS: "60",
        // The policy recommended for a live match: the app's provisional fills.
        MATCHDAY__TRADING__FAIRNESS_POLICY: "void_window",
        RUST_LOG: process.env.RUST_LOG ?? "warn",
      },
    });
    const exited = new Promise((_, reject) => this.process.once("exit", (code) => reject(new Error(`matchday exited with ${code}`))));
    const deadline = Date.now() + 30000;
    while (Date.now() < deadline) {
      const ready = await fetch(`${this.base}/readyz`).then((r) => r.ok, () => false);
      if (ready) return;
      await Promise.race([sleep(100), exited]);
    }
    throw new Error("matchday did not become ready within 30 s");
  }

  /** SIGTERM, and wait for the process to end. */
  async stop() {
    if (!this.process || this.process.exitCode !== null) return;
    const done = new Promise((r) => this.process.once("exit", r));
    this.process.kill("SIGTERM");
    await Promise.race([done, sleep(15000)]);
    if (this.process.exitCode === null) this.process.kill("SIGKILL");
  }

  async shutdown() {
    await this.stop();
    try {
      execFileSync("psql", [this.adminUrl, "-qc", `DROP DATABASE IF EXISTS ${this.name} WITH (FORCE)`]);
    } catch {
      // Left for scripts/test's clean-up of test databases.
    }
  }

  /** A JSON call; throws on an unexpected status. */
  async call(method, path, { body, token, status, headers = {} } = {}) {
    const response = await fetch(`${this.base}/api/v1${path}`, {
      method,
      headers: {
        ...(body === undefined ? {} : { "content-type": "application/json" }),
        ...(token ? { authorization: `Bearer ${token}` } : {}),
        ...headers,
      },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await response.text();
    const data = text ? JSON.parse(text) : null;
    if (status !== undefined && response.status !== status) {
      throw new Error(`${method} ${path}: expected ${status}, got ${response.status}: ${text}`);
    }
    return data;
  }

  admin(method, path, body, status) {
    return this.call(method, path, { body, token: ADMIN_TOKEN, status });
  }

  createPlayer(name, team, priceCents = 1000) {
    return this.admin("POST", "/admin/players", { name, team, position: "MF", price_cents: priceCents }, 201);
  }

  pushEvent(playerId, kind) {
    return this.admin("POST", "/admin/feed/events", {
      event_id: `browser-${randomBytes(8).toString("hex")}`, match_id: "browser-test",
      player_id: playerId, kind, occurred_at: new Date().toISOString(),
    }, 202);
  }
}

/** Headless Debian Chromium, flags as this machine's network needs them. */
export function launchBrowser() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM_PATH ?? "/usr/bin/chromium",
    headless: true,
    args: [
      "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
      "--disable-dev-shm-usage",
    ],
  });
}

/** "$1,234.56", as the app writes cents. */
export function money(cents) {
  const sign = cents < 0 ? "−" : "";
  const abs = Math.abs(cents);
  return `${sign}$${Math.trunc(abs / 100).toLocaleString("en-US")}.${String(abs % 100).padStart(2, "0")}`;
}

export { sleep };
