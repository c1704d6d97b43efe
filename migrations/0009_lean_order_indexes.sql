-- Fewer index entries per order.
--
-- Each order a batch applies writes an orders row, two ledger entries and
-- an idempotency key, and every index on those tables takes an entry per
-- row. Three of those indexes no query needed in the form they had:
--
-- * `ledger_entries_txn`, on every entry's `txn`: the only lookup by txn
--   is the sale audit's, of `purchase:{id}` entries. The index now holds
--   those alone (the audit's query names the prefix, so the planner can
--   prove it may use it). The ledger audit groups the whole table by txn
--   and never used the index.
-- * `ledger_entries_user`: nothing looks entries up by user; the ledger
--   audit sums the whole table per user in one pass.
-- * `idempotency_keys_created` served only the purge (`created_at <
--   cutoff`). Keys are inserted in time order, so a BRIN index (one
--   summary per 128 pages, not an entry per key) finds the old ones as
--   well.
--
-- Closed loop, batches of 1024, 2 vCPU (docs/benchmarks-history.md,
-- 2026-12-04): 31,800–34,000 orders/s with the old indexes, 39,500–39,900
-- without.

DROP INDEX ledger_entries_txn;
CREATE INDEX ledger_entries_purchase_txn ON ledger_entries (txn)
    WHERE txn LIKE 'purchase:%';

DROP INDEX ledger_entries_user;

DROP INDEX idempotency_keys_created;
CREATE INDEX idempotency_keys_created ON idempotency_keys USING brin (created_at);
