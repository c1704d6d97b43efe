-- The newest applied events across all players (`GET /api/v1/events`): the
-- live ticker's first screen. Per-player reads use feed_events_player_applied.
CREATE INDEX feed_events_applied ON feed_events (applied_at DESC) WHERE applied_at IS NOT NULL;
