//! StatsBomb open-data events JSON + lineups JSON → [`MatchFeed`].
//!
//! The events file is a JSON array of events in time order, each with an
//! `id` (uuid), `period`, `timestamp` (from the period's start), `minute`,
//! `type`, `team`, usually `player`, and an object named after its type
//! (`shot`, `pass`, …). The lineups file is an array of teams, each with its
//! `lineup` of players. StatsBomb files carry no wall-clock time, so the
//! caller supplies the match id and kick-off.
//!
//! | StatsBomb event | Matchday kind(s), for whom |
//! |---|---|
//! | `Shot`, `shot.outcome` `Goal` | `goal` (player) |
//! | `Shot`, `shot.type` `Penalty`, any other outcome | `penalty_missed` (player) |
//! | `Shot`, outcome `Saved` or `Saved To Post` | `shot_on_target` (player) |
//! | `Shot`, any other outcome (`Off T`, `Wayward`, `Post`, `Blocked`, `Saved Off Target`, …) | `shot_off_target` (player) |
//! | `Pass` with `pass.goal_assist: true` | `assist` (player) |
//! | `Own Goal Against` | `own_goal` (player) |
//! | `Foul Committed` / `Bad Behaviour` with card `Yellow Card` | `yellow_card` (player) |
//! | `Foul Committed` / `Bad Behaviour` with card `Second Yellow` or `Red Card` | `red_card` (player) |
//! | `Substitution` | `substituted_off` (player); `substituted_on` (`substitution.replacement`) |
//! | `Goal Keeper`, `goalkeeper.type` `Shot Saved`, `Shot Saved To Post`, `Shot Saved Off Target`, `Save`, `Saved To Post` | `save` (player) |
//! | `Goal Keeper`, type `Penalty Saved` or `Penalty Saved To Post` | `penalty_saved` (player) |
//! | after the last event | `clean_sheet` for each goalkeeper who played for a side that conceded nothing |
//! | anything else (`Own Goal For`, `Carry`, `Pressure`, …) | ignored |
//!
//! Names compare case-insensitively. `occurred_at` is the kick-off plus the
//! period's offset plus `timestamp`; the offsets are nominal, since the files
//! do not give the real gaps: period 1 → 0 min, 2 → 60, 3 (extra time) →
//! 120, 4 → 140, 5 (shoot-out) → 160. `minute` is StatsBomb's `minute` + 1
//! (theirs counts elapsed minutes from 0). A goalkeeper is a lineup player
//! with a `Goalkeeper` stint in `positions` (only players who took the pitch
//! have stints) or anyone with a `Goal Keeper` event. A side concedes the
//! other side's goals and its own `Own Goal Against`s; shoot-out goals
//! (period 5) do not count. The clean-sheet events carry the last event's
//! id, time and minute (an empty events file yields none). Lineup players
//! without positions get [`NO_POSITION`].

use std::collections::HashMap;

use chrono::{DateTime, NaiveTime, TimeDelta, Utc};
use serde::Deserialize;

use super::{message_events, EventKind, FeedItem, LineupPlayer, MatchFeed, ParseError};

const EVENTS_FORMAT: &str = "StatsBomb events JSON";
const LINEUPS_FORMAT: &str = "StatsBomb lineups JSON";
const PROVIDER: &str = "statsbomb";

/// StatsBomb's position name for a goalkeeper.
pub const GOALKEEPER: &str = "Goalkeeper";

/// Position of a lineup player with no `positions` (did not play).
pub const NO_POSITION: &str = "Substitute";

/// The penalty shoot-out period.
const SHOOTOUT: u8 = 5;

