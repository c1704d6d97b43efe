//! Ingest: match feeds in, one normalised event shape out.
//!
//! Owns the provider adapters (`sportec`, `statsbomb`), the replay driver
//! and the simulator, and the push endpoint's validation. Never computes a
//! price: applying an event is the price engine's job (`pricing`).

pub mod driver;
pub mod sportec;
pub mod statsbomb;
pub mod webhook;

use std::collections::HashSet;

use chrono::{DateTime, Utc};

/// What happened to a player, in Matchday's own vocabulary (API.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventKind {
    Goal,
    Assist,
    ShotOnTarget,
    ShotOffTarget,
    Save,
    YellowCard,
    RedCard,
    OwnGoal,
    PenaltyMissed,
    PenaltySaved,
    SubstitutedOn,
    SubstitutedOff,
    CleanSheet,
}

impl EventKind {
    /// Every kind, in API.md's order.
    pub const ALL: [EventKind; 13] = [
        EventKind::Goal,
        EventKind::Assist,
        EventKind::ShotOnTarget,
        EventKind::ShotOffTarget,
        EventKind::Save,
        EventKind::YellowCard,
        EventKind::RedCard,
        EventKind::OwnGoal,
        EventKind::PenaltyMissed,
        EventKind::PenaltySaved,
        EventKind::SubstitutedOn,
        EventKind::SubstitutedOff,
        EventKind::CleanSheet,
    ];

    /// The wire spelling.
    pub const fn as_str(self) -> &'static str {
        match self {
            EventKind::Goal => "goal",
            EventKind::Assist => "assist",
            EventKind::ShotOnTarget => "shot_on_target",
            EventKind::ShotOffTarget => "shot_off_target",
            EventKind::Save => "save",
            EventKind::YellowCard => "yellow_card",
            EventKind::RedCard => "red_card",
            EventKind::OwnGoal => "own_goal",
            EventKind::PenaltyMissed => "penalty_missed",
            EventKind::PenaltySaved => "penalty_saved",
            EventKind::SubstitutedOn => "substituted_on",
            EventKind::SubstitutedOff => "substituted_off",
            EventKind::CleanSheet => "clean_sheet",
        }
    }

    /// Parses the wire spelling.
    pub fn parse(value: &str) -> Option<EventKind> {
        EventKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == value)
    }
}

/// A player as a lineup or match-information file describes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineupPlayer {
    /// The provider's person id (Sportec `PersonId`, StatsBomb `player_id`).
    pub provider_id: String,
    pub name: String,
    pub team: String,
    /// Short position code as the provider spells it ("TW", "Goalkeeper", …).
    pub position: String,
}

/// One normalised event about one player.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedEvent {
    /// Unique across providers and across the events one provider message
    /// produces, e.g. `sportec:18237400000797:goal`.
    pub event_id: String,
    /// The provider message this came from (what a `Delete` names).
    pub provider_event_id: String,
    /// The player's provider id (see [`LineupPlayer::provider_id`]).
    pub provider_player_id: String,
    pub kind: EventKind,
    /// When it happened on the pitch (UTC).
    pub occurred_at: DateTime<Utc>,
    /// Match minute, 1-based, if known.
    pub minute: Option<i32>,
}

/// One item of a feed, in arrival order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedItem {
    Event(FeedEvent),
    /// The provider withdrew an earlier message: every event derived from
    /// `provider_event_id` must have its effect removed.
    Delete {
        provider_event_id: String,
        occurred_at: DateTime<Utc>,
    },
}

impl FeedItem {
    /// When the item happened (for a delete: the time the provider gave it).
    pub fn occurred_at(&self) -> DateTime<Utc> {
        match self {
            FeedItem::Event(event) => event.occurred_at,
            FeedItem::Delete { occurred_at, .. } => *occurred_at,
        }
    }
}

/// A whole match as a provider file describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MatchFeed {
    pub match_id: String,
    pub kickoff: DateTime<Utc>,
    pub players: Vec<LineupPlayer>,
    /// In arrival (file) order, which may differ from `occurred_at` order.
    pub items: Vec<FeedItem>,
}

/// Why a feed file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("malformed {format}: {message}")]
    Malformed {
        format: &'static str,
        message: String,
    },
}

/// Turns what one provider message says happened, as `(player, kind)` pairs,
/// into [`FeedEvent`]s.
///
/// Ids are `{provider}:{provider_event_id}:{kind}`. When the message yields
/// the same kind more than once (two clean sheets at one final whistle), each
/// of those ids also ends in `:{player}`, and in `:{n}` should that still
/// repeat, so ids stay unique and stable across re-parses.
pub(crate) fn message_events(
    provider: &str,
    provider_event_id: &str,
    actions: &[(String, EventKind)],
    occurred_at: DateTime<Utc>,
    minute: Option<i32>,
) -> Vec<FeedEvent> {
    let mut taken = HashSet::new();
    actions
        .iter()
        .map(|(player, kind)| {
            let mut event_id = format!("{provider}:{provider_event_id}:{}", kind.as_str());
            if actions.iter().filter(|(_, other)| other == kind).count() > 1 {
                event_id = format!("{event_id}:{player}");
            }
            if taken.contains(&event_id) {
                let base = event_id.clone();
                let mut n = 2u32;
                while taken.contains(&event_id) {
                    event_id = format!("{base}:{n}");
                    n += 1;
                }
            }
            taken.insert(event_id.clone());
            FeedEvent {
                event_id,
                provider_event_id: provider_event_id.to_owned(),
                provider_player_id: player.clone(),
                kind: *kind,
                occurred_at,
                minute,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_event_ids_get_a_suffix_only_when_a_kind_repeats() {
        let at = DateTime::<Utc>::UNIX_EPOCH;
        let actions = [
            ("a".to_owned(), EventKind::Goal),
            ("b".to_owned(), EventKind::Assist),
            ("k1".to_owned(), EventKind::CleanSheet),
            ("k2".to_owned(), EventKind::CleanSheet),
            ("k2".to_owned(), EventKind::CleanSheet),
        ];
        let ids: Vec<String> = message_events("p", "7", &actions, at, Some(3))
            .into_iter()
            .map(|event| event.event_id)
            .collect();
        assert_eq!(
            ids,
            [
                "p:7:goal",
                "p:7:assist",
                "p:7:clean_sheet:k1",
                "p:7:clean_sheet:k2",
                "p:7:clean_sheet:k2:2",
            ]
        );
    }
}
