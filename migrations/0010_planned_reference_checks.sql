-- Migration 0007's per-statement reference checks, as static SQL.
--
-- 0007's trigger function built its query with format() and ran it
-- with EXECUTE, so every firing parsed and planned it afresh. A batch
-- fires four of these triggers (six checks): 1.14 ms of the 5.6 ms a
-- batch of 64 orders spent in Postgres (pg_stat_user_functions and
-- pg_stat_statements, docs/benchmarks-history.md, 2026-12-04). Static SQL
-- in PL/pgSQL is planned once per connection and trigger, and the plan
-- kept.
--
-- A kept plan must stay right as the tables grow from nothing: inside
-- the function hash joins, merge joins and sequential scans are off, so
-- every check is planned as the same nested-loop anti-join, one probe of
-- the referenced primary key per new row, whatever the sizes were when
-- it was planned. Its search_path is the schema the migration runs in,
-- then pg_temp, so a temporary table of the same name cannot stand in for
-- users or players (0007 named the schema in its query for the same end).
--
-- The guarantees, errors (23503, same message) and triggers' names are
-- 0007's; only the function they execute changes.

-- The statement's new rows (transition table `new_rows`) all name a user
-- that exists, and, on a table given the argument 'players', a player.
-- PL/pgSQL keeps a function's plans per trigger, so a table without
-- player_id never plans the second check.
CREATE FUNCTION check_references() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    missing BIGINT;
    referenced TEXT := 'users';
BEGIN
    SELECT n.user_id INTO missing FROM new_rows n
     WHERE n.user_id IS NOT NULL
       AND NOT EXISTS (SELECT 1 FROM users p WHERE p.id = n.user_id)
     LIMIT 1;
    IF missing IS NULL AND TG_NARGS > 0 AND TG_ARGV[0] = 'players' THEN
        referenced := 'players';
        SELECT n.player_id INTO missing FROM new_rows n
         WHERE n.player_id IS NOT NULL
           AND NOT EXISTS (SELECT 1 FROM players p WHERE p.id = n.player_id)
         LIMIT 1;
    END IF;
    IF missing IS NOT NULL THEN
        RAISE EXCEPTION 'insert on % violates its reference: %.% = % is not in %',
            TG_TABLE_NAME, TG_TABLE_NAME, left(referenced, -1) || '_id', missing, referenced
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NULL;
END $$;

DO $$
BEGIN
    EXECUTE format(
        'ALTER FUNCTION check_references() SET search_path = %I, pg_temp
                                          SET enable_hashjoin = off
                                          SET enable_mergejoin = off
                                          SET enable_seqscan = off', current_schema());
END $$;

DROP TRIGGER orders_refer_to_users_and_players ON orders;
CREATE TRIGGER orders_refer_to_users_and_players AFTER INSERT ON orders
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT
    EXECUTE FUNCTION check_references('players');

DROP TRIGGER holdings_refer_to_users_and_players ON holdings;
CREATE TRIGGER holdings_refer_to_users_and_players AFTER INSERT ON holdings
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT
    EXECUTE FUNCTION check_references('players');

DROP TRIGGER ledger_entries_refer_to_users ON ledger_entries;
CREATE TRIGGER ledger_entries_refer_to_users AFTER INSERT ON ledger_entries
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT
    EXECUTE FUNCTION check_references();

DROP TRIGGER idempotency_keys_refer_to_users ON idempotency_keys;
CREATE TRIGGER idempotency_keys_refer_to_users AFTER INSERT ON idempotency_keys
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT
    EXECUTE FUNCTION check_references();

DROP FUNCTION check_new_references();
