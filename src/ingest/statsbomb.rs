//! StatsBomb open-data events JSON + lineups JSON → [`MatchFeed`](super::MatchFeed).
