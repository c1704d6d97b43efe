//! The StatsBomb adapter on arbitrary bytes: events JSON against a small
//! real-shaped lineup, or (input starting `LINEUPS`) lineups against a few
//! events. Any input: an error or a feed, never a panic.
#![no_main]

use chrono::TimeZone;
use libfuzzer_sys::fuzz_target;

/// The corpus's own seeds (tests/fixtures/statsbomb).
const LINEUPS: &str = include_str!("../corpus/statsbomb/lineups.json");
const EVENTS: &str = include_str!("../corpus/statsbomb/events.json");

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let kickoff = chrono::Utc
        .with_ymd_and_hms(2022, 10, 15, 11, 0, 0)
        .single()
        .expect("a valid kickoff");
    let lineups = LINEUPS.strip_prefix("LINEUPS").unwrap_or(LINEUPS);
    let _ = match text.strip_prefix("LINEUPS") {
        Some(fuzzed) => matchday::ingest::statsbomb::parse(EVENTS, fuzzed, "fuzz", kickoff),
        None => matchday::ingest::statsbomb::parse(text, lineups, "fuzz", kickoff),
    };
});
