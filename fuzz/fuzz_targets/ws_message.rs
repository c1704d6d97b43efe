//! A WebSocket client's text frame: parsed, then every channel it names.
//! Any input: an error frame or a message, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use matchday::broadcast::ws::{parse_channel, parse_client_message, ClientMessage};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match parse_client_message(text) {
        Ok(ClientMessage::Subscribe(channels) | ClientMessage::Unsubscribe(channels)) => {
            for channel in &channels {
                let _ = parse_channel(channel);
            }
        }
        Ok(ClientMessage::Ping) | Err(_) => {}
    }
});