/// Reads a StatsBomb events file and its lineups into a [`MatchFeed`].
///
/// `match_id` and `kickoff` come from the caller (StatsBomb's `matches`
/// file has them). Malformed JSON, a shape other than StatsBomb's, an
/// unknown `period` or an unreadable `timestamp` is an error.
pub fn parse(
    events_json: &str,
    lineups_json: &str,
    match_id: &str,
    kickoff: DateTime<Utc>,
) -> Result<MatchFeed, ParseError> {
    let teams: Vec<TeamLineup> =
        serde_json::from_str(lineups_json).map_err(|e| malformed(LINEUPS_FORMAT, e.to_string()))?;
    let events: Vec<SbEvent> =
        serde_json::from_str(events_json).map_err(|e| malformed(EVENTS_FORMAT, e.to_string()))?;

    let players: Vec<LineupPlayer> = teams
        .iter()
        .flat_map(|team| team.lineup.iter().map(move |player| player.to_lineup(team)))
        .collect();

    let mut items = Vec::new();
    let mut tally = Tally::default();
    let mut last: Option<(String, DateTime<Utc>, Option<i32>)> = None;
    for event in &events {
        let occurred_at = event.occurred_at(kickoff)?;
        let minute = event
            .minute
            .checked_add(1)
            .and_then(|m| i32::try_from(m).ok());
        let actions = event.actions();
        tally.record(event, &actions);
        items.extend(
            message_events(PROVIDER, &event.id, &actions, occurred_at, minute)
                .into_iter()
                .map(FeedItem::Event),
        );
        last = Some((event.id.clone(), occurred_at, minute));
    }
    if let Some((id, occurred_at, minute)) = last {
        let keepers = tally.clean_sheets(&teams);
        items.extend(
            message_events(PROVIDER, &id, &keepers, occurred_at, minute)
                .into_iter()
                .map(FeedItem::Event),
        );
    }

    Ok(MatchFeed {
        match_id: match_id.to_owned(),
        kickoff,
        players,
        items,
    })
}

fn malformed(format: &'static str, message: impl Into<String>) -> ParseError {
    ParseError::Malformed {
        format,
        message: message.into(),
    }
}

/// `{id, name}`, as StatsBomb names types, outcomes and cards.
#[derive(Debug, Deserialize)]
struct Named {
    #[serde(default)]
    name: String,
}

impl Named {
    fn is(&self, name: &str) -> bool {
        self.name.eq_ignore_ascii_case(name)
    }
}

/// `{id, name}` of a team or player.
#[derive(Debug, Deserialize)]
struct Ref {
    id: u64,
}

#[derive(Debug, Deserialize)]
struct SbEvent {
    id: String,
    period: u8,
    timestamp: String,
    minute: i64,
    #[serde(rename = "type")]
    kind: Named,
    team: Option<Ref>,
    player: Option<Ref>,
    shot: Option<Shot>,
    pass: Option<Pass>,
    foul_committed: Option<Carded>,
    bad_behaviour: Option<Carded>,
    substitution: Option<Substitution>,
    goalkeeper: Option<Goalkeeper>,
}

#[derive(Debug, Deserialize)]
struct Shot {
    outcome: Option<Named>,
    #[serde(rename = "type")]
    kind: Option<Named>,
}

#[derive(Debug, Deserialize)]
struct Pass {
    #[serde(default)]
    goal_assist: bool,
}

#[derive(Debug, Deserialize)]
struct Carded {
    card: Option<Named>,
}

#[derive(Debug, Deserialize)]
struct Substitution {
    replacement: Option<Ref>,
}

#[derive(Debug, Deserialize)]
struct Goalkeeper {
    #[serde(rename = "type")]
    kind: Option<Named>,
}

#[derive(Debug, Deserialize)]
struct TeamLineup {
    team_id: u64,
    team_name: String,
    lineup: Vec<LineupEntry>,
}

#[derive(Debug, Deserialize)]
struct LineupEntry {
    player_id: u64,
    player_name: String,
    player_nickname: Option<String>,
    #[serde(default)]
    positions: Vec<Stint>,
}

/// One `positions[]` entry: a stretch of the match in one position.
#[derive(Debug, Deserialize)]
struct Stint {
    position: String,
}

impl LineupEntry {
    fn to_lineup(&self, team: &TeamLineup) -> LineupPlayer {
        let name = self
            .player_nickname
            .as_deref()
            .filter(|nickname| !nickname.is_empty())
            .unwrap_or(&self.player_name);
        LineupPlayer {
            provider_id: self.player_id.to_string(),
            name: name.to_owned(),
            team: team.team_name.clone(),
            position: self
                .positions
                .first()
                .map_or(NO_POSITION, |stint| stint.position.as_str())
                .to_owned(),
        }
    }

