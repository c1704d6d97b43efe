//! DFL/Sportec event XML + match information → [`MatchFeed`].
//!
//! The DFL feed is a sequence of `<Event EventId=… EventTime=…>` messages in
//! arrival order, each wrapping one event element (possibly inside a
//! set-piece element such as `<Penalty>` or `<FreeKick>`). Messages may
//! arrive out of time order, and `<Delete/>` withdraws the message with the
//! same `EventId`. The match information file names the match, its kick-off
//! and every squad player. Both files are read with a streaming reader; the
//! few elements of one `<Event>` are buffered until it closes.
//!
//! | DFL message | Matchday kind(s), for whom |
//! |---|---|
//! | `ShotAtGoal` › `SuccessfulShot` | `goal` (`ShotAtGoal@Player`); `assist` (`SuccessfulShot@Assist`, else `ShotAtGoal@AssistShotAtGoal`) |
//! | `ShotAtGoal` › `SavedShot` | `shot_on_target` (shooter); `save` (`SavedShot@GoalKeeper`) |
//! | `ShotAtGoal` › `ShotWide`, `BlockedShot`, `ShotWoodWork`, `OtherShot`, none | `shot_off_target` (shooter) |
//! | `Penalty` › `ShotAtGoal` › `SuccessfulShot` | `goal` (+ `assist` as above) |
//! | `Penalty` › `ShotAtGoal` › `SavedShot` | `penalty_missed` (taker); `penalty_saved` (`GoalKeeper`) |
//! | `Penalty` › `ShotAtGoal` › any other outcome | `penalty_missed` (taker) |
//! | `OwnGoal` (own message, or a `ShotAtGoal` outcome) | `own_goal` (`OwnGoal@Player`, else the shooter) |
//! | `Caution@CardColor="yellow"` | `yellow_card` |
//! | `Caution@CardColor="yellowRed"` or `"red"` | `red_card` |
//! | `Substitution` | `substituted_off` (`PlayerOut`); `substituted_on` (`PlayerIn`) |
//! | `Delete` | [`FeedItem::Delete`] of that `EventId` |
//! | `FinalWhistle` of the last section kicked off | `clean_sheet` for each goalkeeper who played for a side that conceded nothing |
//! | anything else (`Play`, `TacklingGame`, `KickOff`, …) | ignored |
//!
//! Clean sheets: a goalkeeper is a player with `PlayingPosition="TW"` who
//! started, or who came on (match-information position or the
//! substitution's `PlayingPosition` is `TW`). Goals conceded count every
//! `SuccessfulShot` against the side and every own goal by it, leaving out
//! withdrawn (`Delete`d) messages; the whole file is considered, so a goal
//! arriving after the final whistle still counts, and a goal whose side is
//! unknown denies every clean sheet. The clean-sheet events sit right after
//! the final whistle in arrival order and carry its `EventId` and time; with
//! no final whistle for the last section they come last, with the id and
//! time of the latest event.
//!
//! Minutes count from the half's `<KickOff GameSection=…>`:
//! `floor((t − kick-off) / 60 s) + 1`, plus 45 in the second half, 90 and
//! 105 in the extra-time halves; `None` before the first kick-off. Squad
//! players the match information gives no `PlayingPosition` (the unused
//! substitutes) get the position [`NO_POSITION`].

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use quick_xml::events::{BytesStart, Event};
use quick_xml::Reader;

use super::{message_events, EventKind, FeedItem, LineupPlayer, MatchFeed, ParseError};

const EVENTS_FORMAT: &str = "Sportec event XML";
const META_FORMAT: &str = "Sportec match information XML";
const PROVIDER: &str = "sportec";

/// DFL's position code for a goalkeeper.
pub const GOALKEEPER: &str = "TW";

/// Position of a squad player the match information lists without a
/// `PlayingPosition` (a substitute who did not come on).
pub const NO_POSITION: &str = "SUB";

/// Reads a DFL event feed and its match information into a [`MatchFeed`].
///
/// Items keep the events file's arrival order; see the module documentation
/// for the mapping. Malformed XML, a missing match id or kick-off, or a
/// relevant event without a valid `EventId`/`EventTime` is an error.
pub fn parse(events_xml: &str, meta_xml: &str) -> Result<MatchFeed, ParseError> {
    let meta = read_meta(meta_xml)?;
    let messages = read_messages(events_xml)?;
    Ok(assemble(meta, messages))
}

/// One start (or empty) tag with its attributes unescaped.
#[derive(Debug)]
struct Element {
    name: String,
    attributes: Vec<(String, String)>,
}

impl Element {
    /// A non-empty attribute value.
    fn attr(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(name, _)| name == key)
            .map(|(_, value)| value.as_str())
            .filter(|value| !value.is_empty())
    }
}

/// What the streaming walk reports: an element opening or closing at a
/// depth (the root is at depth 0). An empty tag opens and closes.
enum Node {
    Open { depth: usize, element: Element },
    Close { depth: usize },
}

fn malformed(format: &'static str, message: impl Into<String>) -> ParseError {
    ParseError::Malformed {
        format,
        message: message.into(),
    }
}

fn element(
    tag: &BytesStart<'_>,
    reader: &Reader<&[u8]>,
    format: &'static str,
) -> Result<Element, ParseError> {
    let name = std::str::from_utf8(tag.local_name().as_ref())
        .map_err(|e| malformed(format, format!("element name: {e}")))?
        .to_owned();
    let mut attributes = Vec::new();
    for attribute in tag.attributes() {
        let attribute = attribute.map_err(|e| malformed(format, format!("<{name}>: {e}")))?;
        let key = std::str::from_utf8(attribute.key.local_name().as_ref())
            .map_err(|e| malformed(format, format!("<{name}> attribute name: {e}")))?
            .to_owned();
        let value = attribute
            .decode_and_unescape_value(reader.decoder())
            .map_err(|e| malformed(format, format!("<{name} {key}>: {e}")))?
            .into_owned();
        attributes.push((key, value));
    }
    Ok(Element { name, attributes })
}

