//! The built-in feed sources (`feed.source`): replaying a real match file
//! in real time × `feed.replay_speed`, or an endless seeded simulation. They
//! run on the leader only and feed events through the same price engine as
//! the push endpoint.
//!
//! Replay is what a live consumer does with the provider's stream: items
//! are taken in arrival order; each is due at its `occurred_at` (scaled) but
//! never before the one that arrived ahead of it, so a late (out-of-order)
//! event is applied late, as it would be live; a `Delete` withdraws the
//! effect of every event its message produced. Each pass over the file is a
//! new run with its own event ids (`run<unix seconds>:…`) and timestamps
//! shifted to now, so looping replays the match again instead of being
//! deduplicated away. A replica that takes over leadership mid-match starts
//! a new run from kick-off.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::watch;

use super::{sportec, statsbomb, EventKind, FeedItem, MatchFeed};
use crate::config::{FeedSettings, FeedSource, ReplayFormat};
use crate::domain::{Cents, PlayerId};
use crate::leader::Leadership;
use crate::pricing::{ListedPlayer, NewEvent, PricingError, PricingService};

/// Why a pass over the feed ended.
enum Ended {
    Finished,
    LostLeadership,
    Shutdown,
}

/// Runs the configured source until `shutdown` flips.
pub async fn run(
    pricing: Arc<PricingService>,
    leadership: Leadership,
    settings: FeedSettings,
    mut shutdown: watch::Receiver<bool>,
) {
    let source = match settings.source {
        FeedSource::None => return,
        FeedSource::Replay => match load(&settings) {
            Ok(feed) => Source::Replay(feed),
            Err(error) => {
                tracing::error!(%error, file = %settings.replay_file, "feed replay disabled");
                return;
            }
        },
        FeedSource::Simulator => Source::Simulator,
    };
    let mut leader = leadership.watch();
    loop {
        // Wait to lead.
        while leader.borrow().is_none() {
            tokio::select! {
                _ = shutdown.changed() => return,
                changed = leader.changed() => if changed.is_err() { return },
            }
        }
        let ended = match &source {
            Source::Replay(feed) => {
                replay_once(&pricing, feed, &settings, &leadership, &mut shutdown).await
            }
            Source::Simulator => simulate(&pricing, &settings, &leadership, &mut shutdown).await,
        };
        match ended {
            Ended::Shutdown => return,
            Ended::LostLeadership => {
                tracing::warn!("feed paused: leadership lost or the database failed");
                tokio::select! {
                    _ = tokio::time::sleep(crate::leader::RETRY_INTERVAL * 2) => {}
                    _ = shutdown.changed() => return,
                }
            }
            Ended::Finished if settings.replay_loop => tracing::info!("replay finished; looping"),
            Ended::Finished => return,
        }
    }
}

enum Source {
    Replay(MatchFeed),
    Simulator,
}

/// Reads the configured match files.
pub fn load(settings: &FeedSettings) -> Result<MatchFeed, String> {
    let events = std::fs::read_to_string(&settings.replay_file).map_err(|e| e.to_string())?;
    let lineups = std::fs::read_to_string(&settings.replay_lineups).map_err(|e| e.to_string())?;
    match settings.replay_format {
        ReplayFormat::Sportec => sportec::parse(&events, &lineups),
        ReplayFormat::Statsbomb => {
            let match_id = std::path::Path::new(&settings.replay_file)
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "statsbomb".into());
            statsbomb::parse(&events, &lineups, &match_id, settings.replay_kickoff)
        }
    }
    .map_err(|e| e.to_string())
}

fn provider(format: ReplayFormat) -> &'static str {
    match format {
        ReplayFormat::Sportec => "sportec",
        ReplayFormat::Statsbomb => "statsbomb",
    }
}

/// Creates (or finds) a source's players; `None` after logging a failure.
async fn list_players(
    pricing: &PricingService,
    listed: &[ListedPlayer],
    settings: &FeedSettings,
) -> Option<HashMap<String, PlayerId>> {
    match pricing
        .list_players(listed, Cents::new(settings.starting_price_cents))
        .await
    {
        Ok(ids) => Some(ids),
        Err(error) => {
            tracing::error!(%error, "could not create the feed's players");
            None
        }
    }
}