    fn kept_goal(&self) -> bool {
        self.positions
            .iter()
            .any(|stint| stint.position.eq_ignore_ascii_case(GOALKEEPER))
    }
}

impl SbEvent {
    fn is(&self, type_name: &str) -> bool {
        self.kind.is(type_name)
    }

    /// Kick-off + the period's nominal offset + `timestamp`.
    fn occurred_at(&self, kickoff: DateTime<Utc>) -> Result<DateTime<Utc>, ParseError> {
        let offset_minutes = match self.period {
            1 => 0,
            2 => 60,
            3 => 120,
            4 => 140,
            5 => 160,
            other => {
                return Err(malformed(
                    EVENTS_FORMAT,
                    format!("event {}: unknown period {other}", self.id),
                ))
            }
        };
        let clock = NaiveTime::parse_from_str(&self.timestamp, "%H:%M:%S%.f").map_err(|e| {
            malformed(
                EVENTS_FORMAT,
                format!("event {}: timestamp {:?}: {e}", self.id, self.timestamp),
            )
        })?;
        let since_period_start = clock.signed_duration_since(NaiveTime::MIN);
        kickoff
            .checked_add_signed(TimeDelta::minutes(offset_minutes))
            .and_then(|start| start.checked_add_signed(since_period_start))
            .ok_or_else(|| {
                malformed(
                    EVENTS_FORMAT,
                    format!("event {}: time out of range", self.id),
                )
            })
    }

    /// The `(player, kind)` pairs this event yields.
    fn actions(&self) -> Vec<(String, EventKind)> {
        let Some(player) = self.player.as_ref().map(|player| player.id.to_string()) else {
            return Vec::new();
        };
        let mut actions = Vec::new();
        if self.is("Shot") {
            if let Some(shot) = &self.shot {
                actions.push((player, shot_kind(shot)));
            }
        } else if self.is("Pass") {
            if self.pass.as_ref().is_some_and(|pass| pass.goal_assist) {
                actions.push((player, EventKind::Assist));
            }
        } else if self.is("Own Goal Against") {
            actions.push((player, EventKind::OwnGoal));
        } else if self.is("Foul Committed") || self.is("Bad Behaviour") {
            let carded = self.foul_committed.as_ref().or(self.bad_behaviour.as_ref());
            if let Some(kind) = carded
                .and_then(|carded| carded.card.as_ref())
                .and_then(card_kind)
            {
                actions.push((player, kind));
            }
        } else if self.is("Substitution") {
            let replacement = self
                .substitution
                .as_ref()
                .and_then(|substitution| substitution.replacement.as_ref());
            actions.push((player, EventKind::SubstitutedOff));
            if let Some(replacement) = replacement {
                actions.push((replacement.id.to_string(), EventKind::SubstitutedOn));
            }
        } else if self.is("Goal Keeper") {
            let kind = self
                .goalkeeper
                .as_ref()
                .and_then(|goalkeeper| goalkeeper.kind.as_ref())
                .and_then(keeper_kind);
            if let Some(kind) = kind {
                actions.push((player, kind));
            }
        }
        actions
    }
}

fn shot_kind(shot: &Shot) -> EventKind {
    let outcome_is = |name: &str| {
        shot.outcome
            .as_ref()
            .is_some_and(|outcome| outcome.is(name))
    };
    let penalty = shot.kind.as_ref().is_some_and(|kind| kind.is("Penalty"));
    if outcome_is("Goal") {
        EventKind::Goal
    } else if penalty {
        EventKind::PenaltyMissed
    } else if outcome_is("Saved") || outcome_is("Saved To Post") {
        EventKind::ShotOnTarget
    } else {
        EventKind::ShotOffTarget
    }
}

fn card_kind(card: &Named) -> Option<EventKind> {
    if card.is("Yellow Card") {
        Some(EventKind::YellowCard)
    } else if card.is("Second Yellow") || card.is("Red Card") {
        Some(EventKind::RedCard)
    } else {
        None
    }
}

