//! After the run, with every fault healed: the books against what clients
//! were told.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::Value;

use crate::client::{Kind, Record, Shared};
use crate::helpers::{wait_until_settled, TestApp};

#[derive(Default)]
pub struct Verdict {
    /// Individual comparisons made.
    pub checks: u64,
    pub violations: Vec<String>,
}

impl Verdict {
    fn expect(&mut self, holds: bool, violation: impl FnOnce() -> String) {
        self.checks += 1;
        if !holds {
            self.violations.push(violation());
        }
    }
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("")
}

/// The final answers an operation of each kind may get.
fn answer_allowed(record: &Record, status: u16, body: &Value) -> bool {
    match record.kind {
        Kind::Register => {
            status == 201 || (status == 409 && record.unanswered + record.try_again > 0)
        }
        Kind::Buy | Kind::Sell => {
            status == 201
                || status == 423
                || (status == 409
                    && ["insufficient_funds", "insufficient_holdings"].contains(&code(body)))
        }
        Kind::Purchase => {
            status == 202
                || (status == 409
                    && ["sold_out", "sale_not_open", "limit_exceeded"].contains(&code(body)))
        }
        Kind::Event => status == 202 || (status == 200 && body["duplicate"] == true),
        Kind::NewDrop => status == 201,
    }
}

