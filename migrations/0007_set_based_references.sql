-- References checked per statement instead of per row.
--
-- A foreign key checks each inserted row on its own: a trigger per row
-- runs `SELECT … FOR KEY SHARE` on the referenced user or player. A
-- group-commit batch inserts hundreds of orders, ledger entries, keys and
-- holdings per statement, and those checks were a quarter of its Postgres
-- time (docs/benchmarks-history.md). The same guarantee, set-based:
--
-- 1. users and players are never deleted and never renumbered (refused
--    below, TRUNCATE included), so a row that exists when a statement
--    checks it exists for good, and no lock is needed to keep it;
-- 2. each statement that inserts into orders, ledger_entries,
--    idempotency_keys or holdings checks all its new rows at once
--    (a transition table anti-joined with the referenced table's primary
--    key) and fails with foreign_key_violation (23503) if any row names a
--    user or player that does not exist;
-- 3. the referencing columns themselves cannot be updated.
--
-- Nothing in Matchday deletes users or players; the other tables keep
-- their foreign keys. One difference remains: a table's owner can disable
-- these triggers (ALTER TABLE … DISABLE TRIGGER USER), where disabling a
-- foreign key's own triggers takes a superuser; Matchday never does either.

CREATE FUNCTION refuse_parent_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% rows are never deleted or renumbered: other rows refer to them', TG_TABLE_NAME
        USING ERRCODE = 'foreign_key_violation';
END $$;

CREATE TRIGGER users_are_kept BEFORE DELETE OR UPDATE OF id ON users
    FOR EACH ROW EXECUTE FUNCTION refuse_parent_change();
CREATE TRIGGER users_are_not_truncated BEFORE TRUNCATE ON users
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_parent_change();
CREATE TRIGGER players_are_kept BEFORE DELETE OR UPDATE OF id ON players
    FOR EACH ROW EXECUTE FUNCTION refuse_parent_change();
CREATE TRIGGER players_are_not_truncated BEFORE TRUNCATE ON players
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_parent_change();

-- The statement's new rows (transition table `new_rows`): for each
-- (column, referenced table) pair in TG_ARGV, no non-null value may be
-- missing from the referenced table's `id`. The referenced table is named
-- with the trigger table's schema, so a session's temporary table of the
-- same name cannot stand in for it (as a foreign key, bound to its table,
-- cannot be fooled).
CREATE FUNCTION check_new_references() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    i INT := 0;
    missing BIGINT;
BEGIN
    WHILE i < TG_NARGS LOOP
        EXECUTE format(
            'SELECT n.%1$I FROM new_rows n
              WHERE n.%1$I IS NOT NULL
                AND NOT EXISTS (SELECT 1 FROM %2$I.%3$I p WHERE p.id = n.%1$I)
              LIMIT 1',
            TG_ARGV[i], TG_TABLE_SCHEMA, TG_ARGV[i + 1]) INTO missing;
        IF missing IS NOT NULL THEN
            RAISE EXCEPTION 'insert on % violates its reference: %.% = % is not in %',
                TG_TABLE_NAME, TG_TABLE_NAME, TG_ARGV[i], missing, TG_ARGV[i + 1]
                USING ERRCODE = 'foreign_key_violation';
        END IF;
        i := i + 2;
    END LOOP;
    RETURN NULL;
END $$;

CREATE FUNCTION refuse_reference_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the user or player a % row refers to cannot change', TG_TABLE_NAME
        USING ERRCODE = 'foreign_key_violation';
END $$;

ALTER TABLE orders DROP CONSTRAINT orders_user_id_fkey,
                   DROP CONSTRAINT orders_player_id_fkey;
CREATE TRIGGER orders_refer_to_users_and_players AFTER INSERT ON orders
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT
    EXECUTE FUNCTION check_new_references('user_id', 'users', 'player_id', 'players');
CREATE TRIGGER orders_references_are_fixed BEFORE UPDATE OF user_id, player_id ON orders
    FOR EACH ROW WHEN (OLD.user_id IS DISTINCT FROM NEW.user_id OR OLD.player_id IS DISTINCT FROM NEW.player_id)
    EXECUTE FUNCTION refuse_reference_change();

ALTER TABLE holdings DROP CONSTRAINT holdings_user_id_fkey,
                     DROP CONSTRAINT holdings_player_id_fkey;
CREATE TRIGGER holdings_refer_to_users_and_players AFTER INSERT ON holdings
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT
    EXECUTE FUNCTION check_new_references('user_id', 'users', 'player_id', 'players');
CREATE TRIGGER holdings_references_are_fixed BEFORE UPDATE OF user_id, player_id ON holdings
    FOR EACH ROW WHEN (OLD.user_id IS DISTINCT FROM NEW.user_id OR OLD.player_id IS DISTINCT FROM NEW.player_id)
    EXECUTE FUNCTION refuse_reference_change();

ALTER TABLE ledger_entries DROP CONSTRAINT ledger_entries_user_id_fkey;
CREATE TRIGGER ledger_entries_refer_to_users AFTER INSERT ON ledger_entries
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT
    EXECUTE FUNCTION check_new_references('user_id', 'users');
CREATE TRIGGER ledger_entries_references_are_fixed BEFORE UPDATE OF user_id ON ledger_entries
    FOR EACH ROW WHEN (OLD.user_id IS DISTINCT FROM NEW.user_id)
    EXECUTE FUNCTION refuse_reference_change();

ALTER TABLE idempotency_keys DROP CONSTRAINT idempotency_keys_user_id_fkey;
CREATE TRIGGER idempotency_keys_refer_to_users AFTER INSERT ON idempotency_keys
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT
    EXECUTE FUNCTION check_new_references('user_id', 'users');
CREATE TRIGGER idempotency_keys_references_are_fixed BEFORE UPDATE OF user_id ON idempotency_keys
    FOR EACH ROW WHEN (OLD.user_id IS DISTINCT FROM NEW.user_id)
    EXECUTE FUNCTION refuse_reference_change();