fn keeper_kind(kind: &Named) -> Option<EventKind> {
    const SAVES: [&str; 5] = [
        "Shot Saved",
        "Shot Saved To Post",
        "Shot Saved Off Target",
        "Save",
        "Saved To Post",
    ];
    const PENALTY_SAVES: [&str; 2] = ["Penalty Saved", "Penalty Saved To Post"];
    if SAVES.iter().any(|name| kind.is(name)) {
        Some(EventKind::Save)
    } else if PENALTY_SAVES.iter().any(|name| kind.is(name)) {
        Some(EventKind::PenaltySaved)
    } else {
        None
    }
}

/// What clean sheets depend on, gathered event by event.
#[derive(Default)]
struct Tally {
    /// Goals scored, by scoring team id (shoot-out excluded).
    scored: HashMap<u64, u32>,
    /// Own goals, by the team id that put them in its own net.
    own_goals: HashMap<u64, u32>,
    /// A goal with no team: nobody can be sure of a clean sheet.
    unattributed: bool,
    /// Players with `Goal Keeper` events and their team, first seen first.
    keepers: Vec<(u64, u64)>,
}

impl Tally {
    fn record(&mut self, event: &SbEvent, actions: &[(String, EventKind)]) {
        let team = event.team.as_ref().map(|team| team.id);
        for (_, kind) in actions {
            let bucket = match kind {
                EventKind::Goal if event.period != SHOOTOUT => &mut self.scored,
                EventKind::OwnGoal => &mut self.own_goals,
                _ => continue,
            };
            match team {
                Some(team) => *bucket.entry(team).or_default() += 1,
                None => self.unattributed = true,
            }
        }
        if let (true, Some(player), Some(team)) = (event.is("Goal Keeper"), &event.player, team) {
            if !self.keepers.iter().any(|(known, _)| *known == player.id) {
                self.keepers.push((player.id, team));
            }
        }
    }

    fn conceded(&self, team: u64) -> u32 {
        let against: u32 = self
            .scored
            .iter()
            .filter(|(scorers, _)| **scorers != team)
            .map(|(_, goals)| goals)
            .sum();
        against + self.own_goals.get(&team).copied().unwrap_or(0)
    }

