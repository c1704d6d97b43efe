//! Group commit (`trading.batch_*`): orders that share one transaction
//! resolve exactly as they would one by one, in some order.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{spawn_app_with, test_settings, TestApp, User};

/// An app whose orders wait up to `wait_ms` to share a batch.
async fn batching_app(wait_ms: u64) -> TestApp {
    let mut settings = test_settings().await;
    settings.trading.batch_max_orders = 64;
    settings.trading.batch_wait_ms = wait_ms;
    settings.trading.batch_executors = 1;
    spawn_app_with(settings).await
}

/// Sends every `(user, key, body)` at once; the statuses, in order.
async fn at_once(app: &TestApp, orders: &[(&User, String, Value)]) -> Vec<(StatusCode, Value)> {
    let calls = orders.iter().map(|(user, key, body)| async move {
        let response = app.order(&user.token, key, body).await;
        let status = response.status();
        (
            status,
            response.json::<Value>().await.unwrap_or(Value::Null),
        )
    });
    futures_util::future::join_all(calls).await
}

/// (batches, orders in them) so far. Every batch so far committed as one:
/// none failed and was replayed order by order (which would hide a wrong
/// set-based statement behind the one-by-one path).
async fn batches(app: &TestApp) -> (f64, f64) {
    assert_eq!(
        app.metric("matchday_order_batches_replayed_total").await,
        0.0,
        "a batch failed and was replayed order by order"
    );
    (
        app.metric("matchday_order_batch_size_count").await,
        app.metric("matchday_order_batch_size_sum").await,
    )
}

/// Sends `buy` twice at once for `user` (keys `a` and `b`): they make one
/// batch of two, in which one fills and the other is refused for want of
/// funds.
async fn two_buys_make_one_batch_one_short_of_funds(app: &TestApp, user: &User, buy: &Value) {
    let before = batches(app).await;
    let answers = at_once(
        app,
        &[
            (user, "a".into(), buy.clone()),
            (user, "b".into(), buy.clone()),
        ],
    )
    .await;
    let after = batches(app).await;
    assert_eq!(
        (after.0 - before.0, after.1 - before.1),
        (1.0, 2.0),
        "one batch of two"
    );
    let mut statuses: Vec<u16> = answers.iter().map(|(status, _)| status.as_u16()).collect();
    statuses.sort_unstable();
    assert_eq!(statuses, vec![201, 409], "{answers:?}");
    let refused = answers
        .iter()
        .find(|(s, _)| *s == StatusCode::CONFLICT)
        .expect("a refusal");
    assert_eq!(refused.1["error"]["code"], "insufficient_funds");
}

#[tokio::test]
async fn two_buys_spending_the_same_cash_in_one_batch_fill_once() {
    let app = batching_app(300).await;
    let player = app.create_player(1_000).await;
    let users = app.bulk_users("twice", 1, 1_500).await;
    let user = &users[0];
    let buy = json!({"player_id": player, "side": "buy", "quantity": 1});
    two_buys_make_one_batch_one_short_of_funds(&app, user, &buy).await;
    assert_eq!(app.me(&user.token).await["balance_cents"], 500);
    assert_eq!(app.audit().await["ok"], true);
}

#[tokio::test]
async fn a_buy_and_a_sell_of_one_holding_in_one_batch_resolve_as_in_some_order() {
    let app = batching_app(300).await;
    let player = app.create_player(1_000).await;
    let users = app.bulk_users("both", 1, 100_000).await;
    let user = &users[0];
    app.trade(user, "buy", player, 2, "seed").await;
    let before = batches(&app).await;
    let answers = at_once(
        &app,
        &[
            (
                user,
                "sell3".into(),
                json!({"player_id": player, "side": "sell", "quantity": 3}),
            ),
            (
                user,
                "buy1".into(),
                json!({"player_id": player, "side": "buy", "quantity": 1}),
            ),
            (
                user,
                "sell2".into(),
                json!({"player_id": player, "side": "sell", "quantity": 2}),
            ),
        ],
    )
    .await;
    let after = batches(&app).await;
    assert_eq!(after.1 - before.1, 3.0);
    assert_eq!(after.0 - before.0, 1.0, "one batch");
    let filled: Vec<bool> = answers
        .iter()
        .map(|(s, _)| *s == StatusCode::CREATED)
        .collect();
    // One user's orders run in arrival order within a batch; whichever
    // order the three arrived in, the holding never went below zero and
    // the books equal the fills that stand.
    let holding = app.portfolio(&user.token).await["holdings"]
        .as_array()
        .and_then(|h| h.first().map(|h| h["quantity"].as_i64().unwrap_or(0)))
        .unwrap_or(0);
    let net: i64 = [(-3, filled[0]), (1, filled[1]), (-2, filled[2])]
        .iter()
        .filter(|(_, f)| *f)
        .map(|(q, _)| q)
        .sum();
    assert_eq!(holding, 2 + net, "{answers:?}");
    assert!(holding >= 0);
    let cash = app.me(&user.token).await["balance_cents"].as_i64().unwrap();
    assert_eq!(cash, 100_000 - 2_000 - 1_000 * net, "{answers:?}");
    for (status, body) in &answers {
        if *status != StatusCode::CREATED {
            assert_eq!(body["error"]["code"], "insufficient_holdings", "{body}");
        }
    }
    assert_eq!(app.audit().await["ok"], true);
}

