//! Drops (flash sales): more buyers than units, retries, Redis losing its
//! state, settlement workers dying, the waitlist, back-pressure.
//!
//! Races fire every purchase at once and then check invariants once
//! settlement is done: no unit sold twice or beyond `total_units`, a buyer
//! charged exactly for the purchases that completed, and the sale's books
//! (Postgres and the Redis inventory counter) agreeing.

use std::collections::HashSet;
use std::future::Future;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use rand::seq::SliceRandom;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::*;

const SECOND: Duration = Duration::from_secs(1);
/// How long settlement of a whole drop may take.
const SETTLE: Duration = Duration::from_secs(20);

/// A user who buys `quantity` units of a drop, and their cash before it.
#[derive(Clone, Debug)]
struct Buyer {
    user: User,
    opening_cents: i64,
    quantity: i64,
}

async fn buyers(app: &TestApp, prefix: &str, count: usize, cash: i64, quantity: i64) -> Vec<Buyer> {
    app.bulk_users(prefix, count, cash)
        .await
        .into_iter()
        .map(|user| Buyer {
            user,
            opening_cents: cash,
            quantity,
        })
        .collect()
}

fn id(value: &Value, field: &str) -> i64 {
    value[field]
        .as_i64()
        .unwrap_or_else(|| panic!("{field} in {value}"))
}

/// A purchase's answer; `429`s are retried with the same key (a 429 is not
/// remembered, so the retry executes) after a short sleep.
async fn purchase_answered(
    app: &TestApp,
    token: &str,
    sale: i64,
    key: &str,
    quantity: i64,
) -> (StatusCode, Value) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let response = app.purchase(token, sale, key, quantity).await;
        let status = response.status();
        let body: Value = response.json().await.expect("purchase answers JSON");
        if status != StatusCode::TOO_MANY_REQUESTS {
            return (status, body);
        }
        assert_eq!(body["error"]["code"], "rate_limited", "{body}");
        assert!(Instant::now() < deadline, "still 429 after 30 s: {body}");
        let wait = body["error"]["retry_after_ms"]
            .as_u64()
            .unwrap_or(100)
            .clamp(10, 250);
        tokio::time::sleep(Duration::from_millis(wait)).await;
    }
}

/// Every buyer's purchase at once (each with its own key).
async fn fire(app: &TestApp, sale: i64, buyers: &[Buyer]) -> Vec<(StatusCode, Value)> {
    join_all(
        buyers
            .iter()
            .map(|b| purchase_answered(app, &b.user.token, sale, "drop", b.quantity)),
    )
    .await
}

/// The purchase ids of the 202s; every other answer must be `409 sold_out`.
fn accepted(sale: i64, answers: &[(StatusCode, Value)]) -> HashSet<i64> {
    let mut ids = HashSet::new();
    for (status, body) in answers {
        match *status {
            StatusCode::ACCEPTED => {
                assert_eq!(body["sale_id"], sale, "{body}");
                assert!(ids.insert(id(body, "purchase_id")), "id twice: {body}");
            }
            StatusCode::CONFLICT => assert_eq!(body["error"]["code"], "sold_out", "{body}"),
            other => panic!("unexpected {other}: {body}"),
        }
    }
    ids
}

fn holding(portfolio: &Value, player: i64) -> i64 {
    portfolio["holdings"]
        .as_array()
        .expect("holdings")
        .iter()
        .find(|h| h["player_id"] == player)
        .map(|h| h["quantity"].as_i64().expect("quantity"))
        .unwrap_or(0)
}

