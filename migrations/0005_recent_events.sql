-- The newest applied events across all players (`GET /api/v1/events`): the
-- live ticker's first screen. Per-player reads use feed_events_player_applied.
CREATE INDEX feed_events_applied ON feed_events (applied_at DESC) WHERE applied_at IS NOT NULL;
-- Whether an event is a correction: some event's reverted_by names it.
CREATE INDEX feed_events_reverted_by ON feed_events (reverted_by) WHERE reverted_by IS NOT NULL;
