//! The traffic: traders who register and then buy, sell and join drops; an
//! admin feed pushing match events; an admin opening a new drop every few
//! seconds. Every operation runs until it has a final answer and is
//! recorded for the checker.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use crate::client::{record, Kind, Sale, Sent, Shared, User};
use crate::helpers::PASSWORD;

/// Operations each registered user makes before its worker registers the
/// next one (so registrations go on throughout the run).
const OPS_PER_USER: usize = 20;
const DROP_UNITS: i64 = 40;
const DROP_PRICE_CENTS: i64 = 700;
const DROP_EVERY: Duration = Duration::from_secs(5);

const EVENT_KINDS: [&str; 6] = [
    "goal",
    "assist",
    "save",
    "yellow_card",
    "shot_on_target",
    "shot_off_target",
];

/// Sleeps up to `total`, waking early when the run stops.
async fn nap(shared: &Shared, total: Duration) {
    let step = Duration::from_millis(100);
    let mut slept = Duration::ZERO;
    while slept < total && !shared.stopping() {
        tokio::time::sleep(step).await;
        slept += step;
    }
}

/// Registers `chaos_<worker>_<n>`. A retry that finds the name taken by its
/// own earlier attempt logs in instead. None when the run stops first or no
/// answer ever came (the record says so).
async fn register(shared: &Shared, worker: usize, n: usize) -> Option<usize> {
    let username = format!("chaos_{worker}_{n}");
    let body = json!({"username": username, "password": PASSWORD});
    let done = shared
        .run(
            record(
                Kind::Register,
                None,
                String::new(),
                "/api/v1/auth/register".into(),
                body.clone(),
            ),
            None,
        )
        .await;
    let (status, answer) = done.answer.clone()?;
    let uncertain = done.unanswered + done.try_again > 0;
    let token = match status {
        201 => answer["token"].as_str()?.to_string(),
        // Taken by this very registration's earlier attempt; the checker
        // flags a 409 with no earlier attempt.
        409 if uncertain => loop {
            match shared
                .send(
                    None,
                    reqwest::Method::POST,
                    "/api/v1/auth/login",
                    None,
                    None,
                    Some(&body),
                )
                .await
            {
                Sent::Answered(200, login) => break login["token"].as_str()?.to_string(),
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        },
        _ => return None,
    };
    let mut users = shared.users.lock().expect("users");
    users.push(User {
        username,
        token,
        start_balance_cents: crate::STARTING_BALANCE_CENTS,
    });
    let index = users.len() - 1;
    drop(users);
    // The registration's record names its user.
    let mut records = shared.records.lock().expect("records");
    if let Some(last) = records
        .iter_mut()
        .rev()
        .find(|r| r.kind == Kind::Register && r.body["username"] == body["username"])
    {
        last.user = Some(index);
    }
    Some(index)
}

/// A trader: registers a user, makes [`OPS_PER_USER`] random orders and
/// drop purchases with it, and starts over, until the run stops.
pub async fn trader(shared: Arc<Shared>, worker: usize, players: Vec<i64>, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    for generation in 0.. {
        if shared.stopping() {
            return;
        }
        let Some(u) = register(&shared, worker, generation).await else {
            continue;
        };
        let token = shared.user(u).token;
        // Shares bought and not yet sold, so sells are mostly possible.
        let mut held: BTreeMap<i64, i64> = BTreeMap::new();
        for n in 0..OPS_PER_USER {
            if shared.stopping() {
                return;
            }
            let key = format!("w{worker}-g{generation}-{n}");
            let sale = shared.sales.lock().expect("sales").last().cloned();
            let roll = rng.gen_range(0..100);
            let sellable: Vec<(i64, i64)> = held
                .iter()
                .filter(|(_, q)| **q > 0)
                .map(|(p, q)| (*p, *q))
                .collect();
            let op = if roll < 30 && sale.is_some() {
                let sale = sale.as_ref().map_or(0, |s| s.sale_id);
                record(
                    Kind::Purchase,
                    Some(u),
                    key,
                    format!("/api/v1/sales/{sale}/purchases"),
                    json!({"quantity": rng.gen_range(1..=3)}),
                )
            } else if roll < 60 && !sellable.is_empty() {
                let (player, quantity) = sellable[rng.gen_range(0..sellable.len())];
                record(
                    Kind::Sell,
                    Some(u),
                    key,
                    "/api/v1/orders".into(),
                    json!({"player_id": player, "side": "sell",
                           "quantity": rng.gen_range(1..=quantity)}),
                )
            } else {
                let player = players[rng.gen_range(0..players.len())];
                record(
                    Kind::Buy,
                    Some(u),
                    key,
                    "/api/v1/orders".into(),
                    json!({"player_id": player, "side": "buy",
                           "quantity": rng.gen_range(1..=4)}),
                )
            };
            let done = shared.run(op, Some(&token)).await;
            if let Some((201, fill)) = &done.answer {
                let player = fill["player_id"].as_i64().unwrap_or(0);
                let quantity = fill["quantity"].as_i64().unwrap_or(0);
                let sign = if done.kind == Kind::Sell { -1 } else { 1 };
                *held.entry(player).or_default() += sign * quantity;
            }
        }
    }
}

/// The feed: a match event on a random trading player every 700 ms, each
/// with a new provider id, sent until answered (a resend is `duplicate`).
pub async fn feed(shared: Arc<Shared>, players: Vec<i64>, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    for n in 0.. {
        nap(&shared, Duration::from_millis(700)).await;
        if shared.stopping() {
            return;
        }
        let body = json!({
            "event_id": format!("chaos-{n}"),
            "match_id": "chaos",
            "player_id": players[rng.gen_range(0..players.len())],
            "kind": EVENT_KINDS.choose(&mut rng).copied().unwrap_or("goal"),
            "occurred_at": chrono::Utc::now().to_rfc3339(),
            "minute": n % 90,
        });
        let op = record(
            Kind::Event,
            None,
            String::new(),
            "/api/v1/admin/feed/events".into(),
            body,
        );
        shared.run(op, shared.admin()).await;
    }
}

/// A new drop on the next of `players` every [`DROP_EVERY`]. Creating a
/// sale has no idempotency key, so an attempt without an answer is looked
/// up by name before it is sent again.
pub async fn drops(shared: Arc<Shared>, players: Vec<i64>) {
    for (n, player) in players.into_iter().enumerate() {
        if shared.stopping() {
            return;
        }
        let name = format!("chaos drop {n}");
        let body = json!({"player_id": player, "name": name, "total_units": DROP_UNITS,
                          "unit_price_cents": DROP_PRICE_CENTS, "max_per_user": 6});
        let mut op = record(
            Kind::NewDrop,
            None,
            String::new(),
            "/api/v1/admin/sales".into(),
            body.clone(),
        );
        let created: Option<Value> = loop {
            match shared
                .send(
                    Some(Kind::NewDrop),
                    reqwest::Method::POST,
                    "/api/v1/admin/sales",
                    shared.admin(),
                    None,
                    Some(&body),
                )
                .await
            {
                Sent::Answered(201, sale) => {
                    op.answer = Some((201, sale.clone()));
                    break Some(sale);
                }
                Sent::Answered(status, error) if crate::client::is_final(status, &error) => {
                    op.answer = Some((status, error));
                    break None;
                }
                Sent::Answered(..) => op.try_again += 1,
                Sent::NoAnswer => op.unanswered += 1,
            }
            if op.unanswered + op.try_again > 200 {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            let listed = shared.get("/api/v1/sales", None).await;
            let found = listed
                .as_ref()
                .and_then(Value::as_array)
                .and_then(|sales| sales.iter().find(|s| s["name"] == name.as_str()).cloned());
            if let Some(sale) = found {
                op.answer = Some((201, sale.clone()));
                break Some(sale);
            }
        };
        shared.records.lock().expect("records").push(op);
        if let Some(sale) = created {
            shared.sales.lock().expect("sales").push(Sale {
                sale_id: sale["sale_id"].as_i64().unwrap_or(0),
            });
        }
        nap(&shared, DROP_EVERY).await;
    }
}