/// Streams `xml`, calling `visit` for every element opening and closing.
/// Requires exactly one root element and nothing but whitespace, comments
/// and processing instructions outside it.
fn walk(
    xml: &str,
    format: &'static str,
    mut visit: impl FnMut(Node) -> Result<(), ParseError>,
) -> Result<(), ParseError> {
    let mut reader = Reader::from_str(xml);
    let mut depth = 0usize;
    let mut roots = 0usize;
    loop {
        let event = reader
            .read_event()
            .map_err(|e| malformed(format, format!("at byte {}: {e}", reader.error_position())))?;
        match event {
            Event::Start(ref tag) | Event::Empty(ref tag) => {
                if depth == 0 {
                    roots += 1;
                    if roots > 1 {
                        return Err(malformed(format, "more than one root element"));
                    }
                }
                let is_empty = matches!(event, Event::Empty(_));
                visit(Node::Open {
                    depth,
                    element: element(tag, &reader, format)?,
                })?;
                if is_empty {
                    visit(Node::Close { depth })?;
                } else {
                    depth += 1;
                }
            }
            Event::End(_) => {
                depth = depth
                    .checked_sub(1)
                    .ok_or_else(|| malformed(format, "closing tag without an opening one"))?;
                visit(Node::Close { depth })?;
            }
            Event::Text(text) if depth == 0 && !text.iter().all(u8::is_ascii_whitespace) => {
                return Err(malformed(format, "text outside the root element"));
            }
            Event::CData(_) | Event::GeneralRef(_) if depth == 0 => {
                return Err(malformed(format, "text outside the root element"));
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if depth != 0 {
        return Err(malformed(
            format,
            format!("document ends inside {depth} open element(s)"),
        ));
    }
    if roots == 0 {
        return Err(malformed(format, "no root element"));
    }
    Ok(())
}

fn parse_time(value: &str, format: &'static str, what: &str) -> Result<DateTime<Utc>, ParseError> {
    DateTime::parse_from_rfc3339(value)
        .map(|time| time.with_timezone(&Utc))
        .map_err(|e| malformed(format, format!("{what} {value:?}: {e}")))
}

/// A squad player as the match information describes them.
struct SquadPlayer {
    lineup: LineupPlayer,
    team_id: String,
    starting: bool,
    /// `PlayingPosition`, if given.
    position: Option<String>,
}

struct Meta {
    match_id: String,
    kickoff: DateTime<Utc>,
    team_ids: Vec<String>,
    players: Vec<SquadPlayer>,
}

impl Meta {
    fn player(&self, id: &str) -> Option<&SquadPlayer> {
        self.players
            .iter()
            .find(|player| player.lineup.provider_id == id)
    }
}

fn read_meta(xml: &str) -> Result<Meta, ParseError> {
    let mut general: Option<(String, DateTime<Utc>)> = None;
    let mut team_ids = Vec::new();
    let mut players: Vec<SquadPlayer> = Vec::new();
    // The open <Team>: its depth, id and name.
    let mut team: Option<(usize, String, String)> = None;
    walk(xml, META_FORMAT, |node| {
        match node {
            Node::Open { depth, element } => match element.name.as_str() {
                "General" if general.is_none() => {
                    let match_id = element
                        .attr("MatchId")
                        .ok_or_else(|| malformed(META_FORMAT, "<General> has no MatchId"))?;
                    let kickoff = element
                        .attr("KickoffTime")
                        .or_else(|| element.attr("PlannedKickoffTime"))
                        .ok_or_else(|| malformed(META_FORMAT, "<General> has no KickoffTime"))?;
                    let kickoff = parse_time(kickoff, META_FORMAT, "KickoffTime")?;
                    general = Some((match_id.to_owned(), kickoff));
                }
                "Team" if team.is_none() => {
                    let name = element.attr("TeamName").or_else(|| element.attr("TeamId"));
                    let id = element.attr("TeamId").or(name);
                    let (Some(id), Some(name)) = (id, name) else {
                        return Err(malformed(
                            META_FORMAT,
                            "<Team> has neither TeamId nor TeamName",
                        ));
                    };
                    team_ids.push(id.to_owned());
                    team = Some((depth, id.to_owned(), name.to_owned()));
                }
                "Player" => {
                    if let Some((_, team_id, team_name)) = &team {
                        let id = element
                            .attr("PersonId")
                            .ok_or_else(|| malformed(META_FORMAT, "<Player> has no PersonId"))?;
                        if players.iter().any(|player| player.lineup.provider_id == id) {
                            return Ok(());
                        }
                        let full_name = [element.attr("FirstName"), element.attr("LastName")]
                            .into_iter()
                            .flatten()
                            .collect::<Vec<_>>()
                            .join(" ");
                        let name = match element.attr("Shortname") {
                            Some(short) => short.to_owned(),
                            None if !full_name.is_empty() => full_name,
                            None => id.to_owned(),
                        };
                        let position = element.attr("PlayingPosition").map(str::to_owned);
                        players.push(SquadPlayer {
                            lineup: LineupPlayer {
                                provider_id: id.to_owned(),
                                name,
                                team: team_name.clone(),
                                position: position
                                    .clone()
                                    .unwrap_or_else(|| NO_POSITION.to_owned()),
                            },
                            team_id: team_id.clone(),
                            starting: element.attr("Starting") == Some("true"),
                            position,
                        });
                    }
                }
                _ => {}
            },
            Node::Close { depth } => {
                if team
                    .as_ref()
                    .is_some_and(|(team_depth, ..)| *team_depth == depth)
                {
                    team = None;
                }
            }
        }
        Ok(())
    })?;
    let (match_id, kickoff) =
        general.ok_or_else(|| malformed(META_FORMAT, "no <General> element"))?;
    Ok(Meta {
        match_id,
        kickoff,
        team_ids,
        players,
    })
}

/// A match section with a kick-off, in playing order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Section {
    FirstHalf,
    SecondHalf,
    FirstHalfExtra,
    SecondHalfExtra,
}

impl Section {
    fn parse(value: &str) -> Option<Section> {
        match value {
            "firstHalf" => Some(Section::FirstHalf),
            "secondHalf" => Some(Section::SecondHalf),
            "firstHalfExtra" => Some(Section::FirstHalfExtra),
            "secondHalfExtra" => Some(Section::SecondHalfExtra),
            _ => None,
        }
    }

    /// Minutes played before the section starts.
    fn minute_offset(self) -> i64 {
        match self {
            Section::FirstHalf => 0,
            Section::SecondHalf => 45,
            Section::FirstHalfExtra => 90,
            Section::SecondHalfExtra => 105,
        }
    }
}

/// One player event a message yields, with what the message says about the
/// player's side and position (used for clean sheets only).
struct Action {
    player: String,
    kind: EventKind,
    team: Option<String>,
    position: Option<String>,
}

impl Action {
    fn new(player: &str, kind: EventKind) -> Action {
        Action {
            player: player.to_owned(),
            kind,
            team: None,
            position: None,
        }
    }

    fn team(mut self, team: Option<&str>) -> Action {
        self.team = team.map(str::to_owned);
        self
    }
}

/// What one `<Event>` message means to Matchday.
enum Meaning {
    Delete,
    KickOff(Section),
    FinalWhistle(Section),
    Actions(Vec<Action>),
}

struct Message {
    provider_event_id: String,
    occurred_at: DateTime<Utc>,
    meaning: Meaning,
}

struct Messages {
    list: Vec<Message>,
    /// The latest `EventTime` of any event and that event's id.
    latest: Option<(DateTime<Utc>, String)>,
}

/// An `<Event>` being read: its depth, its element and its descendants
/// (each with its depth).
struct OpenEvent {
    depth: usize,
    event: Element,
    descendants: Vec<(usize, Element)>,
}

fn read_messages(xml: &str) -> Result<Messages, ParseError> {
    let mut messages = Messages {
        list: Vec::new(),
        latest: None,
    };
    let mut open: Option<OpenEvent> = None;
    walk(xml, EVENTS_FORMAT, |node| {
        match node {
            Node::Open { depth, element } => match open.as_mut() {
                Some(open) => open.descendants.push((depth, element)),
                None if element.name == "Event" => {
                    open = Some(OpenEvent {
                        depth,
                        event: element,
                        descendants: Vec::new(),
                    })
                }
                None => {}
            },
            Node::Close { depth } => {
                if open.as_ref().is_some_and(|open| open.depth == depth) {
                    if let Some(closed) = open.take() {
                        take_message(&mut messages, &closed.event, &closed.descendants)?;
                    }
                }
            }
        }
        Ok(())
    })?;
    Ok(messages)
}

fn take_message(
    messages: &mut Messages,
    event: &Element,
    descendants: &[(usize, Element)],
) -> Result<(), ParseError> {
    let id = event.attr("EventId");
    let time = event.attr("EventTime");
    if let (Some(id), Some(Ok(time))) =
        (id, time.map(|t| parse_time(t, EVENTS_FORMAT, "EventTime")))
    {
        if messages
            .latest
            .as_ref()
            .is_none_or(|(latest, _)| time > *latest)
        {
            messages.latest = Some((time, id.to_owned()));
        }
    }
    let Some(meaning) = meaning(descendants) else {
        return Ok(());
    };
    let id = id.ok_or_else(|| malformed(EVENTS_FORMAT, "a relevant <Event> has no EventId"))?;
    let time = time.ok_or_else(|| {
        malformed(
            EVENTS_FORMAT,
            format!("<Event EventId={id:?}> has no EventTime"),
        )
    })?;
    messages.list.push(Message {
        provider_event_id: id.to_owned(),
        occurred_at: parse_time(time, EVENTS_FORMAT, "EventTime")?,
        meaning,
    });
    Ok(())
}

/// Interprets the elements inside one `<Event>`; `None` for anything
/// Matchday ignores.
fn meaning(descendants: &[(usize, Element)]) -> Option<Meaning> {
    let find = |name: &str| {
        descendants
            .iter()
            .position(|(_, element)| element.name == name)
    };
    if find("Delete").is_some() {
        return Some(Meaning::Delete);
    }
    let actions = if let Some(index) = find("ShotAtGoal") {
        shot_actions(descendants, index)
    } else if let Some(index) = find("OwnGoal") {
        let own_goal = &descendants[index].1;
        own_goal
            .attr("Player")
            .map(|player| vec![Action::new(player, EventKind::OwnGoal).team(own_goal.attr("Team"))])
            .unwrap_or_default()
    } else if let Some(index) = find("Caution") {
        let caution = &descendants[index].1;
        let kind = match caution.attr("CardColor") {
            Some(color) if color.eq_ignore_ascii_case("yellow") => Some(EventKind::YellowCard),
            Some(color)
                if color.eq_ignore_ascii_case("yellowRed") || color.eq_ignore_ascii_case("red") =>
            {
                Some(EventKind::RedCard)
            }
            _ => None,
        };
        match (caution.attr("Player"), kind) {
            (Some(player), Some(kind)) => {
                vec![Action::new(player, kind).team(caution.attr("Team"))]
            }
            _ => Vec::new(),
        }
    } else if let Some(index) = find("Substitution") {
        let substitution = &descendants[index].1;
        let team = substitution.attr("Team");
        let mut actions = Vec::new();
        if let Some(out) = substitution.attr("PlayerOut") {
            actions.push(Action::new(out, EventKind::SubstitutedOff).team(team));
        }
        if let Some(on) = substitution.attr("PlayerIn") {
            let mut action = Action::new(on, EventKind::SubstitutedOn).team(team);
            action.position = substitution.attr("PlayingPosition").map(str::to_owned);
            actions.push(action);
        }
        actions
    } else if let Some(index) = find("KickOff") {
        return descendants[index]
            .1
            .attr("GameSection")
            .and_then(Section::parse)
            .map(Meaning::KickOff);
    } else if let Some(index) = find("FinalWhistle") {
        return descendants[index]
            .1
            .attr("GameSection")
            .and_then(Section::parse)
            .map(Meaning::FinalWhistle);
    } else {
        return None;
    };
    (!actions.is_empty()).then_some(Meaning::Actions(actions))
}

/// The events of the `ShotAtGoal` at `descendants[index]`.
fn shot_actions(descendants: &[(usize, Element)], index: usize) -> Vec<Action> {
    let (shot_depth, shot) = &descendants[index];
    let penalty = descendants[..index]
        .iter()
        .any(|(_, element)| element.name == "Penalty");
    let outcome = descendants[index + 1..]
        .iter()
        .take_while(|(depth, _)| depth > shot_depth)
        .map(|(_, element)| element)
        .find(|element| {
            matches!(
                element.name.as_str(),
                "SuccessfulShot"
                    | "SavedShot"
                    | "ShotWide"
                    | "BlockedShot"
                    | "ShotWoodWork"
                    | "OtherShot"
                    | "OwnGoal"
            )
        });
    let shooter = shot.attr("Player");
    let team = shot.attr("Team");
    let mut actions = Vec::new();
    let shooter_does = |kind: EventKind, actions: &mut Vec<Action>| {
        if let Some(shooter) = shooter {
            actions.push(Action::new(shooter, kind).team(team));
        }
    };
    match outcome.map(|element| (element.name.as_str(), element)) {
        Some(("SuccessfulShot", goal)) => {
            shooter_does(EventKind::Goal, &mut actions);
            let assist = goal
                .attr("Assist")
                .or_else(|| shot.attr("AssistShotAtGoal"));
            if let Some(assist) = assist.filter(|assist| Some(*assist) != shooter) {
                actions.push(Action::new(assist, EventKind::Assist).team(team));
            }
        }
        Some(("SavedShot", saved)) => {
            let (shooter_kind, keeper_kind) = if penalty {
                (EventKind::PenaltyMissed, EventKind::PenaltySaved)
            } else {
                (EventKind::ShotOnTarget, EventKind::Save)
            };
            shooter_does(shooter_kind, &mut actions);
            if let Some(keeper) = saved.attr("GoalKeeper") {
                actions.push(Action::new(keeper, keeper_kind));
            }
        }
        Some(("OwnGoal", own_goal)) => {
            if let Some(player) = own_goal.attr("Player").or(shooter) {
                actions.push(Action::new(player, EventKind::OwnGoal).team(own_goal.attr("Team")));
            }
        }
        _ if penalty => shooter_does(EventKind::PenaltyMissed, &mut actions),
        _ => shooter_does(EventKind::ShotOffTarget, &mut actions),
    }
    actions
}

fn assemble(meta: Meta, messages: Messages) -> MatchFeed {
    let Messages { list, latest } = messages;

    // Each section starts at its first kick-off message.
    let mut starts: Vec<(Section, DateTime<Utc>)> = Vec::new();
    for message in &list {
        if let Meaning::KickOff(section) = message.meaning {
            if !starts.iter().any(|(known, _)| *known == section) {
                starts.push((section, message.occurred_at));
            }
        }
    }
    let minute_at = |time: DateTime<Utc>| -> Option<i32> {
        let (section, start) = starts
            .iter()
            .filter(|(_, start)| *start <= time)
            .max_by_key(|(_, start)| *start)?;
        i32::try_from((time - *start).num_minutes() + 1 + section.minute_offset()).ok()
    };

    // The match ends at the final whistle of the last section kicked off.
    let last_section = starts.iter().map(|(section, _)| *section).max();
    let mut end: Option<(usize, Section)> = None;
    for (index, message) in list.iter().enumerate() {
        if let Meaning::FinalWhistle(section) = message.meaning {
            let late_enough = last_section.is_none_or(|last| section >= last);
            if late_enough && end.is_none_or(|(_, best)| section > best) {
                end = Some((index, section));
            }
        }
    }

    let deleted: HashSet<&str> = list
        .iter()
        .filter(|message| matches!(message.meaning, Meaning::Delete))
        .map(|message| message.provider_event_id.as_str())
        .collect();

    let mut items = Vec::new();
    let mut clean_sheet_at = None;
    for (index, message) in list.iter().enumerate() {
        match &message.meaning {
            Meaning::Delete => items.push(FeedItem::Delete {
                provider_event_id: message.provider_event_id.clone(),
                occurred_at: message.occurred_at,
            }),
            Meaning::Actions(actions) => {
                let pairs: Vec<(String, EventKind)> = actions
                    .iter()
                    .map(|action| (action.player.clone(), action.kind))
                    .collect();
                items.extend(
                    message_events(
                        PROVIDER,
                        &message.provider_event_id,
                        &pairs,
                        message.occurred_at,
                        minute_at(message.occurred_at),
                    )
                    .into_iter()
                    .map(FeedItem::Event),
                );
            }
            Meaning::KickOff(_) | Meaning::FinalWhistle(_) => {}
        }
        if end.is_some_and(|(end_index, _)| end_index == index) {
            clean_sheet_at = Some((
                items.len(),
                message.occurred_at,
                message.provider_event_id.clone(),
            ));
        }
    }
    let anchor = clean_sheet_at.or_else(|| latest.map(|(time, id)| (items.len(), time, id)));

    if let Some((position, time, id)) = anchor {
        let keepers = clean_sheet_keepers(&meta, &list, &deleted);
        let events = message_events(PROVIDER, &id, &keepers, time, minute_at(time));
        items.splice(position..position, events.into_iter().map(FeedItem::Event));
    }

    MatchFeed {
        match_id: meta.match_id,
        kickoff: meta.kickoff,
        players: meta
            .players
            .into_iter()
            .map(|player| player.lineup)
            .collect(),
        items,
    }
}

/// `(player, clean_sheet)` for every goalkeeper who played for a side that
/// conceded nothing, in match-information order.
fn clean_sheet_keepers(
    meta: &Meta,
    list: &[Message],
    deleted: &HashSet<&str>,
) -> Vec<(String, EventKind)> {
    let team_of = |action: &Action| -> Option<String> {
        meta.player(&action.player)
            .map(|player| player.team_id.clone())
            .or_else(|| action.team.clone())
    };
    let mut conceded: HashMap<String, u32> = HashMap::new();
    let mut unattributed = false;
    let mut came_on: HashSet<&str> = HashSet::new();
    let standing = list
        .iter()
        .filter(|message| !deleted.contains(message.provider_event_id.as_str()));
    for message in standing {
        let Meaning::Actions(actions) = &message.meaning else {
            continue;
        };
        for action in actions {
            match action.kind {
                EventKind::Goal => match team_of(action) {
                    Some(scorers) => {
                        for team in meta.team_ids.iter().filter(|team| **team != scorers) {
                            *conceded.entry(team.clone()).or_default() += 1;
                        }
                    }
                    None => unattributed = true,
                },
                EventKind::OwnGoal => match team_of(action) {
                    Some(team) => *conceded.entry(team).or_default() += 1,
                    None => unattributed = true,
                },
                EventKind::SubstitutedOn => {
                    let keeper = action.position.as_deref() == Some(GOALKEEPER)
                        || meta
                            .player(&action.player)
                            .is_some_and(|player| player.position.as_deref() == Some(GOALKEEPER));
                    if keeper {
                        came_on.insert(action.player.as_str());
                    }
                }
                _ => {}
            }
        }
    }
    if unattributed {
        return Vec::new();
    }
    meta.players
        .iter()
        .filter(|player| {
            let id = player.lineup.provider_id.as_str();
            let played_in_goal = (player.starting
                && player.position.as_deref() == Some(GOALKEEPER))
                || came_on.contains(id);
            played_in_goal && conceded.get(&player.team_id).copied().unwrap_or(0) == 0
        })
        .map(|player| (player.lineup.provider_id.clone(), EventKind::CleanSheet))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::ingest::FeedEvent;

    const REAL_EVENTS: &str = include_str!("../../data/feeds/idsse_J03WPY_events.xml");
    const REAL_META: &str = include_str!("../../data/feeds/idsse_J03WPY_meta.xml");

    fn real() -> MatchFeed {
        parse(REAL_EVENTS, REAL_META).unwrap()
    }

    fn events(feed: &MatchFeed) -> Vec<&FeedEvent> {
        feed.items
            .iter()
            .filter_map(|item| match item {
                FeedItem::Event(event) => Some(event),
                FeedItem::Delete { .. } => None,
            })
            .collect()
    }

    fn counts(feed: &MatchFeed) -> BTreeMap<&'static str, usize> {
        let mut counts = BTreeMap::new();
        for event in events(feed) {
            *counts.entry(event.kind.as_str()).or_default() += 1;
        }
        counts
    }

    fn players_of(feed: &MatchFeed, kind: EventKind) -> Vec<&str> {
        events(feed)
            .into_iter()
            .filter(|event| event.kind == kind)
            .map(|event| event.provider_player_id.as_str())
            .collect()
    }

    fn kinds_and_players(feed: &MatchFeed) -> Vec<(EventKind, &str)> {
        events(feed)
            .into_iter()
            .map(|event| (event.kind, event.provider_player_id.as_str()))
            .collect()
    }

    #[test]
    fn the_real_match_yields_exactly_these_counts_per_kind() {
        let expected = BTreeMap::from([
            ("assist", 1),
            ("clean_sheet", 1),
            ("goal", 1),
            ("save", 5),
            ("shot_off_target", 20),
            ("shot_on_target", 5),
            ("substituted_off", 9),
            ("substituted_on", 9),
            ("yellow_card", 9),
        ]);
        assert_eq!(counts(&real()), expected);
    }

    #[test]
    fn the_real_match_has_one_goal_by_duah_assisted_by_castrop() {
        let feed = real();
        let goal = events(&feed)
            .into_iter()
            .find(|event| event.kind == EventKind::Goal)
            .unwrap();
        assert_eq!(goal.event_id, "sportec:18237400000797:goal");
        assert_eq!(goal.provider_event_id, "18237400000797");
        assert_eq!(goal.provider_player_id, "DFL-OBJ-J0178P");
        assert_eq!(goal.minute, Some(47));
        assert_eq!(
            goal.occurred_at.to_rfc3339(),
            "2022-10-15T12:04:53.524+00:00"
        );
        assert_eq!(players_of(&feed, EventKind::Assist), ["DFL-OBJ-002GG4"]);
        let assist = events(&feed)
            .into_iter()
            .find(|event| event.kind == EventKind::Assist)
            .unwrap();
        assert_eq!(assist.event_id, "sportec:18237400000797:assist");
    }

    #[test]
    fn the_real_match_has_nine_yellow_cards_and_no_red() {
        let feed = real();
        assert_eq!(
            players_of(&feed, EventKind::YellowCard),
            [
                "DFL-OBJ-0000EJ",
                "DFL-OBJ-002FYC",
                "DFL-OBJ-00008F",
                "DFL-OBJ-0028BZ",
                "DFL-OBJ-0000F8",
                "DFL-OBJ-002G78",
                "DFL-OBJ-J01KJ5",
                "DFL-OBJ-0001HW",
                "DFL-OBJ-0001BX",
            ]
        );
        assert!(players_of(&feed, EventKind::RedCard).is_empty());
    }

    #[test]
    fn the_real_match_has_nine_substitutions_each_way() {
        let feed = real();
        let off = players_of(&feed, EventKind::SubstitutedOff);
        let on = players_of(&feed, EventKind::SubstitutedOn);
        assert_eq!(off.len(), 9);
        assert_eq!(on.len(), 9);
        assert_eq!((off[0], on[0]), ("DFL-OBJ-002G5J", "DFL-OBJ-00008K"));
        assert_eq!((off[8], on[8]), ("DFL-OBJ-0001LJ", "DFL-OBJ-0001BX"));
    }

    #[test]
    fn the_real_match_shots_add_up_to_the_26_in_the_file() {
        let feed = real();
        let shots = [
            EventKind::Goal,
            EventKind::ShotOnTarget,
            EventKind::ShotOffTarget,
        ]
        .into_iter()
        .map(|kind| players_of(&feed, kind).len())
        .sum::<usize>();
        assert_eq!(shots, 26);
        assert_eq!(players_of(&feed, EventKind::ShotOnTarget).len(), 5);
        assert_eq!(players_of(&feed, EventKind::ShotOffTarget).len(), 20);
        assert_eq!(
            players_of(&feed, EventKind::Save),
            [
                "DFL-OBJ-0028FW",
                "DFL-OBJ-0028FW",
                "DFL-OBJ-0001HW",
                "DFL-OBJ-0028FW",
                "DFL-OBJ-0028FW",
            ]
        );
        for kind in [
            EventKind::OwnGoal,
            EventKind::PenaltyMissed,
            EventKind::PenaltySaved,
        ] {
            assert!(players_of(&feed, kind).is_empty(), "{kind:?}");
        }
    }

    #[test]
    fn the_real_match_keeps_its_sixty_deletes() {
        let feed = real();
        let deletes: Vec<&FeedItem> = feed
            .items
            .iter()
            .filter(|item| matches!(item, FeedItem::Delete { .. }))
            .collect();
        assert_eq!(deletes.len(), 60);
        assert_eq!(
            deletes[0],
            &FeedItem::Delete {
                provider_event_id: "18237400000016".into(),
                occurred_at: "2022-10-15T11:01:58.480Z".parse().unwrap(),
            }
        );
    }

    #[test]
    fn the_real_match_reads_its_id_kickoff_and_squads() {
        let feed = real();
        assert_eq!(feed.match_id, "DFL-MAT-J03WPY");
        assert_eq!(
            feed.kickoff,
            "2022-10-15T11:01:28.300Z".parse::<DateTime<Utc>>().unwrap()
        );
        assert_eq!(feed.players.len(), 40);
        assert_eq!(
            feed.players[3],
            LineupPlayer {
                provider_id: "DFL-OBJ-0001HW".into(),
                name: "C. Mathenia".into(),
                team: "1. FC Nürnberg".into(),
                position: "TW".into(),
            }
        );
        let unused_keeper = feed
            .players
            .iter()
            .find(|p| p.provider_id == "DFL-OBJ-002G5E")
            .unwrap();
        assert_eq!(
            (unused_keeper.name.as_str(), unused_keeper.position.as_str()),
            ("C. Klaus", NO_POSITION)
        );
    }

    #[test]
    fn every_real_event_names_a_listed_player_and_a_unique_id() {
        let feed = real();
        let listed: HashSet<&str> = feed
            .players
            .iter()
            .map(|p| p.provider_id.as_str())
            .collect();
        let mut ids = HashSet::new();
        for event in events(&feed) {
            assert!(
                listed.contains(event.provider_player_id.as_str()),
                "{event:?}"
            );
            assert!(ids.insert(event.event_id.as_str()), "{event:?}");
        }
    }

    #[test]
    fn every_real_minute_is_between_1_and_100() {
        for event in events(&real()) {
            assert!(
                event
                    .minute
                    .is_some_and(|minute| (1..=100).contains(&minute)),
                "{event:?}"
            );
        }
    }

    #[test]
    fn the_real_items_keep_file_order_even_when_out_of_time_order() {
        let feed = real();
        let late_card = feed
            .items
            .iter()
            .position(|item| matches!(item, FeedItem::Event(e) if e.event_id == "sportec:18237400001484:yellow_card"))
            .unwrap();
        assert_eq!(late_card, feed.items.len() - 1);
        let FeedItem::Event(card) = &feed.items[late_card] else {
            unreachable!()
        };
        assert_eq!(card.minute, Some(36));
        let out_of_order = feed
            .items
            .windows(2)
            .filter(|pair| pair[1].occurred_at() < pair[0].occurred_at())
            .count();
        assert!(out_of_order > 0);
    }

    #[test]
    fn only_the_nurnberg_keeper_keeps_a_clean_sheet_at_the_final_whistle() {
        let feed = real();
        let sheets: Vec<&FeedEvent> = events(&feed)
            .into_iter()
            .filter(|event| event.kind == EventKind::CleanSheet)
            .collect();
        assert_eq!(sheets.len(), 1);
        let sheet = sheets[0];
        assert_eq!(sheet.provider_player_id, "DFL-OBJ-0001HW");
        assert_eq!(sheet.event_id, "sportec:18237400001464:clean_sheet");
        assert_eq!(
            sheet.occurred_at,
            "2022-10-15T12:54:41Z".parse::<DateTime<Utc>>().unwrap()
        );
        let keeper = feed
            .players
            .iter()
            .find(|p| p.provider_id == sheet.provider_player_id)
            .unwrap();
        assert_eq!(keeper.team, "1. FC Nürnberg");
    }

    // Synthetic documents.

    const META: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<PutDataRequest><MatchInformation>
  <General MatchId="DFL-MAT-TEST" KickoffTime="2024-05-01T18:30:00.000+02:00"/>
  <Teams>
    <Team TeamId="H" TeamName="Home &amp; Sons"><Players>
      <Player PersonId="H-GK" FirstName="Hans" LastName="Hüter" Starting="true" PlayingPosition="TW"/>
      <Player PersonId="H-ST" Shortname="O&apos;Striker" Starting="true" PlayingPosition="STZ"/>
      <Player PersonId="H-MF" Shortname="H. Mid" Starting="true" PlayingPosition="ZO"/>
      <Player PersonId="H-SUB" Shortname="H. Bench" Starting="false"/>
    </Players></Team>
    <Team TeamId="A" TeamName="Away"><Players>
      <Player PersonId="A-GK" Shortname="A. Keeper" Starting="true" PlayingPosition="TW"/>
      <Player PersonId="A-ST" Shortname="A. Striker" Starting="true" PlayingPosition="STZ"/>
      <Player PersonId="A-GK2" Shortname="A. Reserve" Starting="false"/>
    </Players></Team>
  </Teams>
</MatchInformation></PutDataRequest>"#;

    fn message(id: u32, time: &str, body: &str) -> String {
        format!(
            r#"<Event EventId="{id}" EventTime="2024-05-01T{time}+02:00" MatchId="DFL-MAT-TEST">{body}</Event>"#
        )
    }

    fn document(messages: &[String]) -> String {
        format!(
            "<?xml version=\"1.0\"?>\n<PutDataRequest>\n{}\n</PutDataRequest>",
            messages.join("\n")
        )
    }

    fn kick_off(id: u32, time: &str, section: &str) -> String {
        message(
            id,
            time,
            &format!(
                r#"<KickOff GameSection="{section}"><Play Player="H-ST"><Pass/></Play></KickOff>"#
            ),
        )
    }

    fn final_whistle(id: u32, time: &str, section: &str) -> String {
        message(
            id,
            time,
            &format!(r#"<FinalWhistle GameSection="{section}"/>"#),
        )
    }

    fn shot(id: u32, time: &str, player: &str, outcome: &str) -> String {
        let team = &player[..1];
        message(
            id,
            time,
            &format!(r#"<ShotAtGoal Team="{team}" Player="{player}">{outcome}</ShotAtGoal>"#),
        )
    }

    fn parse_messages(messages: &[String]) -> MatchFeed {
        parse(&document(messages), META).unwrap()
    }

    #[test]
    fn an_event_deleted_later_yields_the_event_then_the_delete() {
        let feed = parse_messages(&[
            kick_off(1, "18:30:00.000", "firstHalf"),
            shot(2, "18:40:30.000", "H-ST", "<SuccessfulShot/>"),
            message(2, "18:40:31.000", "<Delete/>"),
        ]);
        let goal_at = "2024-05-01T16:40:30Z".parse::<DateTime<Utc>>().unwrap();
        assert_eq!(
            feed.items[0],
            FeedItem::Event(FeedEvent {
                event_id: "sportec:2:goal".into(),
                provider_event_id: "2".into(),
                provider_player_id: "H-ST".into(),
                kind: EventKind::Goal,
                occurred_at: goal_at,
                minute: Some(11),
            })
        );
        assert_eq!(
            feed.items[1],
            FeedItem::Delete {
                provider_event_id: "2".into(),
                occurred_at: "2024-05-01T16:40:31Z".parse().unwrap(),
            }
        );
    }

    #[test]
    fn a_deleted_goal_does_not_cost_a_clean_sheet() {
        let feed = parse_messages(&[
            kick_off(1, "18:30:00.000", "firstHalf"),
            shot(2, "18:40:30.000", "H-ST", "<SuccessfulShot/>"),
            message(2, "18:40:31.000", "<Delete/>"),
            final_whistle(3, "19:16:00.000", "firstHalf"),
        ]);
        assert_eq!(players_of(&feed, EventKind::CleanSheet), ["H-GK", "A-GK"]);
    }

    #[test]
    fn shots_map_by_outcome_with_keeper_and_assist() {
        let feed = parse_messages(&[
            kick_off(1, "18:30:00.000", "firstHalf"),
            shot(
                2,
                "18:31:00.000",
                "H-ST",
                r#"<SuccessfulShot Assist="H-MF"/>"#,
            ),
            message(
                3,
                "18:32:00.000",
                r#"<ShotAtGoal Team="A" Player="A-ST" AssistShotAtGoal="A-GK"><SuccessfulShot/></ShotAtGoal>"#,
            ),
            shot(
                4,
                "18:33:00.000",
                "H-ST",
                r#"<SavedShot GoalKeeper="A-GK"/>"#,
            ),
            shot(5, "18:34:00.000", "H-ST", r#"<ShotWide/>"#),
            shot(6, "18:35:00.000", "H-ST", r#"<BlockedShot Player="A-ST"/>"#),
            shot(7, "18:36:00.000", "H-ST", r#"<ShotWoodWork/>"#),
            shot(8, "18:37:00.000", "H-ST", r#"<OtherShot/>"#),
        ]);
        assert_eq!(
            kinds_and_players(&feed),
            [
                (EventKind::Goal, "H-ST"),
                (EventKind::Assist, "H-MF"),
                (EventKind::Goal, "A-ST"),
                (EventKind::Assist, "A-GK"),
                (EventKind::ShotOnTarget, "H-ST"),
                (EventKind::Save, "A-GK"),
                (EventKind::ShotOffTarget, "H-ST"),
                (EventKind::ShotOffTarget, "H-ST"),
                (EventKind::ShotOffTarget, "H-ST"),
                (EventKind::ShotOffTarget, "H-ST"),
            ]
        );
    }

    #[test]
    fn penalties_are_scored_saved_or_missed() {
        let penalty = |id, player: &str, outcome: &str| {
            message(
                id,
                "18:50:00.000",
                &format!(
                    r#"<Penalty Team="H"><ShotAtGoal Team="H" Player="{player}">{outcome}</ShotAtGoal></Penalty>"#
                ),
            )
        };
        let feed = parse_messages(&[
            kick_off(1, "18:30:00.000", "firstHalf"),
            penalty(2, "H-ST", r#"<SavedShot GoalKeeper="A-GK"/>"#),
            penalty(3, "H-MF", "<ShotWide/>"),
            penalty(4, "H-ST", "<ShotWoodWork/>"),
            penalty(5, "H-ST", "<SuccessfulShot/>"),
        ]);
        assert_eq!(
            kinds_and_players(&feed),
            [
                (EventKind::PenaltyMissed, "H-ST"),
                (EventKind::PenaltySaved, "A-GK"),
                (EventKind::PenaltyMissed, "H-MF"),
                (EventKind::PenaltyMissed, "H-ST"),
                (EventKind::Goal, "H-ST"),
                // No final whistle: the clean sheet comes after the last event.
                (EventKind::CleanSheet, "H-GK"),
            ]
        );
    }

    #[test]
    fn cards_substitutions_and_own_goals_map_to_their_kinds() {
        let feed = parse_messages(&[
            kick_off(1, "18:30:00.000", "firstHalf"),
            message(
                2,
                "18:31:00.000",
                r#"<Caution Team="H" Player="H-MF" CardColor="yellow"/>"#,
            ),
            message(
                3,
                "18:32:00.000",
                r#"<Caution Team="H" Player="H-MF" CardColor="yellowRed"/>"#,
            ),
            message(
                4,
                "18:33:00.000",
                r#"<Caution Team="A" Player="A-ST" CardColor="red"/>"#,
            ),
            message(
                5,
                "18:34:00.000",
                r#"<Caution Team="A" Player="A-GK" CardColor="purple"/>"#,
            ),
            message(
                6,
                "18:35:00.000",
                r#"<Substitution Team="H" PlayerOut="H-ST" PlayerIn="H-SUB"/>"#,
            ),
            message(7, "18:36:00.000", r#"<OwnGoal Team="A" Player="A-ST"/>"#),
            shot(8, "18:37:00.000", "H-MF", r#"<OwnGoal Player="A-GK"/>"#),
        ]);
        assert_eq!(
            kinds_and_players(&feed),
            [
                (EventKind::YellowCard, "H-MF"),
                (EventKind::RedCard, "H-MF"),
                (EventKind::RedCard, "A-ST"),
                (EventKind::SubstitutedOff, "H-ST"),
                (EventKind::SubstitutedOn, "H-SUB"),
                (EventKind::OwnGoal, "A-ST"),
                (EventKind::OwnGoal, "A-GK"),
                (EventKind::CleanSheet, "H-GK"),
            ]
        );
    }

    #[test]
    fn minutes_count_from_each_half_kick_off_whatever_the_arrival_order() {
        let feed = parse_messages(&[
            kick_off(1, "18:30:00.000", "firstHalf"),
            shot(2, "18:30:59.999", "H-ST", "<ShotWide/>"),
            kick_off(3, "19:35:00.000", "secondHalf"),
            shot(4, "19:35:00.000", "H-ST", "<ShotWide/>"),
            shot(5, "19:16:10.000", "H-ST", "<ShotWide/>"),
            kick_off(6, "20:30:00.000", "firstHalfExtra"),
            shot(7, "20:32:00.000", "H-ST", "<ShotWide/>"),
            kick_off(8, "20:50:00.000", "secondHalfExtra"),
            shot(9, "20:50:30.000", "H-ST", "<ShotWide/>"),
            shot(10, "18:29:00.000", "H-ST", "<ShotWide/>"),
        ]);
        let minutes: Vec<Option<i32>> = events(&feed)
            .into_iter()
            .filter(|event| event.kind == EventKind::ShotOffTarget)
            .map(|event| event.minute)
            .collect();
        assert_eq!(
            minutes,
            [Some(1), Some(46), Some(47), Some(93), Some(106), None]
        );
    }

    #[test]
    fn a_goalless_draw_gives_both_keepers_clean_sheets_with_distinct_ids() {
        let feed = parse_messages(&[
            kick_off(1, "18:30:00.000", "firstHalf"),
            kick_off(2, "19:35:00.000", "secondHalf"),
            final_whistle(3, "20:20:00.000", "secondHalf"),
            message(
                4,
                "18:45:00.000",
                r#"<Caution Team="H" Player="H-MF" CardColor="yellow"/>"#,
            ),
        ]);
        let ids: Vec<&str> = events(&feed)
            .iter()
            .map(|event| event.event_id.as_str())
            .collect();
        assert_eq!(
            ids,
            [
                "sportec:3:clean_sheet:H-GK",
                "sportec:3:clean_sheet:A-GK",
                "sportec:4:yellow_card",
            ]
        );
        assert_eq!(events(&feed)[0].minute, Some(91));
    }

    #[test]
    fn a_substitute_keeper_shares_the_clean_sheet_and_a_conceding_side_gets_none() {
        let feed = parse_messages(&[
            kick_off(1, "18:30:00.000", "firstHalf"),
            message(
                2,
                "18:40:00.000",
                r#"<Substitution Team="A" PlayerOut="A-GK" PlayerIn="A-GK2" PlayingPosition="TW"/>"#,
            ),
            shot(3, "18:41:00.000", "A-ST", "<SuccessfulShot/>"),
            final_whistle(4, "19:16:00.000", "firstHalf"),
        ]);
        assert_eq!(players_of(&feed, EventKind::CleanSheet), ["A-GK", "A-GK2"]);
    }

    #[test]
    fn an_own_goal_costs_its_own_side_the_clean_sheet() {
        let feed = parse_messages(&[
            kick_off(1, "18:30:00.000", "firstHalf"),
            message(2, "18:36:00.000", r#"<OwnGoal Team="A" Player="A-ST"/>"#),
            final_whistle(3, "19:16:00.000", "firstHalf"),
        ]);
        assert_eq!(players_of(&feed, EventKind::CleanSheet), ["H-GK"]);
    }

    #[test]
    fn without_a_final_whistle_clean_sheets_come_last_at_the_latest_event() {
        let feed = parse_messages(&[
            kick_off(1, "18:30:00.000", "firstHalf"),
            kick_off(2, "19:35:00.000", "secondHalf"),
            final_whistle(3, "19:16:00.000", "firstHalf"),
            message(4, "20:19:00.000", r#"<Play Player="H-ST"><Pass/></Play>"#),
            message(
                5,
                "18:45:00.000",
                r#"<Caution Team="H" Player="H-MF" CardColor="yellow"/>"#,
            ),
        ]);
        let all = events(&feed);
        assert_eq!(all[0].kind, EventKind::YellowCard);
        assert_eq!(all[1].event_id, "sportec:4:clean_sheet:H-GK");
        assert_eq!(
            all[1].occurred_at,
            "2024-05-01T18:19:00Z".parse::<DateTime<Utc>>().unwrap()
        );
        assert_eq!(all.len(), 3);
    }

    #[test]
    fn attribute_values_are_unescaped_and_names_fall_back() {
        let feed = parse_messages(&[]);
        let names: Vec<(&str, &str, &str)> = feed
            .players
            .iter()
            .map(|p| (p.name.as_str(), p.team.as_str(), p.position.as_str()))
            .collect();
        assert_eq!(names[0], ("Hans Hüter", "Home & Sons", "TW"));
        assert_eq!(names[1], ("O'Striker", "Home & Sons", "STZ"));
        assert_eq!(names[3], ("H. Bench", "Home & Sons", NO_POSITION));
        assert_eq!(
            feed.kickoff,
            "2024-05-01T16:30:00Z".parse::<DateTime<Utc>>().unwrap()
        );
        assert!(feed.items.is_empty());
    }

    #[test]
    fn malformed_xml_is_an_error() {
        let cases = [
            "<PutDataRequest><Event EventId=\"1\"></PutDataRequest>",
            "<PutDataRequest><Event EventId=\"1></Event></PutDataRequest>",
            "<PutDataRequest>",
            "<a/><b/>",
            "just text",
            "<PutDataRequest><Event EventId=\"1\" EventId=\"2\"/></PutDataRequest>",
            "<PutDataRequest><Event EventId=\"&bogus;\"/></PutDataRequest>",
        ];
        for case in cases {
            assert!(parse(case, META).is_err(), "{case}");
            assert!(parse(&document(&[]), case).is_err(), "{case}");
        }
    }

    #[test]
    fn a_relevant_event_without_a_valid_time_is_an_error() {
        let no_time = r#"<PutDataRequest><Event EventId="1"><Caution Player="H-MF" CardColor="yellow"/></Event></PutDataRequest>"#;
        let bad_time = r#"<PutDataRequest><Event EventId="1" EventTime="yesterday"><Delete/></Event></PutDataRequest>"#;
        let ignored = r#"<PutDataRequest><Event EventId="1" EventTime="yesterday"><Play/></Event></PutDataRequest>"#;
        assert!(parse(no_time, META).is_err());
        assert!(parse(bad_time, META).is_err());
        assert!(parse(ignored, META).is_ok());
    }

    #[test]
    fn an_empty_string_is_an_error() {
        assert!(parse("", META).is_err());
        assert!(parse(&document(&[]), "").is_err());
        assert!(parse("  \n", "").is_err());
    }

    #[test]
    fn no_prefix_of_a_document_panics() {
        let events = document(&[
            kick_off(1, "18:30:00.000", "firstHalf"),
            shot(
                2,
                "18:40:30.000",
                "H-ST",
                r#"<SavedShot GoalKeeper="A-GK"/>"#,
            ),
            message(3, "18:41:00.000", "<Delete/>"),
            final_whistle(4, "19:16:00.000", "firstHalf"),
        ]);
        for end in (0..events.len()).filter(|end| events.is_char_boundary(*end)) {
            let _ = parse(&events[..end], META);
        }
        for end in (0..META.len()).filter(|end| META.is_char_boundary(*end)) {
            let _ = parse(&events, &META[..end]);
        }
        assert!(parse(&events, META).is_ok());
    }
}
