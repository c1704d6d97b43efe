//! Trades and drop purchases spread over every replica at once: each
//! replica prices and reserves on its own, and the books still balance.

use std::time::{Duration, Instant};

use futures_util::future::join_all;
use serde_json::json;

use crate::cluster::*;
use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn trades_and_drop_purchases_spread_over_every_replica_keep_the_books_balanced() {
    let cluster = Cluster::start(3, &[]).await;
    let admin = cluster.app(0);
    let players = [
        admin.create_player(700).await,
        admin.create_player(1_900).await,
    ];
    let dropped = admin.create_player(500).await;
    // 40 units for a crowd asking for up to 3 × 2 × 30 = 180.
    let sale = admin.create_drop(dropped, 40, 250, None).await["sale_id"]
        .as_i64()
        .expect("sale_id");
    let start_cash = 20_000;
    let users = admin.bulk_users("spread", 30, start_cash).await;

    let deadline = Instant::now() + Duration::from_secs(4);
    let cluster = &cluster;
    let tallies = join_all(users.iter().enumerate().map(|(u, user)| async move {
        // (cash spent on orders, units bought in the drop, requests per replica)
        let mut cash_delta = 0i64;
        let mut purchases = 0;
        let mut per_replica = [0usize; 3];
        let mut n = 0usize;
        while Instant::now() < deadline {
            // Each user walks the replicas, so its requests land on all.
            let replica = (u + n) % 3;
            let app = cluster.app(replica);
            per_replica[replica] += 1;
            n += 1;
            let key = format!("u{u}-{n}");
            if n <= 2 {
                let (status, body) =
                    status_and_body(app.purchase(&user.token, sale, &key, 3).await).await;
                match status {
                    202 => purchases += 1,
                    409 => assert_eq!(body["error"]["code"], "sold_out", "{body}"),
                    other => panic!("purchase answered {other}: {body}"),
                }
                continue;
            }
            let side = if n.is_multiple_of(3) { "sell" } else { "buy" };
            let body = json!({"player_id": players[n % 2], "side": side, "quantity": 1 + n % 3});
            let (status, body) = status_and_body(app.order(&user.token, &key, &body).await).await;
            match status {
                201 => {
                    let total = body["total_cents"].as_i64().expect("total_cents");
                    cash_delta += if side == "buy" { -total } else { total };
                }
                409 => {
                    let code = body["error"]["code"].as_str().unwrap_or("");
                    assert!(
                        code == "insufficient_funds" || code == "insufficient_holdings",
                        "{body}"
                    );
                }
                other => panic!("order answered {other}: {body}"),
            }
        }
        (cash_delta, purchases, per_replica)
    }))
    .await;

    for n in 0..3 {
        let served: usize = tallies.iter().map(|t| t.2[n]).sum();
        assert!(served >= 30, "replica {n} served only {served} requests");
    }
    let accepted: i64 = tallies.iter().map(|t| t.1).sum();
    assert!(
        accepted * 3 <= 40,
        "{accepted} purchases of 3 accepted from 40 units"
    );

    // Settlement may fail a purchase (a buyer spent their cash on orders):
    // its units go back. Wait until none is in flight.
    let audit = wait_until_settled(admin, sale, Duration::from_secs(30)).await;
    assert_eq!(audit["consistent"], true, "{audit}");
    let completed = audit["completed_units"].as_i64().expect("completed_units");
    assert!(
        (1..=40).contains(&completed),
        "{completed} of 40 units sold"
    );
    assert_eq!(
        completed + audit["remaining_units"].as_i64().unwrap_or(-1),
        40
    );

    // Each replica reads the same books, and they balance.
    for n in 0..3 {
        let report = cluster.app(n).audit().await;
        assert_eq!(report["ok"], true, "audit through replica {n}: {report}");
    }
    // Every user's cash is exactly what their fills and completed purchases
    // say, and never negative.
    for (user, (cash_delta, _, _)) in users.iter().zip(&tallies) {
        let me = cluster.app(2).me(&user.token).await;
        let bought: i64 = cluster
            .app(1)
            .purchases(&user.token, sale)
            .await
            .iter()
            .filter(|p| p["status"] == "completed")
            .map(|p| p["quantity"].as_i64().unwrap_or(0) * 250)
            .sum();
        let balance = me["balance_cents"].as_i64().expect("balance_cents");
        assert_eq!(balance, start_cash + cash_delta - bought, "{me}");
        assert!(balance >= 0 && me["held_cents"] == 0, "{me}");
    }
}
