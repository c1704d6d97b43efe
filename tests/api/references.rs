//! Referential integrity of the tables an order writes, checked per
//! statement (migration 0007): rows naming a user or player that does not
//! exist are refused whole, and users and players are never removed.

use reqwest::StatusCode;
use serde_json::json;
use tokio_postgres::error::SqlState;

use crate::helpers::*;

fn assert_foreign_key_violation(result: Result<(), tokio_postgres::Error>, what: &str) {
    let error = result.expect_err(what);
    assert_eq!(
        error.code(),
        Some(&SqlState::FOREIGN_KEY_VIOLATION),
        "{what}: {error:?}"
    );
}

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
        assert_foreign_key_violation(
            app.try_sql(&statements).await,
            &format!("{table}.{column} naming nothing"),
        );
    }
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
    for statement in [
        format!("DELETE FROM users WHERE id = {uid}"),
        format!("DELETE FROM players WHERE id = {player}"),
        format!("UPDATE users SET id = id + 1000000 WHERE id = {uid}"),
        format!("UPDATE players SET id = id + 1000000 WHERE id = {player}"),
        "TRUNCATE users CASCADE".to_string(),
        "TRUNCATE players CASCADE".to_string(),
        format!("UPDATE orders SET user_id = user_id + 1000000 WHERE user_id = {uid}"),
        format!("UPDATE holdings SET player_id = player_id + 1000000 WHERE user_id = {uid}"),
        format!("UPDATE ledger_entries SET user_id = user_id + 1000000 WHERE user_id = {uid}"),
        format!("UPDATE idempotency_keys SET user_id = user_id + 1000000 WHERE user_id = {uid}"),
    ] {
        assert_foreign_key_violation(app.try_sql(&statement).await, &statement);
    }
    assert_eq!(book_totals(&app).await, before);
    assert_eq!(app.audit().await["ok"], true);
    // And trading goes on.
    let response = app.order(&user.token, "refs-after", &order).await;
    assert_eq!(response.status(), StatusCode::CREATED);
}
