-- Fairness policies (trading.fairness_policy): provisional fills that an
-- earlier-occurring event voids (void_window), and orders that wait before
-- they fill (delay).

-- `status` of an executed order: `filled`, or `provisional` until `final_at`
-- (read as `filled` from then on, without a write), or `voided`.
-- `cost_basis_cents` is what the fill added to (buy) or took from (sell) the
-- holding's cost basis, so a void restores it exactly.
ALTER TABLE orders
    ADD COLUMN final_at         TIMESTAMPTZ,
    ADD COLUMN cost_basis_cents BIGINT,
    ADD COLUMN voided_at        TIMESTAMPTZ,
    ADD COLUMN void_reason      TEXT,
    ADD CONSTRAINT orders_status_known CHECK (status IN ('filled', 'provisional', 'voided')),
    ADD CONSTRAINT orders_provisional_ends
        CHECK (status <> 'provisional' OR final_at IS NOT NULL);

CREATE INDEX orders_provisional_player ON orders (player_id, final_at)
    WHERE status = 'provisional';
CREATE INDEX orders_provisional_user ON orders (user_id, final_at)
    WHERE status = 'provisional';

-- Cash a user may not spend yet: the proceeds of provisional sells, which a
-- void would take back. Every guard on spendable cash subtracts it, so a
-- void can always be paid.
CREATE FUNCTION provisional_proceeds(uid BIGINT) RETURNS BIGINT
LANGUAGE sql VOLATILE AS $$
    SELECT coalesce(sum(total_cents), 0)::bigint FROM orders
     WHERE user_id = uid AND status = 'provisional' AND side = 'sell'
       AND final_at > clock_timestamp()
$$;

-- Orders waiting out trading.delay_seconds. The id comes from orders_id_seq:
-- a filled one has its `orders` row under the same id.
CREATE TABLE pending_orders (
    id           BIGINT PRIMARY KEY,
    user_id      BIGINT NOT NULL REFERENCES users (id),
    player_id    BIGINT NOT NULL REFERENCES players (id),
    side         TEXT NOT NULL CHECK (side IN ('buy', 'sell')),
    quantity     BIGINT NOT NULL CHECK (quantity > 0),
    limit_cents  BIGINT,
    status       TEXT NOT NULL DEFAULT 'pending'
                 CHECK (status IN ('pending', 'filled', 'cancelled')),
    requested_at TIMESTAMPTZ NOT NULL,
    due_at       TIMESTAMPTZ NOT NULL,
    settled_at   TIMESTAMPTZ,
    reason       TEXT
);
CREATE INDEX pending_orders_due ON pending_orders (due_at) WHERE status = 'pending';
CREATE INDEX pending_orders_user_newest ON pending_orders (user_id, id DESC);

CREATE INDEX feed_events_player_occurred ON feed_events (player_id, occurred_at);
