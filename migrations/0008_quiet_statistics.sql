-- No statistics for columns no query filters, joins or groups on.
--
-- Autovacuum analyzes the tables orders write every few minutes under
-- load, sampling 30,000 rows each time. Most of that CPU went into columns
-- whose statistics no plan uses: idempotency_keys' JSONB outcome and its
-- fingerprint (ANALYZE of 210,000 keys took 0.33 s, 0.12 s without them),
-- and the amounts of orders and ledger entries. On two cores at 90 % busy,
-- the seconds autovacuum ran in were the worst of each run of group commit
-- (up to 200 ms; docs/benchmarks-history.md, 2026-12-04). These columns
-- are only ever read back with their rows; the planner's defaults stand in
-- should an ad-hoc query filter on them.

ALTER TABLE idempotency_keys
    ALTER COLUMN outcome SET STATISTICS 0,
    ALTER COLUMN fingerprint SET STATISTICS 0;

ALTER TABLE orders
    ALTER COLUMN quantity SET STATISTICS 0,
    ALTER COLUMN price_cents SET STATISTICS 0,
    ALTER COLUMN total_cents SET STATISTICS 0,
    ALTER COLUMN balance_cents SET STATISTICS 0,
    ALTER COLUMN cost_basis_cents SET STATISTICS 0,
    ALTER COLUMN void_reason SET STATISTICS 0;

ALTER TABLE ledger_entries
    ALTER COLUMN amount_cents SET STATISTICS 0;
