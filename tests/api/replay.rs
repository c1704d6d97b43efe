//! The built-in feed: the bundled real match, and a provider correction.

use std::time::Duration;

use matchday::config::{FeedSource, ReplayFormat};
use serde_json::Value;

use crate::helpers::*;

/// Waits until the feed has applied `count` events (or gives up).
async fn wait_for_events(app: &TestApp, count: i64) -> i64 {
    let mut seen = 0;
    for _ in 0..100 {
        seen = app.sql("SELECT count(*) FROM feed_events").await[0].get::<_, i64>(0);
        if seen >= count {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    seen
}

async fn kind_count(app: &TestApp, kind: &str) -> i64 {
    app.sql(&format!(
        "SELECT count(*) FROM feed_events WHERE kind = '{kind}' AND event_id NOT LIKE '%:deleted'"
    ))
    .await[0]
        .get(0)
}

#[tokio::test]
async fn the_bundled_real_match_replays_end_to_end() {
    let mut settings = test_settings().await;
    settings.feed.source = FeedSource::Replay;
    settings.feed.replay_speed = 20_000.0;
    settings.feed.replay_loop = false;
    let app = spawn_app_with(settings).await;
    // 60 events from the file: 1 goal, 1 assist, 5 + 5 shots on target and
    // saves, 20 off target, 9 yellow cards, 9 + 9 substitutions, 1 clean sheet.
    assert_eq!(wait_for_events(&app, 60).await, 60);
    for (kind, count) in [
        ("goal", 1),
        ("assist", 1),
        ("shot_on_target", 5),
        ("save", 5),
        ("shot_off_target", 20),
        ("yellow_card", 9),
        ("red_card", 0),
        ("substituted_on", 9),
        ("substituted_off", 9),
        ("clean_sheet", 1),
    ] {
        assert_eq!(kind_count(&app, kind).await, count, "{kind}");
    }
    // Players came from the match information: both squads.
    let players: Value = app.players().await;
    let players = players.as_array().unwrap();
    assert!(players.len() >= 36, "{}", players.len());
    let scorer = players
        .iter()
        .find(|p| p["name"] == "Kwadwo Duah")
        .expect("the scorer");
    assert_eq!(scorer["team"], "1. FC Nürnberg");
    // The goal raised the scorer's price, and he is locked after it.
    let goal = app
        .sql("SELECT price_before, price_after, player_id FROM feed_events WHERE kind = 'goal'")
        .await;
    let (before, after): (i64, i64) = (goal[0].get(0), goal[0].get(1));
    assert!(after > before, "{before} -> {after}");
    assert_eq!(goal[0].get::<_, i64>(2), scorer["id"].as_i64().unwrap());
    assert!(scorer["epoch"].as_i64().unwrap() >= 1);
}

const META: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<PutDataRequest><MatchInformation>
  <General MatchId="DFL-MAT-TEST" KickoffTime="2024-05-01T18:30:00.000+02:00"/>
  <Teams>
    <Team TeamId="H" TeamName="Home"><Players>
      <Player PersonId="H-ST" Shortname="Home Striker" Starting="true" PlayingPosition="STZ"/>
    </Players></Team>
    <Team TeamId="A" TeamName="Away"><Players>
      <Player PersonId="A-GK" Shortname="Away Keeper" Starting="true" PlayingPosition="TW"/>
    </Players></Team>
  </Teams>
</MatchInformation></PutDataRequest>"#;

/// A goal, then the provider's `Delete` of that same message.
const EVENTS: &str = r#"<?xml version="1.0"?>
<PutDataRequest>
<Event EventId="1" EventTime="2024-05-01T18:30:00.000+02:00" MatchId="DFL-MAT-TEST"><KickOff GameSection="firstHalf"><Play Player="H-ST"><Pass/></Play></KickOff></Event>
<Event EventId="2" EventTime="2024-05-01T18:31:00.000+02:00" MatchId="DFL-MAT-TEST"><ShotAtGoal Team="H" Player="H-ST"><SuccessfulShot/></ShotAtGoal></Event>
<Event EventId="2" EventTime="2024-05-01T18:31:30.000+02:00" MatchId="DFL-MAT-TEST"><Delete/></Event>
</PutDataRequest>"#;

#[tokio::test]
async fn a_deleted_goal_has_its_price_effect_withdrawn() {
    let dir = std::env::temp_dir().join(format!("matchday-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("events.xml"), EVENTS).unwrap();
    std::fs::write(dir.join("meta.xml"), META).unwrap();
    let mut settings = test_settings().await;
    settings.feed.source = FeedSource::Replay;
    settings.feed.replay_format = ReplayFormat::Sportec;
    settings.feed.replay_file = dir.join("events.xml").display().to_string();
    settings.feed.replay_lineups = dir.join("meta.xml").display().to_string();
    settings.feed.replay_speed = 1_000.0;
    settings.feed.replay_loop = false;
    settings.feed.starting_price_cents = 1_000;
    let app = spawn_app_with(settings).await;
    // The goal, its correction, and the away keeper's clean sheet (the
    // only goal was withdrawn).
    assert_eq!(wait_for_events(&app, 3).await, 3);
    assert_eq!(kind_count(&app, "clean_sheet").await, 1);
    let rows = app
        .sql(
            "SELECT event_id, price_before, price_after, reverted_by FROM feed_events
              WHERE kind = 'goal' ORDER BY applied_at",
        )
        .await;
    let goal_id: String = rows[0].get(0);
    assert!(goal_id.ends_with("sportec:2:goal"), "{goal_id}");
    assert_eq!(
        rows[0].get::<_, Option<String>>(3),
        Some(format!("{goal_id}:deleted"))
    );
    assert_eq!(rows[0].get::<_, i64>(1), 1_000);
    assert!(rows[0].get::<_, i64>(2) > 1_000);
    assert_eq!(
        rows[1].get::<_, i64>(2),
        1_000,
        "the correction restores the price"
    );
    let players: Value = app.players().await;
    let striker = players
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "Home Striker")
        .unwrap();
    assert_eq!(striker["price_cents"], 1_000);
    assert_eq!(
        striker["epoch"], 2,
        "the goal and its correction are both events"
    );
    // The recent-events list shows the goal as withdrawn and its correction
    // as one.
    let events: Value = app
        .get(&format!("/api/v1/players/{}/events", striker["id"]), None)
        .await
        .json()
        .await
        .unwrap();
    let listed: Vec<(&str, bool, bool)> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["event_id"].as_str().unwrap(),
                e["correction"].as_bool().unwrap(),
                e["reverted"].as_bool().unwrap(),
            )
        })
        .collect();
    let correction_id = format!("{goal_id}:deleted");
    assert_eq!(
        listed,
        [
            (correction_id.as_str(), true, false),
            (goal_id.as_str(), false, true)
        ]
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn the_simulator_creates_its_players_and_moves_prices() {
    let mut settings = test_settings().await;
    settings.feed.source = FeedSource::Simulator;
    settings.feed.simulator_players = 12;
    settings.feed.simulator_events_per_minute = 1_200;
    let app = spawn_app_with(settings).await;
    assert!(wait_for_events(&app, 10).await >= 10);
    let players: Value = app.players().await;
    assert_eq!(players.as_array().unwrap().len(), 12);
}