pub async fn check(shared: &Shared, app: &TestApp) -> Verdict {
    let mut verdict = Verdict::default();
    let records = shared.records.lock().expect("records").clone();
    let users = shared.users.lock().expect("users").clone();

    // Every operation got a final answer, and one its kind may get.
    for record in &records {
        match &record.answer {
            None => verdict.expect(false, || {
                format!(
                    "never answered: {} {} {}",
                    record.kind.name(),
                    record.key,
                    record.body
                )
            }),
            Some((status, body)) => verdict.expect(answer_allowed(record, *status, body), || {
                format!(
                    "{} {} {} answered {status}: {body}",
                    record.kind.name(),
                    record.key,
                    record.body
                )
            }),
        }
    }

    // Every drop settles, consistent, never oversold.
    let sales: Vec<Value> = app
        .get("/api/v1/sales", None)
        .await
        .json()
        .await
        .expect("sales");
    let mut unit_price: BTreeMap<i64, i64> = BTreeMap::new();
    let mut completed_units: BTreeMap<i64, i64> = BTreeMap::new();
    for sale in &sales {
        let id = sale["sale_id"].as_i64().expect("sale_id");
        unit_price.insert(id, sale["unit_price_cents"].as_i64().expect("price"));
        let audit = wait_until_settled(app, id, Duration::from_secs(120)).await;
        let completed = audit["completed_units"].as_i64().unwrap_or(-1);
        completed_units.insert(id, completed);
        verdict.expect(audit["consistent"] == true, || {
            format!("sale {id} inconsistent: {audit}")
        });
        verdict.expect(
            completed <= audit["total_units"].as_i64().unwrap_or(0),
            || format!("sale {id} oversold: {audit}"),
        );
    }
    let audit = app.audit().await;
    verdict.expect(audit["ok"] == true, || format!("audit: {audit}"));

    // What each user was told, from the records.
    let mut told: Vec<Told> = vec![Told::default(); users.len()];
    for record in &records {
        let (Some(u), Some((status, body))) = (record.user, &record.answer) else {
            continue;
        };
        let told = &mut told[u];
        match (record.kind, status) {
            (Kind::Buy | Kind::Sell, 201) => {
                let id = body["order_id"].as_i64().unwrap_or(-1);
                told.orders.insert(id, body.clone());
            }
            (Kind::Purchase, 202) => {
                let id = body["purchase_id"].as_i64().unwrap_or(-1);
                told.purchases
                    .insert(id, body["sale_id"].as_i64().unwrap_or(-1));
            }
            _ => {}
        }
    }

    // The sales each user has any purchase in, from Postgres: only those
    // (and the ones a user was told of) are listed through the API, rather
    // than every user × every sale.
    let mut bought_in: BTreeMap<String, BTreeSet<i64>> = BTreeMap::new();
    for row in app
        .sql(
            "SELECT DISTINCT u.username, p.sale_id FROM purchases p
               JOIN users u ON u.id = p.user_id",
        )
        .await
    {
        bought_in
            .entry(row.get::<_, String>(0))
            .or_default()
            .insert(row.get::<_, i64>(1));
    }

    let mut shares_seen: BTreeMap<i64, BTreeSet<i64>> = BTreeMap::new();
    let mut completed_seen: BTreeMap<i64, i64> = BTreeMap::new();
    for (u, user) in users.iter().enumerate() {
        let token = user.token.as_str();
        let me = app.me(token).await;
        let orders = app
            .orders(token)
            .await
            .as_array()
            .cloned()
            .unwrap_or_default();
        let portfolio = app.portfolio(token).await;
        let name = &user.username;

        // Orders: exactly the fills the user was told of, as told.
        let kept: BTreeMap<i64, &Value> = orders
            .iter()
            .map(|o| (o["order_id"].as_i64().unwrap_or(-1), o))
            .collect();
        verdict.expect(
            kept.keys().collect::<BTreeSet<_>>() == told[u].orders.keys().collect(),
            || {
                format!(
                    "{name}: orders kept {:?}, acknowledged {:?}",
                    kept.keys().collect::<Vec<_>>(),
                    told[u].orders.keys().collect::<Vec<_>>()
                )
            },
        );
        for (id, answer) in &told[u].orders {
            let same = kept.get(id).is_some_and(|kept| {
                [
                    "player_id",
                    "side",
                    "quantity",
                    "price_cents",
                    "total_cents",
                    "epoch",
                ]
                .iter()
                .all(|field| kept[field] == answer[field])
            });
            verdict.expect(same, || {
                format!(
                    "{name}: order {id} kept as {:?}, told {answer}",
                    kept.get(id)
                )
            });
        }

        // Purchases: exactly the acknowledged ones, each settled.
        let mut cash = user.start_balance_cents;
        let mut shares: BTreeMap<i64, i64> = BTreeMap::new();
        for answer in told[u].orders.values() {
            let player = answer["player_id"].as_i64().unwrap_or(-1);
            let quantity = answer["quantity"].as_i64().unwrap_or(0);
            let total = answer["total_cents"].as_i64().unwrap_or(0);
            if answer["side"] == "buy" {
                cash -= total;
                *shares.entry(player).or_default() += quantity;
            } else {
                cash += total;
                *shares.entry(player).or_default() -= quantity;
            }
        }
        let mut kept_purchases = BTreeSet::new();
        let mut touched = bought_in.remove(name).unwrap_or_default();
        touched.extend(told[u].purchases.values());
        for sale in sales.iter().filter(|s| {
            s["sale_id"]
                .as_i64()
                .is_some_and(|id| touched.contains(&id))
        }) {
            let sale_id = sale["sale_id"].as_i64().unwrap_or(-1);
            let player = sale["player_id"].as_i64().unwrap_or(-1);
            for purchase in app.purchases(token, sale_id).await {
                let id = purchase["purchase_id"].as_i64().unwrap_or(-1);
                kept_purchases.insert(id);
                let status = purchase["status"].as_str().unwrap_or("");
                verdict.expect(status == "completed" || status == "failed", || {
                    format!("{name}: purchase {id} left {status}: {purchase}")
                });
                if status == "completed" {
                    let quantity = purchase["quantity"].as_i64().unwrap_or(0);
                    let numbers: Vec<i64> = purchase["share_numbers"]
                        .as_array()
                        .map(|n| n.iter().filter_map(Value::as_i64).collect())
                        .unwrap_or_default();
                    verdict.expect(numbers.len() as i64 == quantity, || {
                        format!("{name}: purchase {id} completed with shares {numbers:?}")
                    });
                    let seen = shares_seen.entry(sale_id).or_default();
                    for number in numbers {
                        verdict.expect(seen.insert(number), || {
                            format!("sale {sale_id}: share {number} sold twice")
                        });
                    }
                    *completed_seen.entry(sale_id).or_default() += quantity;
                    cash -= quantity * unit_price.get(&sale_id).copied().unwrap_or(0);
                    *shares.entry(player).or_default() += quantity;
                }
            }
        }
        verdict.expect(
            kept_purchases.iter().collect::<BTreeSet<_>>()
                == told[u].purchases.keys().collect::<BTreeSet<_>>(),
            || {
                format!(
                    "{name}: purchases kept {kept_purchases:?}, acknowledged {:?}",
                    told[u].purchases.keys().collect::<Vec<_>>()
                )
            },
        );

        // Conservation: cash and every holding follow from what was told.
        verdict.expect(me["balance_cents"].as_i64() == Some(cash), || {
            format!(
                "{name}: balance {} but fills and purchases make {cash}",
                me["balance_cents"]
            )
        });
        verdict.expect(me["held_cents"].as_i64() == Some(0), || {
            format!(
                "{name}: {} cents still held after settlement",
                me["held_cents"]
            )
        });
        let holdings: BTreeMap<i64, i64> = portfolio["holdings"]
            .as_array()
            .map(|h| {
                h.iter()
                    .map(|h| {
                        (
                            h["player_id"].as_i64().unwrap_or(-1),
                            h["quantity"].as_i64().unwrap_or(-1),
                        )
                    })
                    .filter(|(_, q)| *q != 0)
                    .collect()
            })
            .unwrap_or_default();
        shares.retain(|_, q| *q != 0);
        verdict.expect(holdings == shares, || {
            format!("{name}: holdings {holdings:?} but fills and purchases make {shares:?}")
        });
    }

    verdict.expect(bought_in.is_empty(), || {
        format!("purchases by users no client registered: {bought_in:?}")
    });

    // Share numbers each within the drop; completed units as the audit says.
    for (sale_id, seen) in &shares_seen {
        let total = sales
            .iter()
            .find(|s| s["sale_id"] == *sale_id)
            .and_then(|s| s["total_units"].as_i64())
            .unwrap_or(0);
        verdict.expect(seen.iter().all(|n| (1..=total).contains(n)), || {
            format!("sale {sale_id}: share numbers outside 1..={total}: {seen:?}")
        });
    }
    for (sale_id, completed) in &completed_units {
        let seen = completed_seen.get(sale_id).copied().unwrap_or(0);
        verdict.expect(seen == *completed, || {
            format!("sale {sale_id}: audit says {completed} units completed, buyers hold {seen}")
        });
    }

    // Each pushed event applied exactly once: a player's epoch counts them.
    let mut events: BTreeMap<i64, BTreeSet<String>> = BTreeMap::new();
    for record in records.iter().filter(|r| r.kind == Kind::Event) {
        let player = record.body["player_id"].as_i64().unwrap_or(-1);
        let id = record.body["event_id"].as_str().unwrap_or("").to_string();
        events.entry(player).or_default().insert(id);
    }
    for (player, ids) in &events {
        let epoch = app.player(*player).await["epoch"].as_i64();
        verdict.expect(epoch == Some(ids.len() as i64), || {
            format!(
                "player {player}: epoch {epoch:?} after {} events",
                ids.len()
            )
        });
    }
    verdict
}

#[derive(Default, Clone)]
struct Told {
    /// Acknowledged fills by order id, with the answer.
    orders: BTreeMap<i64, Value>,
    /// Acknowledged purchases: id → sale.
    purchases: BTreeMap<i64, i64>,
}