/// Polls the sale audit until the Redis counter exists and equals
/// `remaining_units` (reconciliation may take an interval), returning it.
async fn wait_for_counter(app: &TestApp, sale: i64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let audit = app.sale_audit(sale).await;
        if !audit["inventory_counter"].is_null()
            && audit["inventory_counter"] == audit["remaining_units"]
            && audit["consistent"] == true
        {
            return audit;
        }
        assert!(
            Instant::now() < deadline,
            "inventory counter never matched Postgres: {audit}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits for settlement, then checks every guarantee of a drop whose only
/// purchasers are `buyers` (each bought once, `accepted` are the 202s):
/// every purchase terminal; a purchase fails iff its buyer could not pay;
/// share numbers unique within 1..=total; each buyer charged exactly for what
/// completed, nothing held, the completed units in their holdings; the
/// sale's units adding up and its Redis counter rebuilt; the books balanced.
/// Returns the completed units.
async fn assert_settled_books(
    app: &TestApp,
    sale: &Value,
    buyers: &[Buyer],
    accepted: &HashSet<i64>,
) -> i64 {
    let sale_id = id(sale, "sale_id");
    let player = id(sale, "player_id");
    let total = id(sale, "total_units");
    let price = id(sale, "unit_price_cents");
    wait_until_settled(app, sale_id, SETTLE).await;

    let mut listed = HashSet::new();
    let mut shares = HashSet::new();
    let mut completed_units = 0;
    for buyer in buyers {
        let purchases = app.purchases(&buyer.user.token, sale_id).await;
        let mut bought = 0;
        for purchase in &purchases {
            assert_eq!(purchase["sale_id"], sale_id, "{purchase}");
            assert!(listed.insert(id(purchase, "purchase_id")), "{purchase}");
            let quantity = id(purchase, "quantity");
            let affordable = buyer.opening_cents >= quantity * price;
            match purchase["status"].as_str() {
                Some("completed") => {
                    assert!(affordable, "completed without the cash: {purchase}");
                    assert_eq!(purchase["failure_reason"], Value::Null, "{purchase}");
                    let numbers = purchase["share_numbers"].as_array().expect("share_numbers");
                    assert_eq!(numbers.len() as i64, quantity, "{purchase}");
                    for number in numbers {
                        let number = number.as_i64().expect("share number");
                        assert!((1..=total).contains(&number), "{purchase}");
                        assert!(shares.insert(number), "share {number} sold twice");
                    }
                    bought += quantity;
                }
                Some("failed") => {
                    assert!(!affordable, "a buyer who could pay failed: {purchase}");
                    assert_eq!(purchase["failure_reason"], "insufficient_funds");
                    assert_eq!(purchase["share_numbers"], Value::Null, "{purchase}");
                }
                _ => panic!("not terminal after settlement: {purchase}"),
            }
        }
        let portfolio = app.portfolio(&buyer.user.token).await;
        assert_eq!(
            portfolio["cash_cents"],
            buyer.opening_cents - bought * price,
            "charged other than for completed purchases: {purchases:?}"
        );
        assert_eq!(portfolio["held_cents"], 0, "{purchases:?}");
        assert_eq!(app.me(&buyer.user.token).await["held_cents"], 0);
        assert_eq!(holding(&portfolio, player), bought, "{portfolio}");
        completed_units += bought;
    }
    // Every 202 is a purchase its owner sees, and nothing else was created.
    assert_eq!(&listed, accepted);
    assert!(
        completed_units <= total,
        "{completed_units} of {total} sold"
    );

    let audit = wait_for_counter(app, sale_id).await;
    assert_eq!(audit["total_units"], total, "{audit}");
    assert_eq!(audit["completed_units"], completed_units, "{audit}");
    assert_eq!(audit["held_units"], 0, "{audit}");
    assert_eq!(audit["reserved_units"], 0, "{audit}");
    assert_eq!(audit["remaining_units"], total - completed_units, "{audit}");
    let after = app.sale(sale_id).await;
    assert_eq!(after["remaining_units"], total - completed_units, "{after}");
    let status = if completed_units == total {
        "sold_out"
    } else {
        "open"
    };
    assert_eq!(after["status"], status, "{after}");
    assert_eq!(app.audit().await["ok"], true);
    completed_units
}

// ---------------------------------------------------------------------------
// Races
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_buyers_for_twenty_units_never_oversell_and_only_completed_purchases_are_charged() {
    let app = spawn_app().await;
    let price = 1_000;
    let player = app.create_player(1_500).await;
    let sale = app.create_drop(player, 20, price, None).await;
    let sale_id = id(&sale, "sale_id");
    let mut all = buyers(&app, "solvent", 45, 5 * price, 1).await;
    // Short of cash: they reserve units that must come back when they fail.
    all.extend(buyers(&app, "short", 15, price - 1, 1).await);
    all.shuffle(&mut rand::thread_rng());

    let answers = fire(&app, sale_id, &all).await;

    let accepted = accepted(sale_id, &answers);
    // Units are only ever given back, never lost: the first 20 are taken.
    assert!(accepted.len() >= 20, "{answers:?}");
    let completed = assert_settled_books(&app, &sale, &all, &accepted).await;
    // Every solvent buyer served completed; every short one failed.
    let solvent_served = all
        .iter()
        .zip(&answers)
        .filter(|(buyer, (status, _))| {
            *status == StatusCode::ACCEPTED && buyer.opening_cents >= price
        })
        .count();
    assert_eq!(completed, solvent_served as i64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_concurrent_purchases_with_one_key_make_one_purchase() {
    let app = spawn_app().await;
    let price = 700;
    let buyer = buyers(&app, "doubletap", 1, 100_000, 2).await.remove(0);
    let player = app.create_player(1_000).await;
    let sale = app.create_drop(player, 10, price, None).await;
    let sale_id = id(&sale, "sale_id");

    let responses = join_all((0..20).map(|_| {
        let app = &app;
        let token = buyer.user.token.clone();
        async move {
            let response = app.purchase(&token, sale_id, "one-key", 2).await;
            let status = response.status();
            let body: Value = response.json().await.unwrap();
            (status, body)
        }
    }))
    .await;

    let accepted: Vec<&Value> = responses
        .iter()
        .filter(|(status, _)| *status == StatusCode::ACCEPTED)
        .map(|(_, body)| body)
        .collect();
    assert!(!accepted.is_empty(), "{responses:?}");
    assert!(
        accepted.iter().all(|b| *b == accepted[0]),
        "bodies differ: {accepted:?}"
    );
    for (status, body) in &responses {
        if *status != StatusCode::ACCEPTED {
            assert_eq!(*status, StatusCode::CONFLICT, "{body}");
            assert_eq!(body["error"]["code"], "request_in_progress", "{body}");
        }
    }
    let purchases = app.purchases(&buyer.user.token, sale_id).await;
    assert_eq!(purchases.len(), 1, "{purchases:?}");
    assert_eq!(purchases[0]["purchase_id"], accepted[0]["purchase_id"]);

    // Settled or not, a retry replays the original 202 and executes nothing.
    let only = HashSet::from([id(accepted[0], "purchase_id")]);
    assert_settled_books(&app, &sale, std::slice::from_ref(&buyer), &only).await;
    let again = app.purchase(&buyer.user.token, sale_id, "one-key", 2).await;
    assert_eq!(again.status(), StatusCode::ACCEPTED);
    assert_eq!(&again.json::<Value>().await.unwrap(), accepted[0]);
    // The same key with another quantity is a different request.
    assert_error(
        app.purchase(&buyer.user.token, sale_id, "one-key", 3).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency_key_reused",
    )
    .await;
    assert_eq!(app.purchases(&buyer.user.token, sale_id).await.len(), 1);
    assert_eq!(app.sale_audit(sale_id).await["completed_units"], 2);
    assert_eq!(
        app.portfolio(&buyer.user.token).await["cash_cents"],
        100_000 - 2 * price
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn max_per_user_holds_when_one_user_races_ten_purchases_with_different_keys() {
    let app = spawn_app().await;
    let price = 500;
    let buyer = buyers(&app, "greedy", 1, 100_000, 1).await.remove(0);
    let player = app.create_player(1_000).await;
    let sale = app.create_drop(player, 100, price, Some(2)).await;
    let sale_id = id(&sale, "sale_id");

    let answers = join_all((0..10).map(|n| {
        let app = &app;
        let token = buyer.user.token.clone();
        async move { purchase_answered(app, &token, sale_id, &format!("k{n}"), 1).await }
    }))
    .await;

    let mut ids = HashSet::new();
    let mut refused = 0;
    for (status, body) in &answers {
        match *status {
            StatusCode::ACCEPTED => assert!(ids.insert(id(body, "purchase_id"))),
            StatusCode::CONFLICT if body["error"]["code"] == "limit_exceeded" => refused += 1,
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!(ids.len(), 2, "{answers:?}");
    assert_eq!(refused, 8, "{answers:?}");
    let purchases = app.purchases(&buyer.user.token, sale_id).await;
    let not_failed: i64 = purchases
        .iter()
        .filter(|p| p["status"] != "failed")
        .map(|p| id(p, "quantity"))
        .sum();
    assert_eq!(not_failed, 2, "{purchases:?}");
    // Completed purchases keep counting.
    assert_eq!(
        assert_settled_books(&app, &sale, std::slice::from_ref(&buyer), &ids).await,
        2
    );
    assert_error(
        app.purchase(&buyer.user.token, sale_id, "later", 1).await,
        StatusCode::CONFLICT,
        "limit_exceeded",
    )
    .await;
}

#[tokio::test]
async fn a_failed_purchase_no_longer_counts_towards_max_per_user() {
    let app = spawn_app().await;
    let price = 1_000;
    let player = app.create_player(1_000).await;
    let sale = app.create_drop(player, 5, price, Some(1)).await;
    let sale_id = id(&sale, "sale_id");
    let short = buyers(&app, "broke", 1, price / 2, 1).await.remove(0);

    let first = app.purchase(&short.user.token, sale_id, "k1", 1).await;
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    wait_until_settled(&app, sale_id, SETTLE).await;
    let purchases = app.purchases(&short.user.token, sale_id).await;
    assert_eq!(purchases[0]["status"], "failed", "{purchases:?}");
    assert_eq!(purchases[0]["failure_reason"], "insufficient_funds");

    // The failed unit neither counts towards the limit nor stays taken.
    assert_eq!(wait_for_counter(&app, sale_id).await["remaining_units"], 5);
    assert_eq!(app.sale(sale_id).await["remaining_units"], 5);
    let second = app.purchase(&short.user.token, sale_id, "k2", 1).await;
    assert_eq!(second.status(), StatusCode::ACCEPTED);
}

// ---------------------------------------------------------------------------
// Redis losing its state
// ---------------------------------------------------------------------------

/// A drop of 30 units: 20 buyers, then `lose_redis`, then 40 more (a fifth
/// of each wave short of cash). Nothing is oversold, every purchase settles,
/// and the Redis inventory is rebuilt to match Postgres.
async fn a_drop_across_a_redis_loss(app: &TestApp, lose_redis: impl Future<Output = ()>) {
    let price = 1_000;
    let player = app.create_player(1_000).await;
    let sale = app.create_drop(player, 30, price, None).await;
    let sale_id = id(&sale, "sale_id");
    let mut first = buyers(app, "early", 16, 3 * price, 1).await;
    first.extend(buyers(app, "earlyshort", 4, price - 1, 1).await);
    first.shuffle(&mut rand::thread_rng());
    let mut second = buyers(app, "late", 32, 3 * price, 1).await;
    second.extend(buyers(app, "lateshort", 8, price - 1, 1).await);
    second.shuffle(&mut rand::thread_rng());

    let early = accepted(sale_id, &fire(app, sale_id, &first).await);
    assert_eq!(early.len(), 20, "30 units, 20 buyers: all are served");

    lose_redis.await;

    let late = accepted(sale_id, &fire(app, sale_id, &second).await);
    // At least the 10 units nobody took are still sold after the rebuild.
    assert!(
        late.len() >= 10,
        "only {} served after the loss",
        late.len()
    );
    let mut all = first;
    all.extend(second);
    let accepted: HashSet<i64> = early.union(&late).copied().collect();
    assert_settled_books(app, &sale, &all, &accepted).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redis_flush_in_the_middle_of_a_drop_neither_oversells_nor_loses_a_purchase() {
    let settings = test_settings().await;
    let redis_url = settings.redis.url.expose().to_string();
    let prefix = settings.redis.key_prefix.clone();
    let app = spawn_app_with(settings).await;
    a_drop_across_a_redis_loss(&app, async {
        let deleted = delete_redis_keys(&redis_url, &prefix).await;
        assert!(deleted > 0, "the drop kept nothing in Redis under {prefix}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redis_restart_in_the_middle_of_a_drop_neither_oversells_nor_loses_a_purchase() {
    let mut redis = RedisServer::start().await;
    let mut settings = test_settings().await;
    settings.redis.url = matchday::config::Secret::new(redis.url());
    let app = spawn_app_with(settings).await;
    app.wait_until_ready(Duration::from_secs(15)).await;
    a_drop_across_a_redis_loss(&app, async {
        redis.restart_empty().await;
        app.wait_until_ready(Duration::from_secs(15)).await;
    })
    .await;
}

// ---------------------------------------------------------------------------
// Settlement
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn purchases_held_by_a_worker_that_died_before_capture_complete_exactly_once() {
    let mut settings = test_settings().await;
    settings.sales.settlement_rate_per_sec = 0;
    let first = spawn_app_with(settings.clone()).await;
    let price = 1_000;
    let opening = 10_000;
    let player = first.create_player(2_000).await;
    let sale = first.create_drop(player, 10, price, None).await;
    let sale_id = id(&sale, "sale_id");
    let users = first.bulk_users("holder", 4, opening).await;
    let buyers: Vec<Buyer> = users
        .into_iter()
        .zip([1, 2, 3, 1])
        .map(|(user, quantity)| Buyer {
            user,
            opening_cents: opening,
            quantity,
        })
        .collect();
    let answers = fire(&first, sale_id, &buyers).await;
    let ids = accepted(sale_id, &answers);
    assert_eq!(ids.len(), 4, "{answers:?}");

    // HOLD, then the worker dies before CAPTURE.
    assert_eq!(hold_only(&first.database_url, 100).await, 4);
    for (buyer, (_, answer)) in buyers.iter().zip(&answers) {
        let path = format!(
            "/api/v1/sales/{sale_id}/purchases/{}",
            id(answer, "purchase_id")
        );
        let purchase: Value = first
            .get(&path, Some(&buyer.user.token))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(purchase["status"], "held", "{purchase}");
        let me = first.me(&buyer.user.token).await;
        assert_eq!(me["held_cents"], price * buyer.quantity, "{me}");
        let portfolio = first.portfolio(&buyer.user.token).await;
        assert_eq!(portfolio["cash_cents"], opening, "held cash is still cash");
        assert_eq!(portfolio["held_cents"], price * buyer.quantity);
        assert_eq!(holding(&portfolio, player), 0);
    }
    let audit = first.sale_audit(sale_id).await;
    assert_eq!(audit["held_units"], 7, "{audit}");
    assert_eq!(audit["reserved_units"], 0, "{audit}");
    first.stop().await;
    drop(first);

    // Two new replicas on the same database and Redis race to finish them.
    settings.sales.settlement_rate_per_sec = 1_000;
    let second = spawn_app_with(settings.clone()).await;
    let _third = spawn_app_with(settings).await;
    let completed = assert_settled_books(&second, &sale, &buyers, &ids).await;
    assert_eq!(completed, 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_purchase_gives_its_unit_to_the_first_waitlisted_user() {
    let mut settings = test_settings().await;
    settings.sales.settlement_rate_per_sec = 0;
    let paused = spawn_app_with(settings.clone()).await;
    let price = 1_000;
    let player = paused.create_player(1_000).await;
    let sale = paused.create_drop(player, 1, price, None).await;
    let sale_id = id(&sale, "sale_id");
    let a = buyers(&paused, "alice", 1, price / 2, 1).await.remove(0);
    let b = buyers(&paused, "bob", 1, 10 * price, 1).await.remove(0);
    let c = buyers(&paused, "carol", 1, 10 * price, 1).await.remove(0);
    let mut b_socket = paused.ws(Some(&b.user.token)).await;
    let mut c_socket = paused.ws(Some(&c.user.token)).await;
    for socket in [&mut b_socket, &mut c_socket] {
        socket.send(json!({"op": "ping"})).await;
        socket.expect("pong", SECOND).await;
    }

    // A (who cannot pay) takes the only unit; B and C queue.
    let a_purchase = purchase_accepted(&paused, &a, sale_id).await;
    let sold_out = paused.sale(sale_id).await;
    assert_eq!(sold_out["status"], "sold_out", "{sold_out}");
    assert_eq!(sold_out["remaining_units"], 0);
    assert_error(
        paused.purchase(&b.user.token, sale_id, "try", 1).await,
        StatusCode::CONFLICT,
        "sold_out",
    )
    .await;
    assert_eq!(
        waitlist(&paused, &b, sale_id).await,
        (StatusCode::CREATED, 1)
    );
    assert_eq!(waitlist(&paused, &b, sale_id).await, (StatusCode::OK, 1));
    assert_eq!(
        waitlist(&paused, &c, sale_id).await,
        (StatusCode::CREATED, 2)
    );

    // Settlement starts (another replica): A fails, the unit goes to B.
    settings.sales.settlement_rate_per_sec = 500;
    let settling = spawn_app_with(settings).await;
    let deadline = Instant::now() + SETTLE;
    let granted = loop {
        let mine = settling.purchases(&b.user.token, sale_id).await;
        if mine.iter().any(|p| p["status"] == "completed") {
            break mine;
        }
        assert!(Instant::now() < deadline, "B was never served: {mine:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    wait_until_settled(&settling, sale_id, SETTLE).await;

    let a_after: Value = settling
        .get(
            &format!("/api/v1/sales/{sale_id}/purchases/{a_purchase}"),
            Some(&a.user.token),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(a_after["status"], "failed", "{a_after}");
    assert_eq!(a_after["failure_reason"], "insufficient_funds");
    assert_eq!(granted.len(), 1, "{granted:?}");
    let grant = &granted[0];
    assert_ne!(grant["purchase_id"], a_purchase);
    assert_eq!(grant["quantity"], 1);
    assert_eq!(grant["share_numbers"], json!([1]));
    assert_eq!(grant["failure_reason"], Value::Null);

    for (buyer, units) in [(&a, 0), (&b, 1), (&c, 0)] {
        let portfolio = settling.portfolio(&buyer.user.token).await;
        assert_eq!(
            portfolio["cash_cents"],
            buyer.opening_cents - units * price,
            "{portfolio}"
        );
        assert_eq!(portfolio["held_cents"], 0);
        assert_eq!(holding(&portfolio, player), units);
    }
    assert_eq!(
        settling.purchases(&c.user.token, sale_id).await,
        Vec::<Value>::new()
    );
    let audit = wait_for_counter(&settling, sale_id).await;
    assert_eq!(audit["completed_units"], 1, "{audit}");
    assert_eq!(audit["remaining_units"], 0, "{audit}");
    assert_eq!(settling.sale(sale_id).await["status"], "sold_out");
    assert_eq!(settling.audit().await["ok"], true);

    // B's socket (on the paused replica) was told; C's was not.
    let deadline = tokio::time::Instant::now() + 5 * SECOND;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let message = b_socket.expect("purchase", left).await;
        assert_eq!(message["sale_id"], sale_id, "{message}");
        if message["purchase_id"] == grant["purchase_id"] {
            break;
        }
    }
    loop {
        match c_socket.read(Duration::from_millis(500)).await {
            WsRead::Json(message) => {
                assert_ne!(message["type"], "purchase", "C was told: {message}")
            }
            WsRead::Timeout => break,
            closed => panic!("{closed:?}"),
        }
    }
}

/// Joins the waitlist: the status and the position.
async fn waitlist(app: &TestApp, buyer: &Buyer, sale: i64) -> (StatusCode, i64) {
    let response = app.join_waitlist(&buyer.user.token, sale).await;
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    (status, id(&body, "position"))
}

/// One 202'd purchase of `buyer.quantity`, returning its id.
async fn purchase_accepted(app: &TestApp, buyer: &Buyer, sale: i64) -> i64 {
    let (status, body) =
        purchase_answered(app, &buyer.user.token, sale, "first", buyer.quantity).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    id(&body, "purchase_id")
}

#[tokio::test]
async fn joining_the_waitlist_of_a_sale_that_is_not_sold_out_is_409() {
    let app = spawn_app().await;
    let user = app.register("eager").await;
    let player = app.create_player(1_000).await;
    let sale = app.create_drop(player, 3, 1_000, None).await;
    let sale_id = id(&sale, "sale_id");
    assert_error(
        app.join_waitlist(&user.token, sale_id).await,
        StatusCode::CONFLICT,
        "not_sold_out",
    )
    .await;
    let scheduled = created(
        app.create_sale(
            &json!({"player_id": player, "name": "Later", "total_units": 1,
                                "unit_price_cents": 100, "starts_at": in_an_hour()}),
        )
        .await,
    )
    .await;
    assert_error(
        app.join_waitlist(&user.token, id(&scheduled, "sale_id"))
            .await,
        StatusCode::CONFLICT,
        "not_sold_out",
    )
    .await;
}

// ---------------------------------------------------------------------------
// Back-pressure
// ---------------------------------------------------------------------------

fn retry_after_seconds(response: &reqwest::Response) -> i64 {
    response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i64>().ok())
        .expect("Retry-After header in whole seconds")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_above_the_in_flight_bound_gets_429s_that_change_nothing() {
    let mut settings = test_settings().await;
    settings.sales.max_in_flight = 1;
    settings.sales.reservation_linger_ms = 200;
    let app = spawn_app_with(settings).await;
    let player = app.create_player(1_000).await;
    let sale = app.create_drop(player, 100, 100, None).await;
    let sale_id = id(&sale, "sale_id");
    let buyers = buyers(&app, "burst", 30, 100_000, 1).await;

    let answers = join_all(buyers.iter().map(|buyer| {
        let app = &app;
        async move {
            let response = app.purchase(&buyer.user.token, sale_id, "burst", 1).await;
            let status = response.status();
            let retry_after =
                (status == StatusCode::TOO_MANY_REQUESTS).then(|| retry_after_seconds(&response));
            let body: Value = response.json().await.unwrap();
            (status, retry_after, body)
        }
    }))
    .await;

    let mut accepted = 0;
    let mut limited = Vec::new();
    for (n, (status, retry_after, body)) in answers.iter().enumerate() {
        match *status {
            StatusCode::ACCEPTED => accepted += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                assert_eq!(body["error"]["code"], "rate_limited", "{body}");
                assert!(retry_after.unwrap() >= 1, "{retry_after:?}");
                assert!(body["error"]["retry_after_ms"].as_i64().unwrap() >= 1);
                limited.push(n);
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert!(accepted >= 1, "{answers:?}");
    assert!(!limited.is_empty(), "no 429 with one request in flight");
    let mut existing = 0;
    for (n, buyer) in buyers.iter().enumerate() {
        let mine = app.purchases(&buyer.user.token, sale_id).await;
        if limited.contains(&n) {
            assert_eq!(mine, Vec::<Value>::new(), "a 429 created a purchase");
        }
        existing += mine.len();
    }
    assert_eq!(existing, accepted);

    // A 429 is not remembered: the same key, once there is room, executes.
    for &n in limited.iter().take(3) {
        let (status, body) =
            purchase_answered(&app, &buyers[n].user.token, sale_id, "burst", 1).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        assert_eq!(app.purchases(&buyers[n].user.token, sale_id).await.len(), 1);
    }
}

#[tokio::test]
async fn a_user_past_their_rate_limit_gets_429_and_no_purchase() {
    let mut settings = test_settings().await;
    settings.limits.user_per_sec = 1;
    settings.limits.user_burst = 1;
    let app = spawn_app_with(settings).await;
    let user = app.bulk_users("hasty", 1, 100_000).await.remove(0);
    let player = app.create_player(1_000).await;
    let sale = app.create_drop(player, 10, 100, None).await;
    let sale_id = id(&sale, "sale_id");

    let first = app.purchase(&user.token, sale_id, "k1", 1).await;
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    let first: Value = first.json().await.unwrap();
    let response = app.purchase(&user.token, sale_id, "k2", 1).await;
    assert!(retry_after_seconds(&response) >= 1);
    let body = assert_error(response, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    let wait = body["error"]["retry_after_ms"].as_i64().unwrap();
    assert!((1..=1_000).contains(&wait), "{wait}");
    // Read without the user's token (not rate limited): nothing was taken.
    assert_eq!(app.sale(sale_id).await["remaining_units"], 9);

    tokio::time::sleep(Duration::from_millis(wait as u64 + 50)).await;
    let second = app.purchase(&user.token, sale_id, "k2", 1).await;
    assert_eq!(second.status(), StatusCode::ACCEPTED);
    let second: Value = second.json().await.unwrap();
    assert_ne!(second["purchase_id"], first["purchase_id"]);
    assert_eq!(app.sale(sale_id).await["remaining_units"], 8);
}

// ---------------------------------------------------------------------------
// Contract
// ---------------------------------------------------------------------------

/// The body of a 201, asserting the status.
async fn created(response: reqwest::Response) -> Value {
    let status = response.status();
    let body: Value = response.json().await.expect("json");
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body
}

fn in_an_hour() -> String {
    (chrono::Utc::now() + chrono::Duration::hours(1))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The same sale: every field equal, `starts_at` the same instant to the
/// millisecond (one rendering may carry more digits than another).
fn assert_same_sale(actual: &Value, expected: &Value) {
    for field in [
        "sale_id",
        "player_id",
        "name",
        "total_units",
        "remaining_units",
        "unit_price_cents",
        "max_per_user",
        "status",
    ] {
        assert_eq!(
            actual[field], expected[field],
            "{field}: {actual} vs {expected}"
        );
    }
    let instant = |sale: &Value| {
        let text = sale["starts_at"].as_str().expect("starts_at");
        chrono::DateTime::parse_from_rfc3339(text)
            .unwrap_or_else(|e| panic!("starts_at {text}: {e}"))
            .timestamp_millis()
    };
    assert_eq!(instant(actual), instant(expected));
}

#[tokio::test]
async fn a_created_drop_is_open_listed_and_readable_by_anyone() {
    let app = spawn_app().await;
    let player = app.create_player(1_000).await;
    let sale = created(
        app.create_sale(
            &json!({"player_id": player, "name": "Opening Drop", "total_units": 50,
                             "unit_price_cents": 1_250, "max_per_user": 3}),
        )
        .await,
    )
    .await;
    let sale_id = id(&sale, "sale_id");
    assert_eq!(sale["player_id"], player);
    assert_eq!(sale["name"], "Opening Drop");
    assert_eq!(sale["total_units"], 50);
    assert_eq!(sale["remaining_units"], 50);
    assert_eq!(sale["unit_price_cents"], 1_250);
    assert_eq!(sale["max_per_user"], 3);
    assert_eq!(sale["status"], "open");
    let starts_at = sale["starts_at"].as_str().expect("starts_at");
    assert!(
        chrono::DateTime::parse_from_rfc3339(starts_at).is_ok(),
        "{starts_at}"
    );
    let other = app.create_drop(player, 5, 100, None).await;

    assert_same_sale(&app.sale(sale_id).await, &sale);
    let listed: Value = app.get("/api/v1/sales", None).await.json().await.unwrap();
    let listed = listed.as_array().expect("an array of sales");
    let mut ids: Vec<i64> = listed.iter().map(|s| id(s, "sale_id")).collect();
    ids.sort_unstable();
    assert_eq!(ids, vec![sale_id, id(&other, "sale_id")]);
    for listed in listed {
        let created = if id(listed, "sale_id") == sale_id {
            &sale
        } else {
            &other
        };
        assert_same_sale(listed, created);
    }
    assert_error(
        app.get("/api/v1/sales/987654", None).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
}

#[tokio::test]
async fn creating_a_drop_validates_units_prices_and_the_per_user_limit() {
    let app = spawn_app().await;
    let user = app.register("notadmin").await;
    let player = app.create_player(1_000).await;
    let valid = json!({"player_id": player, "name": "Drop", "total_units": 10,
                       "unit_price_cents": 100, "max_per_user": 2});
    for (field, value) in [
        ("total_units", 0),
        ("total_units", -1),
        ("unit_price_cents", 0),
        ("unit_price_cents", -100),
        ("max_per_user", 0),
        ("max_per_user", -2),
    ] {
        let mut body = valid.clone();
        body[field] = json!(value);
        let response = app.create_sale(&body).await;
        assert_error(response, StatusCode::UNPROCESSABLE_ENTITY, "invalid_input").await;
    }
    let mut unknown = valid.clone();
    unknown["player_id"] = json!(424_242);
    assert_error(
        app.create_sale(&unknown).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    assert_error(
        app.post_json("/api/v1/admin/sales", Some(&user.token), &valid)
            .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    assert_error(
        app.post_json("/api/v1/admin/sales", None, &valid).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;
    let listed: Value = app.get("/api/v1/sales", None).await.json().await.unwrap();
    assert_eq!(listed, json!([]), "a refused drop was created");
}

#[tokio::test]
async fn a_scheduled_drop_refuses_purchases_with_sale_not_open() {
    let app = spawn_app().await;
    let user = app.register("early_bird").await;
    let player = app.create_player(1_000).await;
    let starts_at = in_an_hour();
    let sale = created(
        app.create_sale(
            &json!({"player_id": player, "name": "Tomorrow", "total_units": 5,
                             "unit_price_cents": 100, "starts_at": starts_at}),
        )
        .await,
    )
    .await;
    let sale_id = id(&sale, "sale_id");
    assert_eq!(sale["status"], "scheduled");
    assert_eq!(sale["remaining_units"], 5);
    let echoed = chrono::DateTime::parse_from_rfc3339(sale["starts_at"].as_str().unwrap()).unwrap();
    let asked = chrono::DateTime::parse_from_rfc3339(&starts_at).unwrap();
    assert_eq!(echoed, asked);

    assert_error(
        app.purchase(&user.token, sale_id, "k", 1).await,
        StatusCode::CONFLICT,
        "sale_not_open",
    )
    .await;
    assert_eq!(app.sale(sale_id).await["remaining_units"], 5);
    assert_eq!(
        app.purchases(&user.token, sale_id).await,
        Vec::<Value>::new()
    );
    assert_eq!(app.me(&user.token).await["held_cents"], 0);
}

#[tokio::test]
async fn checks_apply_in_the_order_sale_not_open_then_limit_exceeded_then_sold_out() {
    let app = spawn_app().await;
    let users = app.bulk_users("order", 2, 100_000).await;
    let player = app.create_player(1_000).await;

    // Not open, above the limit and above what remains: sale_not_open.
    let scheduled = created(
        app.create_sale(
            &json!({"player_id": player, "name": "Later", "total_units": 1,
                                "unit_price_cents": 100, "max_per_user": 1,
                                "starts_at": in_an_hour()}),
        )
        .await,
    )
    .await;
    assert_error(
        app.purchase(&users[0].token, id(&scheduled, "sale_id"), "a", 2)
            .await,
        StatusCode::CONFLICT,
        "sale_not_open",
    )
    .await;

    // Open, above the limit and above what remains: limit_exceeded.
    let small = id(&app.create_drop(player, 1, 100, Some(1)).await, "sale_id");
    assert_error(
        app.purchase(&users[0].token, small, "b", 2).await,
        StatusCode::CONFLICT,
        "limit_exceeded",
    )
    .await;
    // The one unit goes; its buyer, now at the limit, is told limit_exceeded,
    // everyone else sold_out.
    assert_eq!(
        app.purchase(&users[0].token, small, "c", 1).await.status(),
        StatusCode::ACCEPTED
    );
    assert_error(
        app.purchase(&users[0].token, small, "d", 1).await,
        StatusCode::CONFLICT,
        "limit_exceeded",
    )
    .await;
    assert_error(
        app.purchase(&users[1].token, small, "e", 1).await,
        StatusCode::CONFLICT,
        "sold_out",
    )
    .await;
}

#[tokio::test]
async fn a_quantity_above_what_remains_is_sold_out_with_no_partial_fill() {
    let app = spawn_app().await;
    let users = app.bulk_users("partial", 3, 100_000).await;
    let player = app.create_player(1_000).await;
    let sale = app.create_drop(player, 5, 100, None).await;
    let sale_id = id(&sale, "sale_id");
    assert_eq!(
        app.purchase(&users[0].token, sale_id, "k", 3)
            .await
            .status(),
        StatusCode::ACCEPTED
    );
    assert_error(
        app.purchase(&users[1].token, sale_id, "k", 3).await,
        StatusCode::CONFLICT,
        "sold_out",
    )
    .await;
    assert_eq!(
        app.purchases(&users[1].token, sale_id).await,
        Vec::<Value>::new()
    );
    let sale_now = app.sale(sale_id).await;
    assert_eq!(sale_now["remaining_units"], 2, "{sale_now}");
    assert_eq!(sale_now["status"], "open");

    assert_eq!(
        app.purchase(&users[1].token, sale_id, "k2", 2)
            .await
            .status(),
        StatusCode::ACCEPTED
    );
    let sale_now = app.sale(sale_id).await;
    assert_eq!(sale_now["remaining_units"], 0, "{sale_now}");
    assert_eq!(sale_now["status"], "sold_out");
    assert_error(
        app.purchase(&users[2].token, sale_id, "k", 1).await,
        StatusCode::CONFLICT,
        "sold_out",
    )
    .await;
}

#[tokio::test]
async fn a_purchase_is_visible_to_its_owner_only() {
    let app = spawn_app().await;
    let owner = app.register("owner").await;
    let other = app.register("snoop").await;
    let player = app.create_player(1_000).await;
    let sale_id = id(&app.create_drop(player, 10, 100, None).await, "sale_id");
    let other_sale = id(&app.create_drop(player, 10, 100, None).await, "sale_id");
    let response = app.purchase(&owner.token, sale_id, "mine", 2).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let purchase: Value = response.json().await.unwrap();
    assert_eq!(purchase["sale_id"], sale_id);
    assert_eq!(purchase["quantity"], 2);
    assert_eq!(purchase["status"], "reserved");
    assert_eq!(purchase["share_numbers"], Value::Null);
    assert_eq!(purchase["failure_reason"], Value::Null);
    let purchase_id = id(&purchase, "purchase_id");
    let path = format!("/api/v1/sales/{sale_id}/purchases/{purchase_id}");

    let seen: Value = app
        .get(&path, Some(&owner.token))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(seen["purchase_id"], purchase_id);
    assert_eq!(seen["quantity"], 2);
    assert_error(
        app.get(&path, Some(&other.token)).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    assert_error(
        app.get(&path, None).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;
    for wrong in [
        format!("/api/v1/sales/{other_sale}/purchases/{purchase_id}"),
        format!("/api/v1/sales/{sale_id}/purchases/{}", purchase_id + 1_000),
    ] {
        assert_error(
            app.get(&wrong, Some(&owner.token)).await,
            StatusCode::NOT_FOUND,
            "not_found",
        )
        .await;
    }
    assert_eq!(
        app.purchases(&other.token, sale_id).await,
        Vec::<Value>::new()
    );
    let mine = app.purchases(&owner.token, sale_id).await;
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0]["purchase_id"], purchase_id);

    // Unknown sales.
    assert_error(
        app.purchase(&owner.token, 987_654, "nowhere", 1).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
}

#[tokio::test]
async fn a_purchase_without_an_idempotency_key_is_400_and_changes_nothing() {
    let app = spawn_app().await;
    let user = app.register("keyless").await;
    let player = app.create_player(1_000).await;
    let sale_id = id(&app.create_drop(player, 10, 100, None).await, "sale_id");
    let response = app
        .post_json(
            &format!("/api/v1/sales/{sale_id}/purchases"),
            Some(&user.token),
            &json!({"quantity": 1}),
        )
        .await;
    assert_error(
        response,
        StatusCode::BAD_REQUEST,
        "idempotency_key_required",
    )
    .await;
    assert_eq!(app.sale(sale_id).await["remaining_units"], 10);
    assert_eq!(
        app.purchases(&user.token, sale_id).await,
        Vec::<Value>::new()
    );
}

#[tokio::test]
async fn completed_units_become_holdings_that_can_be_sold() {
    let app = spawn_app().await;
    let user = app.register("collector").await;
    let player = app.create_player(2_000).await;
    let sale = app.create_drop(player, 5, 1_500, None).await;
    let sale_id = id(&sale, "sale_id");
    let response = app.purchase(&user.token, sale_id, "buy", 3).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    wait_until_settled(&app, sale_id, SETTLE).await;
    let purchases = app.purchases(&user.token, sale_id).await;
    assert_eq!(purchases[0]["status"], "completed", "{purchases:?}");
    let mut numbers: Vec<i64> = purchases[0]["share_numbers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_i64().unwrap())
        .collect();
    numbers.sort_unstable();
    numbers.dedup();
    assert_eq!(numbers.len(), 3, "{purchases:?}");
    assert!(numbers.iter().all(|n| (1..=5).contains(n)), "{numbers:?}");

    let portfolio = app.portfolio(&user.token).await;
    assert_eq!(holding(&portfolio, player), 3);
    assert_eq!(portfolio["cash_cents"], 1_000_000 - 4_500);
    assert_eq!(portfolio["held_cents"], 0);
    let sold = app
        .order(
            &user.token,
            "sell",
            &json!({"player_id": player, "side": "sell", "quantity": 2}),
        )
        .await;
    assert_eq!(sold.status(), StatusCode::CREATED);
    let portfolio = app.portfolio(&user.token).await;
    assert_eq!(holding(&portfolio, player), 1);
    assert_eq!(portfolio["cash_cents"], 1_000_000 - 4_500 + 4_000);
    assert_eq!(app.audit().await["ok"], true);
}

// ---------------------------------------------------------------------------
// WebSocket
// ---------------------------------------------------------------------------

#[tokio::test]
async fn the_sale_channel_sends_a_snapshot_then_fewer_remaining_units_after_a_purchase() {
    let app = spawn_app().await;
    let user = app.register("watcher").await;
    let player = app.create_player(1_000).await;
    let sale_id = id(&app.create_drop(player, 10, 100, None).await, "sale_id");
    let channel = format!("sale:{sale_id}");
    let mut ws = app.ws(None).await;
    ws.send(json!({"op": "subscribe", "channels": [channel]}))
        .await;
    let subscribed = ws.expect("subscribed", SECOND).await;
    assert_eq!(subscribed["channels"], json!([channel]));
    let snapshot = subscribed["snapshot"].as_array().expect("snapshot");
    assert_eq!(snapshot.len(), 1, "{subscribed}");
    assert_eq!(snapshot[0]["channel"], channel);
    let data = &snapshot[0]["data"];
    assert_eq!(data["sale_id"], sale_id, "{data}");
    assert_eq!(data["remaining_units"], 10, "{data}");
    assert_eq!(data["status"], "open", "{data}");
    ws.send(json!({"op": "subscribe", "channels": ["sale:987654"]}))
        .await;
    let error = ws.expect("error", SECOND).await;
    assert_eq!(error["code"], "invalid_channel", "{error}");

    let response = app.purchase(&user.token, sale_id, "watched", 3).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let update = sale_update_reaching(&mut ws, sale_id, 7).await;
    assert_eq!(update["status"], "open", "{update}");

    let response = app.purchase(&user.token, sale_id, "the-rest", 7).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let update = sale_update_reaching(&mut ws, sale_id, 0).await;
    assert_eq!(update["status"], "sold_out", "{update}");
}

/// Reads `sale` messages until one shows `remaining` units (none may show
/// fewer on the way), within 2 s.
async fn sale_update_reaching(ws: &mut WsClient, sale: i64, remaining: i64) -> Value {
    let deadline = Instant::now() + 2 * SECOND;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let update = ws.expect("sale", left).await;
        assert_eq!(update["sale_id"], sale, "{update}");
        let units = id(&update, "remaining_units");
        assert!(units >= remaining, "{update}");
        if units == remaining {
            return update;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sale_updates_are_conflated_and_the_latest_state_arrives() {
    let mut settings = test_settings().await;
    // Settlement paused: only purchases move the inventory.
    settings.sales.settlement_rate_per_sec = 0;
    let app = spawn_app_with(settings).await;
    let player = app.create_player(1_000).await;
    let sale_id = id(&app.create_drop(player, 40, 100, None).await, "sale_id");
    let buyers = buyers(&app, "crowd", 40, 10_000, 1).await;
    let mut ws = app.ws(None).await;
    ws.send(json!({"op": "subscribe", "channels": [format!("sale:{sale_id}")]}))
        .await;
    ws.expect("subscribed", SECOND).await;

    // 40 purchases spread over ~400 ms: unconflated, ~40 messages.
    let purchases = join_all(buyers.iter().enumerate().map(|(n, buyer)| {
        let app = &app;
        async move {
            tokio::time::sleep(Duration::from_millis(10 * n as u64)).await;
            purchase_answered(app, &buyer.user.token, sale_id, "crowd", 1).await
        }
    }));
    let listen = async {
        let mut seen: Vec<(Instant, Value)> = Vec::new();
        loop {
            let update = ws.expect("sale", 3 * SECOND).await;
            assert_eq!(update["sale_id"], sale_id, "{update}");
            let done = update["remaining_units"] == 0;
            seen.push((Instant::now(), update));
            if done {
                break;
            }
        }
        seen
    };
    let (answers, seen) = tokio::join!(purchases, listen);
    assert_eq!(accepted(sale_id, &answers).len(), 40);

    let last = &seen.last().unwrap().1;
    assert_eq!(last["status"], "sold_out", "{last}");
    let remaining: Vec<i64> = seen
        .iter()
        .map(|(_, u)| u["remaining_units"].as_i64().unwrap())
        .collect();
    assert!(
        remaining.windows(2).all(|w| w[0] >= w[1]),
        "remaining units went up with settlement paused: {remaining:?}"
    );
    let span = seen.last().unwrap().0 - seen[0].0;
    let allowed = span.as_millis() as usize / 100 + 2;
    assert!(
        seen.len() <= allowed,
        "{} sale messages in {span:?}: not conflated ({remaining:?})",
        seen.len()
    );
}

// ---------------------------------------------------------------------------
// Regressions found in review
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_retry_after_redis_forgot_the_key_replays_the_202_instead_of_refusing_it() {
    let settings = test_settings().await;
    let redis_url = settings.redis.url.expose().to_string();
    let prefix = settings.redis.key_prefix.clone();
    let mut settings = settings;
    settings.sales.settlement_rate_per_sec = 0;
    let app = spawn_app_with(settings).await;
    let player = app.create_player(1_000).await;
    let sale = id(&app.create_drop(player, 1, 500, Some(1)).await, "sale_id");
    let buyer = app.bulk_users("late", 1, 10_000).await.remove(0);
    let first = app.purchase(&buyer.token, sale, "late-key", 1).await;
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    let first: Value = first.json().await.unwrap();
    // Redis keeps purchase keys only briefly (Postgres keeps them for good).
    let forgotten = delete_redis_keys(&redis_url, &format!("{prefix}purchase-key:")).await;
    assert_eq!(forgotten, 1);

    // The sale is sold out and the buyer at their limit: only the stored
    // answer can be right.
    let retry = app.purchase(&buyer.token, sale, "late-key", 1).await;
    assert_eq!(retry.status(), StatusCode::ACCEPTED);
    let retry: Value = retry.json().await.unwrap();
    assert_eq!(retry["purchase_id"], first["purchase_id"], "{retry}");
    let other_body = app.purchase(&buyer.token, sale, "late-key", 2).await;
    assert_error(
        other_body,
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency_key_reused",
    )
    .await;
    assert_eq!(app.purchases(&buyer.token, sale).await.len(), 1);
}

#[tokio::test]
async fn postgres_refuses_a_purchase_past_max_per_user_when_redis_counts_too_few() {
    let settings = test_settings().await;
    let redis_url = settings.redis.url.expose().to_string();
    let prefix = settings.redis.key_prefix.clone();
    let app = spawn_app_with(settings).await;
    let player = app.create_player(1_000).await;
    let sale = id(&app.create_drop(player, 10, 100, Some(1)).await, "sale_id");
    let buyer = app.bulk_users("over", 1, 10_000).await.remove(0);
    let first = app.purchase(&buyer.token, sale, "over-1", 1).await;
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    // Redis forgets who bought (as after a restart from an older snapshot).
    let forgotten = delete_redis_keys(&redis_url, &format!("{prefix}sale:{sale}:1:users")).await;
    assert_eq!(forgotten, 1);

    let second = app.purchase(&buyer.token, sale, "over-2", 1).await;
    assert_error(second, StatusCode::CONFLICT, "limit_exceeded").await;
    let purchases = app.purchases(&buyer.token, sale).await;
    assert_eq!(purchases.len(), 1, "{purchases:?}");
    // The refused reservation's unit went back, and the counter is rebuilt.
    wait_until_settled(&app, sale, SETTLE).await;
    let audit = wait_for_counter(&app, sale).await;
    assert_eq!(audit["completed_units"], 1, "{audit}");
    assert_eq!(audit["remaining_units"], 9, "{audit}");
    assert_eq!(audit["consistent"], true, "{audit}");
}

#[tokio::test]
async fn two_held_purchases_of_one_user_are_captured_together_and_charged_once_each() {
    let mut settings = test_settings().await;
    settings.sales.settlement_rate_per_sec = 0;
    let paused = spawn_app_with(settings.clone()).await;
    let player = paused.create_player(1_000).await;
    let sale = id(&paused.create_drop(player, 10, 300, None).await, "sale_id");
    let buyer = paused.bulk_users("twice", 1, 10_000).await.remove(0);
    for (key, quantity) in [("twice-1", 1), ("twice-2", 2)] {
        let response = paused.purchase(&buyer.token, sale, key, quantity).await;
        assert_eq!(response.status(), StatusCode::ACCEPTED);
    }
    // Reservations that committed out of id order can both be held before
    // either is captured: arrange exactly that.
    paused
        .sql(&format!(
            "WITH held AS (UPDATE purchases SET status = 'held' WHERE sale_id = {sale}
                            RETURNING user_id, amount_cents)
             UPDATE users u SET held_cents = u.held_cents + h.total
               FROM (SELECT user_id, sum(amount_cents) AS total FROM held GROUP BY user_id) h
              WHERE u.id = h.user_id"
        ))
        .await;
    assert_eq!(paused.me(&buyer.token).await["held_cents"], 900);
    paused.stop().await;

    settings.sales.settlement_rate_per_sec = 1_000;
    let app = spawn_app_with(settings).await;
    wait_until_settled(&app, sale, SETTLE).await;
    let me = app.me(&buyer.token).await;
    assert_eq!(me["balance_cents"], 10_000 - 900, "{me}");
    assert_eq!(me["held_cents"], 0, "{me}");
    assert_eq!(holding(&app.portfolio(&buyer.token).await, player), 3);
    let audit = app.sale_audit(sale).await;
    assert_eq!(audit["completed_units"], 3, "{audit}");
    assert_eq!(audit["consistent"], true, "{audit}");
    assert_eq!(app.audit().await["ok"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_racing_one_drop_never_oversell_nor_pass_max_per_user() {
    let settings = test_settings().await;
    let a = spawn_app_with(settings.clone()).await;
    let b = spawn_app_with(settings).await;
    let player = a.create_player(1_000).await;
    let sale = a.create_drop(player, 30, 100, Some(2)).await;
    let sale_id = id(&sale, "sale_id");
    let buyers = buyers(&a, "pair", 25, 10_000, 1).await;

    // Every buyer tries three units, one at a time with distinct keys,
    // alternating replicas: the limit is 2, so at most 50 units are wanted
    // of the 30 there are.
    let replicas = [&a, &b];
    let mut attempts = Vec::new();
    for (n, buyer) in buyers.iter().enumerate() {
        for k in 0..3 {
            let app = replicas[(n + k) % 2];
            let key = format!("pair-{k}");
            attempts.push(async move {
                let answer = purchase_answered(app, &buyer.user.token, sale_id, &key, 1).await;
                (buyer.user.id, answer)
            });
        }
    }
    let answers = join_all(attempts).await;
    let mut accepted_ids = HashSet::new();
    let mut per_user: std::collections::HashMap<i64, i64> = std::collections::HashMap::new();
    for (user, (status, body)) in &answers {
        match *status {
            StatusCode::ACCEPTED => {
                assert!(accepted_ids.insert(id(body, "purchase_id")), "{body}");
                *per_user.entry(*user).or_default() += 1;
            }
            StatusCode::CONFLICT => {
                let code = body["error"]["code"].as_str().unwrap_or_default();
                assert!(code == "sold_out" || code == "limit_exceeded", "{body}");
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert!(per_user.values().all(|units| *units <= 2), "{per_user:?}");
    assert_eq!(accepted_ids.len(), 30, "every unit sold once");

    let mut expected = Vec::new();
    for buyer in &buyers {
        let bought = per_user.get(&buyer.user.id).copied().unwrap_or(0);
        let mut buyer = buyer.clone();
        buyer.quantity = bought;
        expected.push(buyer);
    }
    let completed = assert_settled_books(&b, &sale, &expected, &accepted_ids).await;
    assert_eq!(completed, 30);
    // Both replicas tell the same story.
    assert_eq!(a.sale(sale_id).await["status"], "sold_out");
    assert_eq!(b.sale(sale_id).await["status"], "sold_out");
}