#[tokio::test]
async fn a_key_twice_in_one_batch_fills_once_and_the_retry_replays() {
    let app = batching_app(300).await;
    let player = app.create_player(1_000).await;
    let users = app.bulk_users("dupe", 1, 100_000).await;
    let user = &users[0];
    let buy = json!({"player_id": player, "side": "buy", "quantity": 1});
    let answers = at_once(
        &app,
        &[
            (user, "same".into(), buy.clone()),
            (user, "same".into(), buy.clone()),
        ],
    )
    .await;
    let mut statuses: Vec<u16> = answers.iter().map(|(s, _)| s.as_u16()).collect();
    statuses.sort_unstable();
    assert_eq!(statuses, vec![201, 409], "{answers:?}");
    let retry = app.order(&user.token, "same", &buy).await;
    assert_eq!(retry.status(), StatusCode::CREATED);
    assert_eq!(app.me(&user.token).await["balance_cents"], 99_000);
    batches(&app).await;
}

#[tokio::test]
async fn many_users_racing_in_batches_keep_every_invariant() {
    let app = batching_app(2).await;
    let players = [app.create_player(700).await, app.create_player(1_300).await];
    let users = app.bulk_users("race", 24, 20_000).await;
    let calls = users.iter().enumerate().flat_map(|(u, user)| {
        let app = &app;
        (0..12).map(move |n| async move {
            let side = if (u + n) % 3 == 0 { "sell" } else { "buy" };
            let body =
                json!({"player_id": players[n % 2], "side": side, "quantity": 1 + (n % 4) as i64});
            let response = app.order(&user.token, &format!("k{n}"), &body).await;
            response.status()
        })
    });
    let statuses = futures_util::future::join_all(calls).await;
    assert!(statuses
        .iter()
        .all(|s| *s == StatusCode::CREATED || *s == StatusCode::CONFLICT));
    assert!(
        statuses
            .iter()
            .filter(|s| **s == StatusCode::CREATED)
            .count()
            > 50
    );
    let (count, sum) = batches(&app).await;
    assert!(
        sum >= 288.0 && count < sum,
        "batched: {count} batches for {sum} orders"
    );
    for user in &users {
        let cash = app.me(&user.token).await["balance_cents"].as_i64().unwrap();
        let rows = app
            .sql(&format!(
                "SELECT coalesce(sum(CASE side WHEN 'buy' THEN -total_cents ELSE total_cents END), 0)::bigint
                   FROM orders WHERE user_id = {}",
                user.id
            ))
            .await;
        assert_eq!(cash, 20_000 + rows[0].get::<_, i64>(0), "user {}", user.id);
        assert!(cash >= 0);
    }
    // Every holding is exactly its orders' net shares.
    let wrong = app
        .sql(
            "SELECT count(*) FROM holdings h FULL JOIN (
                 SELECT user_id, player_id,
                        sum(CASE side WHEN 'buy' THEN quantity ELSE -quantity END)::bigint AS net
                   FROM orders GROUP BY user_id, player_id) o
               ON o.user_id = h.user_id AND o.player_id = h.player_id
              WHERE coalesce(h.quantity, 0) <> coalesce(o.net, 0) OR h.cost_cents < 0",
        )
        .await;
    assert_eq!(
        wrong[0].get::<_, i64>(0),
        0,
        "holdings that differ from their orders"
    );
    assert_eq!(app.audit().await["ok"], true);
}

