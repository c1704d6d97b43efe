//! One event, pushed through one replica, reaches sockets on every replica
//! exactly once; exactly one replica ticks.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::future::join_all;

use crate::cluster::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_event_pushed_through_one_replica_reaches_every_replica_once_and_one_replica_ticks() {
    let cluster = Cluster::start(3, &[]).await;
    // One player only ticks; the other scores (and is then locked, so it
    // stops ticking).
    let ticking = cluster.app(0).create_player(100_000).await;
    let scorer = cluster.app(0).create_player(1_000).await;
    let channels = [
        "events".to_string(),
        format!("player:{ticking}"),
        format!("player:{scorer}"),
    ];
    let mut sockets = Vec::new();
    for n in 0..3 {
        sockets.push(subscribed(cluster.app(n), &channels).await);
    }
    cluster.one_leader(Duration::from_secs(10)).await;
    // What queued up while the others subscribed is dropped, so the window
    // below starts now on every socket.
    for ws in &mut sockets {
        frames_for(ws, Duration::from_millis(20)).await;
    }

    let (status, applied) = status_and_body(
        cluster
            .app(1)
            .push_event("cluster-goal", scorer, "goal")
            .await,
    )
    .await;
    assert!((200..300).contains(&status), "{status}: {applied}");
    let window = Duration::from_secs(3);
    let received = join_all(sockets.iter_mut().map(|ws| frames_for(ws, window))).await;
    // Meanwhile no replica has joined the leader.
    cluster.one_leader(Duration::ZERO).await;

    let mut price_at_seq: HashMap<i64, i64> = HashMap::new();
    for (n, frames) in received.iter().enumerate() {
        let events: Vec<_> = frames
            .iter()
            .filter(|(_, f)| f["type"] == "event" && f["event_id"] == "cluster-goal")
            .collect();
        assert_eq!(
            events.len(),
            1,
            "replica {n} delivered the event {} times",
            events.len()
        );
        let event = &events[0].1;
        assert_eq!(event["player_id"], scorer);
        assert_eq!(event["price_cents"], applied["price_cents"]);
        assert_eq!(event["epoch"], 1);

        // The scorer's new price arrives (as the event and maybe a tick of
        // the same seq), never an older one after it.
        ticks_of(scorer, frames);
        let ticks = ticks_of(ticking, frames);
        // One ticker at 100 ms moves seq ~30 in 3 s; two would move it ~60.
        let advance = ticks.last().map_or(0, |t| t.0) - ticks.first().map_or(0, |t| t.0);
        assert!(
            (12..=42).contains(&advance),
            "replica {n}: seq advanced {advance} in {window:?}"
        );
        // Every replica shows the one ticker's prices: a seq means one price.
        for (seq, price, _) in ticks {
            let seen = *price_at_seq.entry(seq).or_insert(price);
            assert_eq!(seen, price, "seq {seq} has two prices");
        }
    }
}
