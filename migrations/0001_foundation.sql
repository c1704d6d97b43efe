-- Accounts, players, trading and the double-entry ledger.

-- Process-wide settings shared by every replica (e.g. the token signing key).
CREATE TABLE settings (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE users (
    id            BIGSERIAL PRIMARY KEY,
    username      TEXT NOT NULL UNIQUE,
    -- NULL for bulk-created users: they cannot log in.
    password_hash TEXT,
    -- Total cash, including what is held for drops in settlement.
    cash_cents    BIGINT NOT NULL,
    held_cents    BIGINT NOT NULL DEFAULT 0,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- A backstop: the application's guarded updates never get here.
    CONSTRAINT users_cash_non_negative CHECK (cash_cents >= 0),
    CONSTRAINT users_held_within_cash CHECK (held_cents >= 0 AND held_cents <= cash_cents)
);

-- Tokens revoked by logout before they expire; every replica keeps a copy in
-- memory, so checking a token needs no database round trip.
CREATE TABLE revoked_tokens (
    token_id   BIGINT PRIMARY KEY,
    expires_at TIMESTAMPTZ NOT NULL
);

CREATE TABLE players (
    id           BIGSERIAL PRIMARY KEY,
    name         TEXT NOT NULL,
    team         TEXT NOT NULL,
    position     TEXT NOT NULL,
    price_cents  BIGINT NOT NULL CHECK (price_cents > 0),
    -- Count of match events applied; trades take this row FOR SHARE, events
    -- update it, so no order commits at a pre-event epoch.
    epoch        BIGINT NOT NULL DEFAULT 0,
    locked_until TIMESTAMPTZ,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE price_history (
    player_id   BIGINT NOT NULL REFERENCES players (id),
    ts          TIMESTAMPTZ NOT NULL,
    price_cents BIGINT NOT NULL
);
CREATE INDEX price_history_player_ts ON price_history (player_id, ts DESC);

CREATE TABLE holdings (
    user_id    BIGINT NOT NULL REFERENCES users (id),
    player_id  BIGINT NOT NULL REFERENCES players (id),
    quantity   BIGINT NOT NULL,
    -- Cost basis of the shares still held (average-cost method).
    cost_cents BIGINT NOT NULL,
    PRIMARY KEY (user_id, player_id),
    CONSTRAINT holdings_quantity_non_negative CHECK (quantity >= 0),
    CONSTRAINT holdings_cost_non_negative CHECK (cost_cents >= 0)
);

CREATE TABLE orders (
    id            BIGSERIAL PRIMARY KEY,
    user_id       BIGINT NOT NULL REFERENCES users (id),
    player_id     BIGINT NOT NULL REFERENCES players (id),
    side          TEXT NOT NULL CHECK (side IN ('buy', 'sell')),
    quantity      BIGINT NOT NULL CHECK (quantity > 0),
    price_cents   BIGINT NOT NULL,
    total_cents   BIGINT NOT NULL,
    balance_cents BIGINT NOT NULL,
    epoch         BIGINT NOT NULL,
    status        TEXT NOT NULL DEFAULT 'filled',
    executed_at   TIMESTAMPTZ NOT NULL
);
CREATE INDEX orders_user_newest ON orders (user_id, id DESC);
CREATE INDEX orders_player_executed ON orders (player_id, executed_at);

-- Double-entry ledger. Insert-only: the market's and the mint's balances are
-- derived by summing, never kept in a row every trade would update.
-- Every `txn` sums to zero.
CREATE TABLE ledger_entries (
    id           BIGSERIAL PRIMARY KEY,
    txn          TEXT NOT NULL,
    account      TEXT NOT NULL CHECK (account IN ('user', 'market', 'mint')),
    user_id      BIGINT REFERENCES users (id),
    amount_cents BIGINT NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT ledger_user_account_has_user CHECK ((account = 'user') = (user_id IS NOT NULL))
);
CREATE INDEX ledger_entries_user ON ledger_entries (user_id) WHERE user_id IS NOT NULL;
CREATE INDEX ledger_entries_txn ON ledger_entries (txn);

-- Idempotency keys (Stripe / IETF draft): one row per (user, key), written in
-- the same transaction as the outcome it records.
CREATE TABLE idempotency_keys (
    user_id     BIGINT NOT NULL REFERENCES users (id),
    key         TEXT NOT NULL,
    endpoint    TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    outcome     JSONB NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, key)
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);
