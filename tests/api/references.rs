//! Referential integrity of the tables an order writes, checked per
//! statement (migration 0007): rows naming a user or player that does not
//! exist are refused whole, and users and players are never removed.

use reqwest::StatusCode;
use serde_json::json;
use tokio_postgres::error::SqlState;

use crate::helpers::*;

/// Refused with 23503 by migration 0007's triggers: `says` is part of
/// their message (a remaining foreign key, e.g. price_history's on players,
/// would also answer 23503, but not with these words).
fn assert_refused(result: Result<(), tokio_postgres::Error>, says: &str, what: &str) {
    let error = result.expect_err(what);
    let db = error.as_db_error().expect(what);
    assert_eq!(
        db.code(),
        &SqlState::FOREIGN_KEY_VIOLATION,
        "{what}: {db:?}"
    );
    assert!(db.message().contains(says), "{what}: {db:?}");
}

const MISSING: &str = "violates its reference";
const KEPT: &str = "never deleted or renumbered";
const FIXED: &str = "cannot change";

#[tokio::test]
async fn rows_naming_no_user_or_player_are_refused_and_referenced_rows_are_kept() {
    let app = spawn_app().await;
    let user = app.register("refs").await;
    let player = app.create_player(1_000).await;
    let order = json!({"player_id": player, "side": "buy", "quantity": 2});
    let response = app.order(&user.token, "refs-buy", &order).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let before = book_totals(&app).await;
    let uid = user.id;

    // Each table: the user's own row copied twice, once under a fresh id or
    // key (a valid row) and once also naming a user or player that does
    // not exist; the statement inserting both is refused whole. (A holding's
    // key is (user, player): it gets only the bad copy.)
    let cases = [
        (
            "orders",
            "user_id",
            Some("id = id + 1000000"),
            "id = id + 2000000",
        ),
        (
            "orders",
            "player_id",
            Some("id = id + 1000000"),
            "id = id + 2000000",
        ),
        (
            "ledger_entries",
            "user_id",
            Some("id = id + 1000000"),
            "id = id + 2000000",
        ),
        ("holdings", "user_id", None, "quantity = quantity"),
        ("holdings", "player_id", None, "quantity = quantity"),
        (
            "idempotency_keys",
            "user_id",
            Some("key = key || '-valid'"),
            "key = key || '-bad'",
        ),
    ];
    for (table, column, valid, bad) in cases {
        let valid = match valid {
            Some(fresh) => format!("UPDATE valid SET {fresh};"),
            None => "DELETE FROM valid;".to_string(),
        };
        let statements = format!(
            "CREATE TEMP TABLE valid AS SELECT * FROM {table} WHERE user_id = {uid} LIMIT 1;
             CREATE TEMP TABLE bad AS SELECT * FROM valid;
             {valid}
             UPDATE bad SET {bad}, {column} = {column} + 1000000;
             INSERT INTO {table} SELECT * FROM valid UNION ALL SELECT * FROM bad;"
        );
        assert_refused(
            app.try_sql(&statements).await,
            MISSING,
            &format!("{table}.{column} naming nothing"),
        );
    }
    // A temporary table cannot stand in for users.
    assert_refused(
        app.try_sql(&format!(
            "CREATE TEMP TABLE users (id BIGINT); INSERT INTO users VALUES ({uid} + 1000000);
             INSERT INTO idempotency_keys (user_id, key, endpoint, fingerprint, outcome)
             SELECT user_id + 1000000, key, endpoint, fingerprint, outcome
               FROM idempotency_keys WHERE user_id = {uid} LIMIT 1;"
        ))
        .await,
        MISSING,
        "a temporary users table",
    );
    // Nor can an upsert move a holding to another user.
    assert_refused(
        app.try_sql(&format!(
            "INSERT INTO holdings (user_id, player_id, quantity, cost_cents)
             VALUES ({uid}, {player}, 1, 1)
             ON CONFLICT (user_id, player_id) DO UPDATE SET user_id = holdings.user_id + 1"
        ))
        .await,
        FIXED,
        "an upsert moving a holding",
    );
    // A valid row alone still goes in (the check is not refusing everything).
    app.try_sql(&format!(
        "INSERT INTO idempotency_keys (user_id, key, endpoint, fingerprint, outcome)
         SELECT user_id, key || '-valid', endpoint, fingerprint, outcome
           FROM idempotency_keys WHERE user_id = {uid} LIMIT 1;
         DELETE FROM idempotency_keys WHERE user_id = {uid} AND key LIKE '%-valid';"
    ))
    .await
    .expect("a row naming an existing user is accepted");

    // Referenced rows stay, and references cannot be moved.
    for (statement, says) in [
        (format!("DELETE FROM users WHERE id = {uid}"), KEPT),
        (format!("DELETE FROM players WHERE id = {player}"), KEPT),
        (
            format!("UPDATE users SET id = id + 1000000 WHERE id = {uid}"),
            KEPT,
        ),
        (
            format!("UPDATE players SET id = id + 1000000 WHERE id = {player}"),
            KEPT,
        ),
        ("TRUNCATE users CASCADE".to_string(), KEPT),
        ("TRUNCATE players CASCADE".to_string(), KEPT),
        (
            format!("UPDATE orders SET user_id = user_id + 1000000 WHERE user_id = {uid}"),
            FIXED,
        ),
        (
            format!("UPDATE holdings SET player_id = player_id + 1000000 WHERE user_id = {uid}"),
            FIXED,
        ),
        (
            format!("UPDATE ledger_entries SET user_id = user_id + 1000000 WHERE user_id = {uid}"),
            FIXED,
        ),
        (
            format!(
                "UPDATE idempotency_keys SET user_id = user_id + 1000000 WHERE user_id = {uid}"
            ),
            FIXED,
        ),
    ] {
        assert_refused(app.try_sql(&statement).await, says, &statement);
    }
    assert_eq!(book_totals(&app).await, before);
    assert_eq!(app.audit().await["ok"], true);
    // And trading goes on.
    let response = app.order(&user.token, "refs-after", &order).await;
    assert_eq!(response.status(), StatusCode::CREATED);
}
