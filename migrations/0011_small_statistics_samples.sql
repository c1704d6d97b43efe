-- Smaller ANALYZE samples for the three tables every order writes.
--
-- ANALYZE samples 300 rows per unit of the largest statistics target among
-- a table's columns: 30,000 rows at the default of 100, whatever the
-- table's size. Migration 0008 already skipped the columns no query
-- filters on; what was left still cost 74-118 ms of CPU for each of
-- ledger_entries and idempotency_keys (after 130,000 orders), and
-- autovacuum analyzes the tables orders write in the middle of trading:
-- at 14,000 orders/s on two cores, one ANALYZE of the five took 0.45 s and
-- left a second whose worst order waited 223 ms. With a target of 10 (a
-- 3,000-row sample) the same two ANALYZEs took 17-32 ms each
-- (docs/benchmarks-history.md, 2026-12-04, fourth session).

-- What these statistics still feed: the planner's choice for the order
-- history (by user), the fairness voids (by player and time), the
-- provisional reads (status, final_at) and the sale audit (txn prefix).
-- Each has an index that fits it, and choosing it takes a rough row count,
-- not a fine histogram: ten buckets and ten most common values give that.
-- Every other table keeps the server's default.

ALTER TABLE orders
    ALTER COLUMN id SET STATISTICS 10,
    ALTER COLUMN user_id SET STATISTICS 10,
    ALTER COLUMN player_id SET STATISTICS 10,
    ALTER COLUMN side SET STATISTICS 10,
    ALTER COLUMN epoch SET STATISTICS 10,
    ALTER COLUMN status SET STATISTICS 10,
    ALTER COLUMN executed_at SET STATISTICS 10,
    ALTER COLUMN final_at SET STATISTICS 10,
    ALTER COLUMN voided_at SET STATISTICS 10;

ALTER TABLE ledger_entries
    ALTER COLUMN id SET STATISTICS 10,
    ALTER COLUMN txn SET STATISTICS 10,
    ALTER COLUMN account SET STATISTICS 10,
    ALTER COLUMN user_id SET STATISTICS 10,
    ALTER COLUMN created_at SET STATISTICS 10;

ALTER TABLE idempotency_keys
    ALTER COLUMN user_id SET STATISTICS 10,
    ALTER COLUMN key SET STATISTICS 10,
    ALTER COLUMN endpoint SET STATISTICS 10,
    ALTER COLUMN created_at SET STATISTICS 10;