    /// `(player, clean_sheet)` for each goalkeeper who played for a side
    /// that conceded nothing: lineup goalkeepers in lineup order, then
    /// anyone else with `Goal Keeper` events.
    fn clean_sheets(&self, teams: &[TeamLineup]) -> Vec<(String, EventKind)> {
        if self.unattributed {
            return Vec::new();
        }
        let mut keepers: Vec<(u64, u64)> = teams
            .iter()
            .flat_map(|team| {
                team.lineup
                    .iter()
                    .filter(|player| player.kept_goal())
                    .map(|player| (player.player_id, team.team_id))
            })
            .collect();
        for keeper in &self.keepers {
            if !keepers.iter().any(|(known, _)| *known == keeper.0) {
                keepers.push(*keeper);
            }
        }
        keepers
            .into_iter()
            .filter(|(_, team)| self.conceded(*team) == 0)
            .map(|(player, _)| (player.to_string(), EventKind::CleanSheet))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::ingest::FeedEvent;

    const EVENTS: &str = include_str!("../../tests/fixtures/statsbomb/events.json");
    const LINEUPS: &str = include_str!("../../tests/fixtures/statsbomb/lineups.json");

    fn kickoff() -> DateTime<Utc> {
        "2024-03-09T15:00:00Z".parse().unwrap()
    }

    fn fixture() -> MatchFeed {
        parse(EVENTS, LINEUPS, "sb-test-1", kickoff()).unwrap()
    }

    fn events(feed: &MatchFeed) -> Vec<&FeedEvent> {
        feed.items
            .iter()
            .map(|item| match item {
                FeedItem::Event(event) => event,
                FeedItem::Delete { .. } => panic!("StatsBomb has no deletes"),
            })
            .collect()
    }

    fn kinds_and_players(feed: &MatchFeed) -> Vec<(EventKind, &str)> {
        events(feed)
            .into_iter()
            .map(|event| (event.kind, event.provider_player_id.as_str()))
            .collect()
    }

    fn of_kind(feed: &MatchFeed, kind: EventKind) -> Vec<&str> {
        events(feed)
            .into_iter()
            .filter(|event| event.kind == kind)
            .map(|event| event.provider_player_id.as_str())
            .collect()
    }

    /// The id of the fixture event with this `index`.
    fn id_at(index: u64) -> String {
        let all: Vec<serde_json::Value> = serde_json::from_str(EVENTS).unwrap();
        all.iter()
            .find(|event| event["index"] == index)
            .and_then(|event| event["id"].as_str())
            .unwrap()
            .to_owned()
    }

    #[test]
    fn the_fixture_yields_exactly_the_expected_kinds_and_players_in_order() {
        use EventKind::*;
        assert_eq!(
            kinds_and_players(&fixture()),
            [
                (Assist, "5003"),
                (Goal, "5002"),
                (ShotOnTarget, "6002"),
                (Save, "5001"),
                (YellowCard, "5004"),
                (ShotOffTarget, "6004"),
                (ShotOffTarget, "6002"),
                (ShotOnTarget, "5003"),
                (Save, "6001"),
                (OwnGoal, "6003"),
                (PenaltyMissed, "6002"),
                (PenaltySaved, "5001"),
                (SubstitutedOff, "5003"),
                (SubstitutedOn, "5005"),
                (RedCard, "5004"),
                (RedCard, "6003"),
                (ShotOffTarget, "5005"),
                (PenaltyMissed, "5002"),
                (ShotOffTarget, "6004"),
                (ShotOffTarget, "6002"),
                (Save, "5001"),
                (CleanSheet, "5001"),
            ]
        );
    }

    #[test]
    fn a_goal_comes_with_its_assisting_pass() {
        let feed = fixture();
        assert_eq!(of_kind(&feed, EventKind::Goal), ["5002"]);
        assert_eq!(of_kind(&feed, EventKind::Assist), ["5003"]);
        let goal = events(&feed)[1];
        assert_eq!(goal.event_id, format!("statsbomb:{}:goal", id_at(8)));
        assert_eq!(goal.provider_event_id, id_at(8));
        assert_eq!(events(&feed)[0].provider_event_id, id_at(7));
    }

    #[test]
    fn cards_map_yellow_second_yellow_and_red() {
        let feed = fixture();
        assert_eq!(of_kind(&feed, EventKind::YellowCard), ["5004"]);
        assert_eq!(of_kind(&feed, EventKind::RedCard), ["5004", "6003"]);
        let second_yellow = events(&feed)
            .into_iter()
            .find(|event| event.kind == EventKind::RedCard)
            .unwrap();
        assert_eq!(second_yellow.provider_event_id, id_at(28));
    }

    #[test]
    fn a_substitution_takes_one_player_off_and_puts_the_replacement_on() {
        let feed = fixture();
        assert_eq!(of_kind(&feed, EventKind::SubstitutedOff), ["5003"]);
        assert_eq!(of_kind(&feed, EventKind::SubstitutedOn), ["5005"]);
        let ids: Vec<&str> = events(&feed)
            .into_iter()
            .filter(|event| event.provider_event_id == id_at(27))
            .map(|event| event.event_id.as_str())
            .collect();
        let sub = id_at(27);
        assert_eq!(
            ids,
            [
                format!("statsbomb:{sub}:substituted_off"),
                format!("statsbomb:{sub}:substituted_on"),
            ]
        );
    }

    #[test]
    fn shots_and_keeper_events_map_by_outcome_and_type() {
        let feed = fixture();
        assert_eq!(of_kind(&feed, EventKind::ShotOnTarget), ["6002", "5003"]);
        assert_eq!(
            of_kind(&feed, EventKind::ShotOffTarget),
            ["6004", "6002", "5005", "6004", "6002"]
        );
        assert_eq!(of_kind(&feed, EventKind::Save), ["5001", "6001", "5001"]);
        assert_eq!(of_kind(&feed, EventKind::PenaltyMissed), ["6002", "5002"]);
        assert_eq!(of_kind(&feed, EventKind::PenaltySaved), ["5001"]);
        assert_eq!(of_kind(&feed, EventKind::OwnGoal), ["6003"]);
    }

    #[test]
    fn unrelated_events_yield_nothing() {
        let feed = fixture();
        let sources: HashSet<&str> = events(&feed)
            .into_iter()
            .map(|event| event.provider_event_id.as_str())
            .collect();
        // Starting XI, Half Start, kick-off Pass, Carry, Goal Conceded,
        // Foul Won, Block, Half End, Own Goal For, Ball Receipt*.
        for index in [1, 3, 5, 6, 9, 13, 16, 19, 21, 24, 35] {
            assert!(!sources.contains(id_at(index).as_str()), "index {index}");
        }
    }

    #[test]
    fn only_the_side_that_conceded_nothing_keeps_a_clean_sheet() {
        let feed = fixture();
        // Northbridge won 2:0 (a goal and an own goal), so only their
        // keeper; their unused reserve keeper has no stint.
        assert_eq!(of_kind(&feed, EventKind::CleanSheet), ["5001"]);
        let sheet = *events(&feed).last().unwrap();
        assert_eq!(
            sheet.event_id,
            format!("statsbomb:{}:clean_sheet", id_at(37))
        );
        assert_eq!(
            sheet.occurred_at,
            "2024-03-09T16:49:30Z".parse::<DateTime<Utc>>().unwrap()
        );
        assert_eq!(sheet.minute, Some(95));
    }

    #[test]
    fn times_add_the_period_offset_and_timestamp_to_the_kickoff() {
        let feed = fixture();
        let all = events(&feed);
        let goal = all[1];
        assert_eq!(
            goal.occurred_at,
            "2024-03-09T15:11:21.900Z".parse::<DateTime<Utc>>().unwrap()
        );
        assert_eq!(goal.minute, Some(12));
        let own_goal = all
            .iter()
            .find(|event| event.kind == EventKind::OwnGoal)
            .unwrap();
        assert_eq!(
            own_goal.occurred_at,
            "2024-03-09T16:07:40Z".parse::<DateTime<Utc>>().unwrap()
        );
        assert_eq!(own_goal.minute, Some(53));
    }

    #[test]
    fn players_come_from_the_lineups() {
        let feed = fixture();
        assert_eq!(feed.match_id, "sb-test-1");
        assert_eq!(feed.kickoff, kickoff());
        assert_eq!(feed.players.len(), 10);
        let find = |id: &str| feed.players.iter().find(|p| p.provider_id == id).unwrap();
        assert_eq!(
            *find("5002"),
            LineupPlayer {
                provider_id: "5002".into(),
                name: "Ben Okafor".into(),
                team: "Northbridge FC".into(),
                position: "Center Forward".into(),
            }
        );
        assert_eq!(find("5001").name, "Aaron Whitfield");
        assert_eq!(find("5001").position, GOALKEEPER);
        assert_eq!(find("5006").position, NO_POSITION);
        assert_eq!(find("6001").team, "Southport Athletic");
        let listed: HashSet<&str> = feed
            .players
            .iter()
            .map(|p| p.provider_id.as_str())
            .collect();
        for event in events(&feed) {
            assert!(
                listed.contains(event.provider_player_id.as_str()),
                "{event:?}"
            );
        }
    }

    fn event_json(
        index: u32,
        period: u8,
        kind: &str,
        team: u64,
        player: u64,
        extra: &str,
    ) -> String {
        format!(
            r#"{{"id": "e{index}", "index": {index}, "period": {period}, "timestamp": "00:10:00.000",
                "minute": 10, "second": 0, "type": {{"id": 0, "name": "{kind}"}},
                "team": {{"id": {team}, "name": "T{team}"}},
                "player": {{"id": {player}, "name": "P{player}"}}{extra}}}"#
        )
    }

    #[test]
    fn a_shootout_goal_does_not_cost_a_clean_sheet_but_a_goal_in_play_does() {
        let shootout_goal = event_json(
            1,
            5,
            "Shot",
            902,
            6002,
            r#", "shot": {"outcome": {"id": 97, "name": "Goal"}, "type": {"id": 88, "name": "Penalty"}}"#,
        );
        let feed = parse(&format!("[{shootout_goal}]"), LINEUPS, "m", kickoff()).unwrap();
        assert_eq!(of_kind(&feed, EventKind::CleanSheet), ["5001", "6001"]);
        assert_eq!(
            events(&feed)[1].event_id,
            "statsbomb:e1:clean_sheet:5001",
            "two clean sheets from one event get player suffixes"
        );
        assert_eq!(
            events(&feed)[0].occurred_at,
            "2024-03-09T17:50:00Z".parse::<DateTime<Utc>>().unwrap()
        );

        let extra_time_goal = shootout_goal.replace(r#""period": 5"#, r#""period": 3"#);
        let feed = parse(&format!("[{extra_time_goal}]"), LINEUPS, "m", kickoff()).unwrap();
        assert_eq!(of_kind(&feed, EventKind::CleanSheet), ["6001"]);
    }

    #[test]
    fn a_keeper_known_only_from_keeper_events_gets_a_clean_sheet() {
        let save = event_json(
            1,
            1,
            "Goal Keeper",
            901,
            5006,
            r#", "goalkeeper": {"type": {"id": 33, "name": "Shot Saved"}}"#,
        );
        let feed = parse(&format!("[{save}]"), LINEUPS, "m", kickoff()).unwrap();
        assert_eq!(
            kinds_and_players(&feed),
            [
                (EventKind::Save, "5006"),
                (EventKind::CleanSheet, "5001"),
                (EventKind::CleanSheet, "6001"),
                (EventKind::CleanSheet, "5006"),
            ]
        );
    }

    #[test]
    fn no_events_means_no_items() {
        let feed = parse("[]", LINEUPS, "m", kickoff()).unwrap();
        assert!(feed.items.is_empty());
        assert_eq!(feed.players.len(), 10);
    }

    #[test]
    fn malformed_json_is_an_error() {
        for bad in ["", "[", "[{]", "not json", "[{\"id\": \"x\",}]"] {
            assert!(parse(bad, LINEUPS, "m", kickoff()).is_err(), "{bad:?}");
            assert!(parse(EVENTS, bad, "m", kickoff()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn wrong_shaped_json_is_an_error_and_does_not_panic() {
        let shapes = [
            "{}",
            "null",
            "42",
            "[1, 2]",
            "[{\"id\": 5}]",
            "[{\"id\": \"a\", \"period\": 1, \"timestamp\": \"00:00:01.000\", \"minute\": 0}]",
            "{\"events\": []}",
        ];
        for shape in shapes {
            assert!(parse(shape, LINEUPS, "m", kickoff()).is_err(), "{shape}");
            assert!(parse(EVENTS, shape, "m", kickoff()).is_err(), "{shape}");
        }
    }

    #[test]
    fn an_unknown_period_or_unreadable_timestamp_is_an_error() {
        let pass = event_json(1, 1, "Pass", 901, 5002, "");
        let period_six = pass.replace(r#""period": 1"#, r#""period": 6"#);
        let bad_clock = pass.replace("00:10:00.000", "ten past");
        for events in [period_six, bad_clock] {
            assert!(parse(&format!("[{events}]"), LINEUPS, "m", kickoff()).is_err());
        }
        let far_future = DateTime::<Utc>::MAX_UTC;
        assert!(parse(&format!("[{pass}]"), LINEUPS, "m", far_future).is_err());
    }

    #[test]
    fn no_prefix_of_the_fixture_panics() {
        for end in (0..EVENTS.len())
            .step_by(61)
            .filter(|end| EVENTS.is_char_boundary(*end))
        {
            assert!(parse(&EVENTS[..end], LINEUPS, "m", kickoff()).is_err());
        }
        for end in (0..LINEUPS.len())
            .step_by(7)
            .filter(|end| LINEUPS.is_char_boundary(*end))
        {
            assert!(parse(EVENTS, &LINEUPS[..end], "m", kickoff()).is_err());
        }
    }
}
