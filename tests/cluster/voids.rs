//! `void_window` across replicas: a fill made through one replica is voided
//! by an event pushed through another, in the event's transaction, and the
//! owner's socket on a third replica is told.

use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use serde_json::json;

use crate::cluster::*;
use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_event_on_one_replica_voids_a_fill_made_on_another_and_a_third_tells_the_owner() {
    let cluster = Cluster::start(
        3,
        &[
            ("MATCHDAY__TRADING__FAIRNESS_POLICY", "void_window"),
            ("MATCHDAY__TRADING__LOCK_SECONDS", "0"),
        ],
    )
    .await;
    let player = cluster.app(0).create_player(1_000).await;
    let courtsider = cluster.app(0).register("courtsider").await;
    let mut socket = cluster.app(2).ws(Some(&courtsider.token)).await;
    let before = cluster.app(2).me(&courtsider.token).await["balance_cents"].clone();

    let happened = Utc::now();
    let (status, bought) = status_and_body(
        cluster
            .app(1)
            .order(
                &courtsider.token,
                "ahead",
                &json!({"player_id": player, "side": "buy", "quantity": 7}),
            )
            .await,
    )
    .await;
    assert_eq!(
        (status, &bought["status"]),
        (201, &json!("provisional")),
        "{bought}"
    );
    let (status, applied) = status_and_body(
        cluster
            .app(0)
            .post_json(
                "/api/v1/admin/feed/events",
                Some(ADMIN_TOKEN),
                &json!({"event_id": "cluster-void", "match_id": "m1", "player_id": player,
                        "kind": "goal", "minute": 3,
                        "occurred_at": happened.to_rfc3339_opts(SecondsFormat::Millis, true)}),
            )
            .await,
    )
    .await;
    assert!((200..300).contains(&status), "{status}: {applied}");

    // The owner's socket, on the replica that took neither request.
    let voided = loop {
        let message = socket.expect("order", Duration::from_secs(5)).await;
        if message["status"] == "voided" {
            break message;
        }
    };
    assert_eq!(voided["order_id"], bought["order_id"]);
    assert!(voided["reason"]
        .as_str()
        .expect("reason")
        .contains("cluster-void"));
    let id = bought["order_id"].as_i64().expect("order_id");
    let (status, read) = status_and_body(
        cluster
            .app(2)
            .get(&format!("/api/v1/orders/{id}"), Some(&courtsider.token))
            .await,
    )
    .await;
    assert_eq!((status, &read["status"]), (200, &json!("voided")));
    assert_eq!(
        cluster.app(1).me(&courtsider.token).await["balance_cents"],
        before
    );
    assert_eq!(cluster.app(0).audit().await["ok"], true);
}