/// When each item is due, as an offset from the run's start: its scaled
/// time since kick-off, but never earlier than the item before it.
pub fn schedule(feed: &MatchFeed, speed: f64) -> Vec<Duration> {
    let mut previous = Duration::ZERO;
    feed.items
        .iter()
        .map(|item| {
            let since_kickoff = (item.occurred_at() - feed.kickoff)
                .to_std()
                .unwrap_or(Duration::ZERO);
            let due = since_kickoff.div_f64(speed).max(previous);
            previous = due;
            due
        })
        .collect()
}

async fn replay_once(
    pricing: &PricingService,
    feed: &MatchFeed,
    settings: &FeedSettings,
    leadership: &Leadership,
    shutdown: &mut watch::Receiver<bool>,
) -> Ended {
    let provider = provider(settings.replay_format);
    let listed: Vec<ListedPlayer> = feed
        .players
        .iter()
        .map(|p| ListedPlayer {
            external_ref: format!("{provider}:{}", p.provider_id),
            name: p.name.clone(),
            team: p.team.clone(),
            position: p.position.clone(),
        })
        .collect();
    let Some(ids) = list_players(pricing, &listed, settings).await else {
        return Ended::LostLeadership;
    };
    let started = tokio::time::Instant::now();
    let started_at = Utc::now();
    let run = format!("run{}", started_at.timestamp());
    let scale = |t: DateTime<Utc>| {
        let offset = (t - feed.kickoff).to_std().unwrap_or(Duration::ZERO);
        started_at
            + chrono::Duration::from_std(offset.div_f64(settings.replay_speed)).unwrap_or_default()
    };
    tracing::info!(
        run,
        items = feed.items.len(),
        players = ids.len(),
        "replaying {}",
        feed.match_id
    );
    let (mut applied, mut corrected) = (0usize, 0usize);
    for (item, due) in feed.items.iter().zip(schedule(feed, settings.replay_speed)) {
        tokio::select! {
            _ = tokio::time::sleep_until(started + due) => {}
            _ = shutdown.changed() => return Ended::Shutdown,
        }
        if !leadership.is_leader() {
            return Ended::LostLeadership;
        }
        match item {
            FeedItem::Event(event) => {
                let key = format!("{provider}:{}", event.provider_player_id);
                let Some(player) = ids.get(&key) else {
                    tracing::debug!(player = key, "event for a player not in the lineups");
                    continue;
                };
                let new = NewEvent {
                    event_id: format!("{run}:{}", event.event_id),
                    match_id: format!("{run}:{}", feed.match_id),
                    player: *player,
                    kind: event.kind,
                    occurred_at: scale(event.occurred_at),
                    minute: event.minute,
                    fence: leadership.fence(),
                };
                match pricing.apply(&new).await {
                    Ok(_) => applied += 1,
                    Err(PricingError::NotLeader) => return Ended::LostLeadership,
                    Err(error) => {
                        tracing::warn!(%error, event_id = new.event_id, "replayed event failed")
                    }
                }
            }
            FeedItem::Delete {
                provider_event_id, ..
            } => {
                let prefix = format!("{run}:{provider}:{provider_event_id}:");
                match pricing.revert(&prefix).await {
                    Ok(n) => corrected += n,
                    Err(error) => tracing::warn!(%error, prefix, "correction failed"),
                }
            }
        }
    }
    tracing::info!(run, applied, corrected, "replay pass finished");
    Ended::Finished
}

/// Relative frequency of each kind in the simulator.
const SIMULATED_KINDS: [(EventKind, u32); 13] = [
    (EventKind::Goal, 3),
    (EventKind::Assist, 2),
    (EventKind::ShotOnTarget, 10),
    (EventKind::ShotOffTarget, 14),
    (EventKind::Save, 8),
    (EventKind::YellowCard, 4),
    (EventKind::RedCard, 1),
    (EventKind::OwnGoal, 1),
    (EventKind::PenaltyMissed, 1),
    (EventKind::PenaltySaved, 1),
    (EventKind::SubstitutedOn, 3),
    (EventKind::SubstitutedOff, 3),
    (EventKind::CleanSheet, 1),
];

/// Picks a kind by [`SIMULATED_KINDS`] weights.
pub fn simulated_kind(rng: &mut impl Rng) -> EventKind {
    let total: u32 = SIMULATED_KINDS.iter().map(|(_, w)| w).sum();
    let mut pick = rng.gen_range(0..total);
    for (kind, weight) in SIMULATED_KINDS {
        if pick < weight {
            return kind;
        }
        pick -= weight;
    }
    EventKind::ShotOffTarget
}

