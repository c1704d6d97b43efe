-- Drops (flash sales): sales, purchases, the units each purchase holds and
-- the waitlist. Postgres is the truth; Redis only serves the rush.

CREATE TABLE sales (
    id               BIGSERIAL PRIMARY KEY,
    player_id        BIGINT NOT NULL REFERENCES players (id),
    name             TEXT NOT NULL,
    total_units      BIGINT NOT NULL CHECK (total_units > 0),
    unit_price_cents BIGINT NOT NULL CHECK (unit_price_cents > 0),
    -- NULL: no per-user limit.
    max_per_user     BIGINT CHECK (max_per_user > 0),
    starts_at        TIMESTAMPTZ NOT NULL,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- The inventory generation: bumped by every rebuild of the Redis
    -- inventory, under this row's lock. A reservation granted by an older
    -- generation is refused, so a rebuild can never miss one in flight.
    generation       BIGINT NOT NULL DEFAULT 1
);

CREATE TABLE purchases (
    id              BIGSERIAL PRIMARY KEY,
    sale_id         BIGINT NOT NULL REFERENCES sales (id),
    user_id         BIGINT NOT NULL REFERENCES users (id),
    quantity        BIGINT NOT NULL CHECK (quantity > 0),
    status          TEXT NOT NULL CHECK (status IN ('reserved', 'held', 'completed', 'failed')),
    failure_reason  TEXT,
    -- NULL for a purchase granted from the waitlist. Keys are deduplicated
    -- in idempotency_keys, written in the same transaction.
    idempotency_key TEXT,
    amount_cents    BIGINT NOT NULL CHECK (amount_cents > 0),
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT purchases_failure_reason CHECK ((status = 'failed') = (failure_reason IS NOT NULL))
);
CREATE INDEX purchases_sale_user ON purchases (sale_id, user_id);
-- What settlement works through: small, because settled rows leave it.
CREATE INDEX purchases_pending ON purchases (user_id, id) WHERE status IN ('reserved', 'held');
CREATE INDEX purchases_pending_id ON purchases (id) WHERE status IN ('reserved', 'held');

-- Each unit a live purchase holds. The primary key is what makes overselling
-- impossible whatever Redis says: a unit number is held by at most one
-- purchase. A failed purchase's rows are deleted or handed to the waitlist.
CREATE TABLE purchase_units (
    sale_id      BIGINT NOT NULL REFERENCES sales (id),
    share_number BIGINT NOT NULL CHECK (share_number > 0),
    purchase_id  BIGINT NOT NULL REFERENCES purchases (id),
    PRIMARY KEY (sale_id, share_number)
);
CREATE INDEX purchase_units_purchase ON purchase_units (purchase_id);

CREATE TABLE sale_waitlist (
    sale_id     BIGINT NOT NULL REFERENCES sales (id),
    user_id     BIGINT NOT NULL REFERENCES users (id),
    position    BIGINT NOT NULL,
    joined_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- The purchase a given-back unit became; NULL while still waiting.
    purchase_id BIGINT REFERENCES purchases (id),
    PRIMARY KEY (sale_id, user_id),
    UNIQUE (sale_id, position)
);
CREATE INDEX sale_waitlist_waiting ON sale_waitlist (sale_id, position) WHERE purchase_id IS NULL;
