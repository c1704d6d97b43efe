//! The DFL/Sportec adapter on arbitrary bytes: events XML against the real
//! match information, or (input starting `META`) match information against
//! a few real events. Any input: an error or a feed, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

/// The corpus's own seeds (the bundled real match: its match information
/// and its first 60 events; CC BY 4.0, see data/feeds/README.md).
const META: &str = include_str!("../corpus/sportec/meta.xml");
const EVENTS: &str = include_str!("../corpus/sportec/events.xml");

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let meta = META.strip_prefix("META").unwrap_or(META);
    let _ = match text.strip_prefix("META") {
        Some(fuzzed) => matchday::ingest::sportec::parse(EVENTS, fuzzed),
        None => matchday::ingest::sportec::parse(text, meta),
    };
});