async fn simulate(
    pricing: &PricingService,
    settings: &FeedSettings,
    leadership: &Leadership,
    shutdown: &mut watch::Receiver<bool>,
) -> Ended {
    let seed = settings.simulator_seed;
    let listed: Vec<ListedPlayer> = (1..=settings.simulator_players)
        .map(|n| ListedPlayer {
            external_ref: format!("sim:{seed}:{n}"),
            name: format!("Sim Player {n}"),
            team: if n % 2 == 0 {
                "Simulated Rovers"
            } else {
                "Simulated United"
            }
            .into(),
            position: ["GK", "DF", "MF", "FW"][n % 4].into(),
        })
        .collect();
    let Some(ids) = list_players(pricing, &listed, settings).await else {
        return Ended::LostLeadership;
    };
    let players: Vec<PlayerId> = listed
        .iter()
        .filter_map(|p| ids.get(&p.external_ref).copied())
        .collect();
    if players.is_empty() || settings.simulator_events_per_minute == 0 {
        // Players only (prices still tick): nothing more to do until shutdown.
        let _ = shutdown.changed().await;
        return Ended::Shutdown;
    }
    let run = Utc::now().timestamp();
    let mut rng = StdRng::seed_from_u64(seed);
    let every = Duration::from_secs(60) / settings.simulator_events_per_minute;
    let mut next = tokio::time::Instant::now();
    for n in 0u64.. {
        next += every;
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            _ = shutdown.changed() => return Ended::Shutdown,
        }
        if !leadership.is_leader() {
            return Ended::LostLeadership;
        }
        let event = NewEvent {
            event_id: format!("sim:{seed}:{run}:{n}"),
            match_id: format!("sim:{seed}:{run}"),
            player: players[rng.gen_range(0..players.len())],
            kind: simulated_kind(&mut rng),
            occurred_at: Utc::now(),
            minute: Some((n % 90) as i32 + 1),
            fence: leadership.fence(),
        };
        match pricing.apply(&event).await {
            Ok(_) | Err(PricingError::UnknownPlayer) => {}
            Err(PricingError::NotLeader) => return Ended::LostLeadership,
            Err(error) => tracing::warn!(%error, "simulated event failed"),
        }
    }
    Ended::Finished
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::FeedEvent;

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_000_000 + seconds, 0).unwrap()
    }

    fn event(seconds: i64) -> FeedItem {
        FeedItem::Event(FeedEvent {
            event_id: format!("e{seconds}"),
            provider_event_id: format!("{seconds}"),
            provider_player_id: "p".into(),
            kind: EventKind::Goal,
            occurred_at: at(seconds),
            minute: None,
        })
    }

    #[test]
    fn a_late_event_is_due_with_the_one_before_it_never_earlier() {
        let feed = MatchFeed {
            match_id: "m".into(),
            kickoff: at(0),
            players: vec![],
            items: vec![event(10), event(30), event(20), event(40)],
        };
        let due = schedule(&feed, 10.0);
        assert_eq!(due, [1, 3, 3, 4].map(Duration::from_secs));
    }

    #[test]
    fn the_real_match_replays_in_about_a_tenth_of_its_length_at_speed_ten() {
        let feed = sportec::parse(
            include_str!("../../data/feeds/idsse_J03WPY_events.xml"),
            include_str!("../../data/feeds/idsse_J03WPY_meta.xml"),
        )
        .unwrap();
        let due = schedule(&feed, 10.0);
        assert!(due.windows(2).all(|w| w[0] <= w[1]));
        let last = due.last().unwrap().as_secs();
        // About 113 minutes from kick-off to final whistle, half-time included.
        assert!((600..=720).contains(&last), "{last}");
    }

    #[test]
    fn the_simulator_is_deterministic_for_a_seed() {
        let mut a = StdRng::seed_from_u64(9);
        let mut b = StdRng::seed_from_u64(9);
        let first: Vec<EventKind> = (0..50).map(|_| simulated_kind(&mut a)).collect();
        let second: Vec<EventKind> = (0..50).map(|_| simulated_kind(&mut b)).collect();
        assert_eq!(first, second);
        assert!(first.contains(&EventKind::ShotOffTarget));
    }
}