/// A connection keeps its prepared statements and, under a generic plan,
/// the plan made the first time, when the tables may have been small: once
/// that was a sequential scan of `idempotency_keys` for the key read,
/// which then grew with the table. A batch's statements are planned once
/// per connection (not per batch) and as index probes whatever the sizes
/// were then; its two reads of `orders` are planned per batch.
#[tokio::test]
async fn a_batch_keeps_index_plans_made_while_its_tables_were_small() {
    use matchday::config::{DatabaseSettings, Secret};
    use matchday::domain::{PlayerId, Quantity, Side, UserId};
    use matchday::idempotency::{fingerprint, IdempotencyKey};
    use matchday::trading::{Fairness, NewOrder, OrderStore, PgOrders, ORDERS_ENDPOINT};

    let app = batching_app(0).await;
    let player = app.create_player(1_000).await;
    let alice = app.register("plans_alice").await;
    let bob = app.register("plans_bob").await;
    // One connection, so that every batch runs on the one examined after.
    let pool = matchday::db::pool(&DatabaseSettings {
        url: Secret::new(app.database_url.clone()),
        max_connections: 1,
    })
    .expect("pool");
    let store = PgOrders::new(pool.clone(), Fairness::LOCK);
    let order = |user: &User, n: usize| NewOrder {
        user: UserId(user.id),
        player: PlayerId(player),
        side: Side::Buy,
        quantity: Quantity::new(1).expect("a quantity"),
        limit: None,
        key: IdempotencyKey::parse(&format!("plans-{}-{n}", user.id)).expect("a key"),
        fingerprint: fingerprint(ORDERS_ENDPOINT, &format!("{player}:buy:1")),
    };
    // One key stored and counted: a one-page table, which a sequential
    // scan reads for less than an index probe costs.
    let first = store.place(&order(&alice, 100)).await.expect("placed");
    assert!(first.outcome.is_ok(), "{:?}", first.outcome);
    pool.get()
        .await
        .expect("the pool's connection")
        .batch_execute("ANALYZE idempotency_keys")
        .await
        .expect("analyze");
    let before = key_table_sequential_scans(&pool).await;
    for n in 0..12 {
        let answers = store
            .place_batch(vec![order(&alice, n), order(&bob, n)])
            .await;
        for answer in answers {
            let placed = answer.expect("placed");
            assert!(placed.outcome.is_ok(), "batch {n}: {:?}", placed.outcome);
        }
    }
    let connection = pool.get().await.expect("the pool's connection");
    let plans = connection
        .query(
            "SELECT statement, generic_plans, custom_plans FROM pg_prepared_statements
              WHERE NOT from_sql",
            &[],
        )
        .await
        .expect("prepared statements");
    let plans_of = |text: &str| {
        let row = plans
            .iter()
            .find(|row| row.get::<_, &str>(0).contains(text))
            .unwrap_or_else(|| panic!("no statement with {text:?} prepared on the connection"));
        (row.get::<_, i64>(1), row.get::<_, i64>(2))
    };
    // The first execution on a new connection may go out before the
    // batch's settings take effect; every later one is generic.
    let (generic, _) = plans_of("FROM idempotency_keys k");
    assert!(
        generic >= 11,
        "the key read, planned once: {generic} generic plans"
    );
    let (generic, _) = plans_of("UPDATE holdings h");
    assert_eq!(generic, 12, "the holdings write, planned once");
    let (generic, custom) = plans_of("LEFT JOIN LATERAL");
    assert_eq!(
        (generic, custom),
        (0, 12),
        "the users read, planned per batch"
    );
    drop(connection);
    let after = key_table_sequential_scans(&pool).await;
    // Kept, a sequential scan would count once a batch. The app's purge of
    // expired keys at startup may be counted late, once.
    assert!(
        after - before <= 1,
        "the batches read idempotency_keys by sequential scans: {before} -> {after}"
    );
}

/// `idempotency_keys`' sequential scans so far, with the counts of the
/// pool's one backend flushed first (a backend flushes before it next says
/// it is ready).
async fn key_table_sequential_scans(pool: &deadpool_postgres::Pool) -> i64 {
    let connection = pool.get().await.expect("the pool's connection");
    connection
        .batch_execute("SELECT pg_stat_force_next_flush()")
        .await
        .expect("flush");
    connection
        .query_one(
            "SELECT seq_scan FROM pg_stat_user_tables WHERE relname = 'idempotency_keys'",
            &[],
        )
        .await
        .expect("table statistics")
        .get(0)
}

/// Under `void_window` a sale's proceeds are not spendable until final.
/// The batch reads them for every user it touches (not through the
/// one-by-one path's guard): two buys in one batch that the cash can pay
/// only with the provisional proceeds fill once.
#[tokio::test]
async fn a_batch_does_not_spend_provisional_proceeds() {
    use matchday::config::FairnessPolicy;

    let mut settings = test_settings().await;
    settings.trading.batch_max_orders = 64;
    settings.trading.batch_wait_ms = 300;
    settings.trading.batch_executors = 1;
    settings.trading.fairness_policy = FairnessPolicy::VoidWindow;
    settings.trading.lock_seconds = 0;
    settings.trading.max_feed_lag_seconds = 3;
    let app = spawn_app_with(settings).await;
    let player = app.create_player(100).await;
    let other = app.create_player(100).await;
    let users = app.bulk_users("proceeds", 1, 10_000).await;
    let user = &users[0];
    // Ten shares, final after the 3 s window; five sold: 500 of proceeds,
    // provisional for the next 3 s.
    app.trade(user, "buy", player, 10, "seed").await;
    tokio::time::sleep(std::time::Duration::from_millis(3_100)).await;
    app.trade(user, "sell", player, 5, "sale").await;
    let cash = app.me(&user.token).await["balance_cents"]
        .as_i64()
        .expect("a balance");
    let proceeds = 500;
    assert_eq!(cash, 10_000 - 1_000 + proceeds);
    // One buy fits in the spendable cash; two only with the proceeds.
    let price = (cash - proceeds) / 2 + 1;
    assert!(price <= cash - proceeds && 2 * price <= cash);
    app.sql(&format!(
        "UPDATE players SET price_cents = {price} WHERE id = {other}"
    ))
    .await;
    let buy = json!({"player_id": other, "side": "buy", "quantity": 1});
    two_buys_make_one_batch_one_short_of_funds(&app, user, &buy).await;
    assert_eq!(app.audit().await["ok"], true);
}
