//! Value types shared by every module: ids, money and quantities.
//!
//! Constructors check their ranges, arithmetic is checked, and none of these
//! types derive `Serialize`: wire types in `http/` convert explicitly.

use std::fmt;

/// A user account id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserId(pub i64);

/// A player (the thing whose shares are traded) id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PlayerId(pub i64);

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Display for PlayerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// An amount of money in cents. May be negative only where a ledger entry or
/// a difference needs it; balances are checked non-negative by their owners.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cents(i64);

impl Cents {
    pub const ZERO: Cents = Cents(0);

    /// Wraps a cent amount.
    pub const fn new(cents: i64) -> Cents {
        Cents(cents)
    }

    /// The raw count of cents.
    pub const fn get(self) -> i64 {
        self.0
    }

    /// `self × quantity`, or `None` on overflow.
    pub fn times(self, quantity: Quantity) -> Option<Cents> {
        self.0.checked_mul(quantity.get()).map(Cents)
    }

    /// `self + other`, or `None` on overflow.
    pub fn checked_add(self, other: Cents) -> Option<Cents> {
        self.0.checked_add(other.0).map(Cents)
    }
}

/// A number of shares: 1 ..= [`Quantity::MAX`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Quantity(i64);

impl Quantity {
    /// The largest quantity a single order may carry (API.md).
    pub const MAX: i64 = 1_000_000;

    /// A quantity within 1 ..= MAX, or `None`.
    pub fn new(value: i64) -> Option<Quantity> {
        (1..=Quantity::MAX)
            .contains(&value)
            .then_some(Quantity(value))
    }

    /// The raw count.
    pub const fn get(self) -> i64 {
        self.0
    }
}

/// Which way an order goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Buy,
    Sell,
}

impl Side {
    pub const ALL: [Side; 2] = [Side::Buy, Side::Sell];

    /// The wire and database spelling.
    pub const fn as_str(self) -> &'static str {
        match self {
            Side::Buy => "buy",
            Side::Sell => "sell",
        }
    }

    /// Parses the wire spelling.
    pub fn parse(value: &str) -> Option<Side> {
        Side::ALL.into_iter().find(|side| side.as_str() == value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantity_accepts_exactly_one_to_a_million() {
        assert!(Quantity::new(0).is_none());
        assert!(Quantity::new(-1).is_none());
        assert_eq!(Quantity::new(1).map(Quantity::get), Some(1));
        assert_eq!(Quantity::new(1_000_000).map(Quantity::get), Some(1_000_000));
        assert!(Quantity::new(1_000_001).is_none());
    }

    #[test]
    fn multiplying_money_reports_overflow_instead_of_wrapping() {
        let big = Cents::new(i64::MAX / 2 + 1);
        assert!(big.times(Quantity::new(2).unwrap()).is_none());
        assert_eq!(
            Cents::new(150).times(Quantity::new(3).unwrap()),
            Some(Cents::new(450))
        );
    }
}
