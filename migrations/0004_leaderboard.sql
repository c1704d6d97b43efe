-- Leaderboard: every change of a user's cash, held cash or holdings bumps
-- `revision` in the same statement (the ledger's posting functions do it
-- under the user's row lock), so a replica's in-memory copy of the user can
-- tell a newer state from an older one whatever order it hears them in.

ALTER TABLE users ADD COLUMN revision BIGINT NOT NULL DEFAULT 0;
