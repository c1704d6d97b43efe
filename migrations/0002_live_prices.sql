-- Live prices: feed events, the price engine's per-player state.

ALTER TABLE players
    -- Provider identity ("sportec:DFL-OBJ-0001BX") for players created from
    -- lineups; NULL for players created by the admin API.
    ADD COLUMN external_ref TEXT UNIQUE,
    -- The price ticks revert towards: the price right after the last event.
    ADD COLUMN anchor_cents BIGINT,
    -- Rises by one with every price change (event or tick).
    ADD COLUMN seq BIGINT NOT NULL DEFAULT 0,
    -- When the price engine last set the price.
    ADD COLUMN price_set_at TIMESTAMPTZ NOT NULL DEFAULT now();

UPDATE players SET anchor_cents = price_cents;
ALTER TABLE players ALTER COLUMN anchor_cents SET NOT NULL;

-- Every applied event, once: the primary key is the cross-replica dedupe.
CREATE TABLE feed_events (
    event_id     TEXT PRIMARY KEY,
    match_id     TEXT NOT NULL,
    player_id    BIGINT NOT NULL REFERENCES players (id),
    kind         TEXT NOT NULL,
    occurred_at  TIMESTAMPTZ NOT NULL,
    minute       INT,
    applied_at   TIMESTAMPTZ,
    price_before BIGINT,
    price_after  BIGINT,
    epoch        BIGINT,
    -- Set when a provider correction withdrew this event's effect.
    reverted_by  TEXT
);
CREATE INDEX feed_events_player_applied ON feed_events (player_id, applied_at);
