//! The price model, pure: event jumps, corrections, mean-reverting ticks.
//! Integer arithmetic throughout (basis points of the current price).

use std::collections::HashMap;

use rand::Rng;

use crate::config::PricingSettings;
use crate::domain::Cents;
use crate::ingest::EventKind;

/// Basis points in one whole.
const BP: i128 = 10_000;
/// No live price goes above this, so price × the largest order quantity
/// (10^12 × 10^6) stays far inside i64.
pub const MAX_LIVE_PRICE_CENTS: i64 = 1_000_000_000_000;

/// How prices move.
#[derive(Debug, Clone)]
pub struct PricingRules {
    jumps_bp: HashMap<EventKind, i64>,
    floor: Cents,
    volatility_bp: i64,
    reversion_pct: i64,
}

/// A configuration that would break what API.md promises.
#[derive(Debug, thiserror::Error)]
#[error("pricing configuration: {0}")]
pub struct RulesError(String);

impl PricingRules {
    /// Builds and checks the rules: every kind has a jump, directions match
    /// API.md (goal, assist up; red card, own goal down), no jump at or below
    /// −100 %.
    pub fn from_settings(settings: &PricingSettings) -> Result<PricingRules, RulesError> {
        let mut jumps_bp = HashMap::new();
        for kind in EventKind::ALL {
            let bp = *settings.jumps_bp.get(kind.as_str()).ok_or_else(|| {
                RulesError(format!("pricing.jumps_bp.{} is missing", kind.as_str()))
            })?;
            if bp <= -9_000 || bp > 100_000 {
                return Err(RulesError(format!(
                    "pricing.jumps_bp.{} must be within -9000..=100000",
                    kind.as_str()
                )));
            }
            jumps_bp.insert(kind, bp);
        }
        for (kind, up) in [
            (EventKind::Goal, true),
            (EventKind::Assist, true),
            (EventKind::RedCard, false),
            (EventKind::OwnGoal, false),
        ] {
            let bp = jumps_bp[&kind];
            if (up && bp <= 0) || (!up && bp >= 0) {
                return Err(RulesError(format!(
                    "pricing.jumps_bp.{} must move the price {}",
                    kind.as_str(),
                    if up { "up" } else { "down" }
                )));
            }
        }
        if settings.floor_cents < 1 {
            return Err(RulesError("pricing.floor_cents must be >= 1".into()));
        }
        if !(0..=5_000).contains(&settings.tick_volatility_bp)
            || !(0..=100).contains(&settings.tick_reversion_pct)
        {
            return Err(RulesError(
                "pricing.tick_volatility_bp must be 0..=5000 and tick_reversion_pct 0..=100".into(),
            ));
        }
        Ok(PricingRules {
            jumps_bp,
            floor: Cents::new(settings.floor_cents),
            volatility_bp: settings.tick_volatility_bp,
            reversion_pct: settings.tick_reversion_pct,
        })
    }

    /// The lowest price anything can have.
    pub fn floor(&self) -> Cents {
        self.floor
    }

    fn clamp(&self, value: i128) -> Cents {
        let value = value.clamp(self.floor.get() as i128, MAX_LIVE_PRICE_CENTS as i128);
        Cents::new(value as i64)
    }

    /// The price right after an event of `kind`. A non-zero jump always moves
    /// the price at least one cent in its direction (unless at the floor).
    pub fn after_event(&self, price: Cents, kind: EventKind) -> Cents {
        let bp = self.jumps_bp[&kind] as i128;
        let current = price.get() as i128;
        let mut next = current * (BP + bp) / BP;
        if bp > 0 && next == current {
            next += 1;
        } else if bp < 0 && next == current {
            next -= 1;
        }
        self.clamp(next)
    }

    /// The price after withdrawing an event (a provider's `Delete`) that
    /// moved the price from `before` to `after`: the same ratio undone, so a
    /// correction right after its event restores the price exactly, floor or
    /// not, and one after ticks keeps their movement.
    pub fn after_correction(&self, current: Cents, before: Cents, after: Cents) -> Cents {
        if after.get() <= 0 {
            return current;
        }
        self.clamp(current.get() as i128 * before.get() as i128 / after.get() as i128)
    }

