//! DFL/Sportec event XML + match information → [`MatchFeed`](super::MatchFeed).
