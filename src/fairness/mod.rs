//! Fairness review: accounts whose fills keep landing just ahead of the
//! events that move the price their way.
//!
//! The feed lags the stadium by 15–40 s, so someone at the ground knows a
//! goal before the market does. A fill on a player inside
//! `[occurred_at − lag, applied_at]` of an event on that player, on the side
//! the event then favoured (a buy before a rise, a sell before a fall), is
//! *ahead* of it. Honest traders land some fills there by chance; the
//! review compares each account's share of such fills with the share across
//! every account, as a binomial z-score, and shows the fills behind it so
//! an operator can judge.

pub mod pg;

use chrono::{DateTime, Utc};
use serde::Serialize;

/// One fill ahead of an event, with the event.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Evidence {
    pub order_id: i64,
    pub player_id: i64,
    pub side: String,
    pub quantity: i64,
    pub price_cents: i64,
    pub executed_at: DateTime<Utc>,
    pub event_id: String,
    pub kind: String,
    pub occurred_at: DateTime<Utc>,
    pub applied_at: DateTime<Utc>,
    pub price_before_cents: i64,
    pub price_after_cents: i64,
    /// What the fill gained when the event's price came in: for a buy the
    /// new price less the fill's, for a sell the other way round, times the
    /// quantity.
    pub gain_cents: i64,
    /// The event is a provider's correction withdrawing an earlier one
    /// (`kind` is the withdrawn event's).
    pub correction: bool,
}

/// An account worth a look.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Suspect {
    pub user_id: i64,
    pub username: String,
    /// Every fill of the account.
    pub fills: i64,
    /// Of them, ahead of an event that favoured them.
    pub ahead: i64,
    /// `ahead` expected by chance: `fills` × the base rate.
    pub expected: f64,
    /// How many standard deviations `ahead` lies above `expected`.
    pub score: f64,
    /// Summed gain of the fills ahead.
    pub edge_cents: i64,
    /// The most recent fills ahead, newest first.
    pub evidence: Vec<Evidence>,
}

/// The review's answer.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Review {
    pub lag_seconds: i64,
    /// Fills of every account.
    pub fills: i64,
    /// Of them, ahead of an event that favoured them.
    pub ahead: i64,
    /// `ahead / fills`: the chance an honest fill lands ahead.
    pub base_rate: f64,
    pub suspects: Vec<Suspect>,
}

/// What the operator asks for.
#[derive(Debug, Clone, Copy)]
pub struct ReviewQuery {
    /// How far before an event's `occurred_at` a fill counts as ahead.
    pub lag_seconds: i64,
    /// Accounts with fewer fills are not scored (too little evidence).
    pub min_fills: i64,
    /// Accounts returned, highest score first.
    pub limit: i64,
    /// Evidence rows per account.
    pub evidence: usize,
}

/// How many standard deviations `ahead` of `fills` lies above what
/// `base_rate` predicts (binomial). With a base rate of 0 or 1 nobody
/// stands out from anybody.
pub fn score(fills: i64, ahead: i64, base_rate: f64) -> f64 {
    if fills <= 0 || !(base_rate > 0.0 && base_rate < 1.0) {
        return 0.0;
    }
    let n = fills as f64;
    let expected = n * base_rate;
    (ahead as f64 - expected) / (n * base_rate * (1.0 - base_rate)).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_account_at_the_base_rate_scores_zero() {
        assert_eq!(score(100, 10, 0.1), 0.0);
    }

    #[test]
    fn more_fills_ahead_than_chance_score_higher_with_more_evidence() {
        let few = score(10, 5, 0.1);
        let many = score(100, 50, 0.1);
        assert!(few > 3.0, "{few}");
        assert!(many > few, "{many} <= {few}");
        assert!(score(100, 2, 0.1) < 0.0);
    }

    #[test]
    fn degenerate_base_rates_and_empty_accounts_score_zero() {
        assert_eq!(score(10, 0, 0.0), 0.0);
        assert_eq!(score(10, 10, 1.0), 0.0);
        assert_eq!(score(0, 0, 0.5), 0.0);
        assert_eq!(score(10, 3, f64::NAN), 0.0);
    }
}