    /// One between-event tick: a pull of `reversion_pct` % of the distance
    /// back to `anchor`, plus uniform noise of ±`volatility_bp`.
    pub fn tick(&self, price: Cents, anchor: Cents, rng: &mut impl Rng) -> Cents {
        let current = price.get() as i128;
        let pull = (anchor.get() as i128 - current) * self.reversion_pct as i128 / 100;
        let noise_bp = if self.volatility_bp == 0 {
            0
        } else {
            rng.gen_range(-self.volatility_bp..=self.volatility_bp) as i128
        };
        let noise = current * noise_bp / BP;
        self.clamp(current + pull + noise)
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    use super::*;

    fn settings() -> PricingSettings {
        let jumps = EventKind::ALL
            .iter()
            .map(|k| {
                let bp = match k {
                    EventKind::Goal => 1_200,
                    EventKind::Assist => 600,
                    EventKind::RedCard => -1_500,
                    EventKind::OwnGoal => -1_000,
                    EventKind::SubstitutedOn => 0,
                    _ => 100,
                };
                (k.as_str().to_string(), bp)
            })
            .collect();
        PricingSettings {
            tick_ms: 250,
            history_ms: 1_000,
            history_retention_hours: 168,
            floor_cents: 100,
            tick_volatility_bp: 20,
            tick_reversion_pct: 10,
            jumps_bp: jumps,
        }
    }

    #[test]
    fn goals_raise_and_red_cards_lower_the_price() {
        let rules = PricingRules::from_settings(&settings()).unwrap();
        assert_eq!(
            rules.after_event(Cents::new(1_000), EventKind::Goal),
            Cents::new(1_120)
        );
        assert_eq!(
            rules.after_event(Cents::new(1_000), EventKind::RedCard),
            Cents::new(850)
        );
        assert_eq!(
            rules.after_event(Cents::new(1_000), EventKind::SubstitutedOn),
            Cents::new(1_000)
        );
    }

    #[test]
    fn a_small_price_still_moves_one_cent_in_the_jump_direction() {
        let mut s = settings();
        s.floor_cents = 1;
        let rules = PricingRules::from_settings(&s).unwrap();
        assert_eq!(
            rules.after_event(Cents::new(5), EventKind::Assist),
            Cents::new(6)
        );
        assert_eq!(
            rules.after_event(Cents::new(5), EventKind::OwnGoal),
            Cents::new(4)
        );
    }

    #[test]
    fn prices_never_fall_below_the_floor() {
        let rules = PricingRules::from_settings(&settings()).unwrap();
        let mut price = Cents::new(150);
        for _ in 0..50 {
            price = rules.after_event(price, EventKind::RedCard);
        }
        assert_eq!(price, rules.floor());
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..1_000 {
            price = rules.tick(price, Cents::new(100), &mut rng);
            assert!(price >= rules.floor());
        }
    }

    #[test]
    fn a_correction_right_after_its_event_restores_the_price_exactly() {
        let rules = PricingRules::from_settings(&settings()).unwrap();
        for start in [100, 999, 1_000, 12_345, 1_000_000] {
            for kind in EventKind::ALL {
                let start = Cents::new(start);
                let moved = rules.after_event(start, kind);
                assert_eq!(
                    rules.after_correction(moved, start, moved),
                    start,
                    "{kind:?}"
                );
            }
        }
        // After ticks moved it 10 % up, the correction keeps those 10 %.
        let back = rules.after_correction(Cents::new(1_232), Cents::new(1_000), Cents::new(1_120));
        assert_eq!(back, Cents::new(1_100));
    }

    #[test]
    fn ticks_revert_to_the_anchor_on_average() {
        let rules = PricingRules::from_settings(&settings()).unwrap();
        let mut rng = StdRng::seed_from_u64(42);
        let anchor = Cents::new(10_000);
        let mut price = Cents::new(13_000);
        for _ in 0..200 {
            price = rules.tick(price, anchor, &mut rng);
        }
        assert!((price.get() - anchor.get()).abs() < 300, "{price:?}");
    }

    #[test]
    fn rules_refuse_a_goal_that_lowers_the_price() {
        let mut s = settings();
        s.jumps_bp.insert("goal".into(), -10);
        assert!(PricingRules::from_settings(&s).is_err());
        let mut s = settings();
        s.jumps_bp.remove("save");
        assert!(PricingRules::from_settings(&s).is_err());
    }
}
