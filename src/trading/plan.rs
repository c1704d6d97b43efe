//! Group commit's arithmetic. A batch's transaction reads, under its
//! locks, the state its orders touch (players, users, holdings); [`decide`]
//! then settles every order against that state one after another, in
//! arrival order, by the rules the one-by-one path (`pg::execute`) applies
//! in SQL; the batch writes the result with a handful of set-based
//! statements. Pure: no I/O, so the rules are unit-tested here.

use std::collections::HashMap;

use chrono::{DateTime, Duration as TimeDelta, Utc};

use super::{pg::removed_basis, TradingError};
use super::{retry_after_ms, Fairness, FairnessPolicy, NewOrder, OrderStatus, Rejection};
use crate::domain::{Cents, PlayerId, Side, UserId};
use crate::error::Unexpected;

/// A player as the batch read it, inside its trade gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlayerState {
    pub epoch: i64,
    pub locked_until: Option<DateTime<Utc>>,
    pub price: Cents,
}

/// A user's account, read under the batch's row lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserState {
    pub cash: Cents,
    pub held: Cents,
    /// Proceeds of provisional sells: not spendable (a void takes them back).
    pub provisional_proceeds: Cents,
    pub revision: i64,
}

/// One holding, read under the batch's row lock; absent rows are zero.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HoldingState {
    pub quantity: i64,
    pub cost: i64,
    /// Shares (and their cost) bought provisionally: not sellable yet.
    pub provisional_quantity: i64,
    pub provisional_cost: i64,
    /// When the first of those becomes final.
    pub first_final: Option<DateTime<Utc>>,
}

/// Everything a batch reads before it decides.
#[derive(Debug, Clone, Default)]
pub struct BatchState {
    pub now: DateTime<Utc>,
    pub players: HashMap<PlayerId, PlayerState>,
    pub users: HashMap<UserId, UserState>,
    pub holdings: HashMap<(UserId, PlayerId), HoldingState>,
}

/// A fill as decided, before its id is allocated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedFill {
    pub price: Cents,
    pub total: Cents,
    /// Cost basis added (buy) or removed (sell).
    pub basis: Cents,
    pub epoch: i64,
    pub status: OrderStatus,
    pub final_at: Option<DateTime<Utc>>,
    /// The user's cash, held cash and account revision right after it.
    pub balance: Cents,
    pub held: Cents,
    pub revision: i64,
    /// The holding right after it: (quantity, cost).
    pub holding: (i64, i64),
}

/// What one order of a batch comes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// It fills.
    Fill(PlannedFill),
    /// Refused for a business reason, remembered under its key.
    Reject(Rejection),
    /// No such player: answered 404, not remembered.
    UnknownPlayer,
    /// Trading on the player is locked (423): nothing is written.
    Locked { retry_after_ms: i64 },
    /// The shares to sell include provisional ones (409): nothing is written.
    Provisional { retry_after_ms: i64 },
}

impl Decision {
    /// The refusal a [`Decision::Locked`] or [`Decision::Provisional`] answers with.
    pub fn refusal(&self) -> Option<TradingError> {
        match *self {
            Decision::Locked { retry_after_ms } => {
                Some(TradingError::PlayerLocked { retry_after_ms })
            }
            Decision::Provisional { retry_after_ms } => {
                Some(TradingError::HoldingsProvisional { retry_after_ms })
            }
            _ => None,
        }
    }
}

/// Decides `orders` in order against `state`, which it leaves as the
/// batch's writes will leave the database. `orders` must be the batch's
/// fresh orders (keys claimed), in arrival order.
pub fn decide(
    orders: &[&NewOrder],
    state: &mut BatchState,
    fairness: &Fairness,
) -> Result<Vec<Decision>, Unexpected> {
    let window = match fairness.policy {
        FairnessPolicy::VoidWindow if !fairness.void_window.is_zero() => {
            TimeDelta::from_std(fairness.void_window).ok()
        }
        _ => None,
    };
    let status = match window {
        Some(_) => OrderStatus::Provisional,
        None => OrderStatus::Filled,
    };
    let final_at = window.map(|window| state.now + window);
    orders
        .iter()
        .map(|order| decide_one(order, state, status, final_at))
        .collect()
}

fn decide_one(
    order: &NewOrder,
    state: &mut BatchState,
    status: OrderStatus,
    final_at: Option<DateTime<Utc>>,
) -> Result<Decision, Unexpected> {
    let now = state.now;
    let Some(player) = state.players.get(&order.player).copied() else {
        return Ok(Decision::UnknownPlayer);
    };
    if let Some(retry_after_ms) = player
        .locked_until
        .and_then(|until| retry_after_ms(until, now))
    {
        return Ok(Decision::Locked { retry_after_ms });
    }
    let price = player.price;
    let limit_met = match (order.side, order.limit) {
        (_, None) => true,
        (Side::Buy, Some(limit)) => price <= limit,
        (Side::Sell, Some(limit)) => price >= limit,
    };
    if !limit_met {
        return Ok(Decision::Reject(Rejection::PriceMoved));
    }
    let user = state
        .users
        .get_mut(&order.user)
        .ok_or_else(|| Unexpected::msg(format!("user {} has no account", order.user)))?;
    let holding = state
        .holdings
        .entry((order.user, order.player))
        .or_default();
    let quantity = order.quantity.get();
    let provisional = status == OrderStatus::Provisional;

    let (total, basis) = match (order.side, price.times(order.quantity)) {
        // Nobody has more than i64::MAX cents.
        (Side::Buy, None) => return Ok(Decision::Reject(Rejection::InsufficientFunds)),
        (Side::Sell, None) => return Err(Unexpected::msg("sale proceeds overflow i64")),
        (Side::Buy, Some(total)) => {
            let spendable = user.cash.get() - user.held.get() - user.provisional_proceeds.get();
            if spendable < total.get() {
                return Ok(Decision::Reject(Rejection::InsufficientFunds));
            }
            user.cash = Cents::new(user.cash.get() - total.get());
            holding.quantity = holding
                .quantity
                .checked_add(quantity)
                .ok_or_else(|| Unexpected::msg("holding overflows i64"))?;
            holding.cost = holding
                .cost
                .checked_add(total.get())
                .ok_or_else(|| Unexpected::msg("cost basis overflows i64"))?;
            if provisional {
                holding.provisional_quantity += quantity;
                holding.provisional_cost += total.get();
                holding.first_final = holding.first_final.min(final_at).or(final_at);
            }
            (total, total)
        }
        (Side::Sell, Some(total)) => {
            if holding.quantity < quantity {
                return Ok(Decision::Reject(Rejection::InsufficientHoldings));
            }
            let sellable = holding.quantity - holding.provisional_quantity;
            if sellable < quantity {
                return Ok(Decision::Provisional {
                    retry_after_ms: holding
                        .first_final
                        .and_then(|at| retry_after_ms(at, now))
                        .unwrap_or(1),
                });
            }
            let basis = removed_basis(holding.cost - holding.provisional_cost, sellable, quantity);
            holding.quantity -= quantity;
            holding.cost -= basis.get();
            user.cash = user
                .cash
                .checked_add(total)
                .ok_or_else(|| Unexpected::msg("cash overflows i64"))?;
            if provisional {
                user.provisional_proceeds =
                    Cents::new(user.provisional_proceeds.get() + total.get());
            }
            (total, basis)
        }
    };
    user.revision += 1;
    Ok(Decision::Fill(PlannedFill {
        price,
        total,
        basis,
        epoch: player.epoch,
        status,
        final_at,
        balance: user.cash,
        held: user.held,
        revision: user.revision,
        holding: (holding.quantity, holding.cost),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Quantity;
    use crate::idempotency::IdempotencyKey;
    use std::time::Duration;

    const ANN: UserId = UserId(1);
    const BOB: UserId = UserId(2);
    const STRIKER: PlayerId = PlayerId(7);

    fn order(user: UserId, side: Side, quantity: i64, limit: Option<i64>) -> NewOrder {
        NewOrder {
            user,
            player: STRIKER,
            side,
            quantity: Quantity::new(quantity).expect("positive"),
            limit: limit.map(Cents::new),
            key: IdempotencyKey::parse("k-1").expect("key"),
            fingerprint: String::new(),
        }
    }

    fn state(cash: i64, held_shares: i64) -> BatchState {
        let now = DateTime::from_timestamp(1_800_000_000, 0).expect("time");
        let user = UserState {
            cash: Cents::new(cash),
            held: Cents::ZERO,
            provisional_proceeds: Cents::ZERO,
            revision: 10,
        };
        BatchState {
            now,
            players: HashMap::from([(
                STRIKER,
                PlayerState {
                    epoch: 3,
                    locked_until: None,
                    price: Cents::new(500),
                },
            )]),
            users: HashMap::from([(ANN, user), (BOB, user)]),
            holdings: HashMap::from([(
                (ANN, STRIKER),
                HoldingState {
                    quantity: held_shares,
                    cost: held_shares * 400,
                    ..HoldingState::default()
                },
            )]),
        }
    }

    fn decisions(orders: &[NewOrder], state: &mut BatchState, fairness: Fairness) -> Vec<Decision> {
        let orders: Vec<&NewOrder> = orders.iter().collect();
        decide(&orders, state, &fairness).expect("decided")
    }

    fn filled(decision: &Decision) -> &PlannedFill {
        match decision {
            Decision::Fill(fill) => fill,
            other => panic!("expected a fill, got {other:?}"),
        }
    }

    #[test]
    fn the_second_buy_spending_the_same_cash_is_refused() {
        let mut state = state(1_000, 0);
        let orders = [
            order(ANN, Side::Buy, 2, None),
            order(ANN, Side::Buy, 1, None),
        ];
        let got = decisions(&orders, &mut state, Fairness::LOCK);
        let first = filled(&got[0]);
        assert_eq!(
            (first.total, first.balance, first.revision),
            (Cents::new(1_000), Cents::ZERO, 11)
        );
        assert_eq!(got[1], Decision::Reject(Rejection::InsufficientFunds));
        assert_eq!(state.users[&ANN].cash, Cents::ZERO);
        assert_eq!(state.users[&ANN].revision, 11);
    }

    #[test]
    fn a_sell_after_a_buy_in_one_batch_sells_what_the_buy_bought() {
        let mut state = state(1_000, 0);
        let orders = [
            order(ANN, Side::Buy, 2, None),
            order(ANN, Side::Sell, 2, None),
        ];
        let got = decisions(&orders, &mut state, Fairness::LOCK);
        assert_eq!(filled(&got[0]).holding, (2, 1_000));
        let sell = filled(&got[1]);
        assert_eq!(
            (sell.basis, sell.balance, sell.holding),
            (Cents::new(1_000), Cents::new(1_000), (0, 0))
        );
        assert_eq!(sell.revision, 12);
    }

    #[test]
    fn a_sell_before_the_buy_has_nothing_to_sell() {
        let mut state = state(1_000, 0);
        let orders = [
            order(ANN, Side::Sell, 1, None),
            order(ANN, Side::Buy, 1, None),
        ];
        let got = decisions(&orders, &mut state, Fairness::LOCK);
        assert_eq!(got[0], Decision::Reject(Rejection::InsufficientHoldings));
        assert_eq!(filled(&got[1]).holding, (1, 500));
    }

    #[test]
    fn a_sale_removes_average_cost_and_credits_the_proceeds() {
        let mut state = state(0, 3);
        let got = decisions(
            &[order(ANN, Side::Sell, 1, Some(500))],
            &mut state,
            Fairness::LOCK,
        );
        let sell = filled(&got[0]);
        assert_eq!(
            (sell.total, sell.basis, sell.balance),
            (Cents::new(500), Cents::new(400), Cents::new(500))
        );
        assert_eq!(sell.holding, (2, 800));
        assert_eq!(sell.epoch, 3);
    }

    #[test]
    fn limits_and_locks_refuse_before_money_moves() {
        let mut state = state(10_000, 0);
        let got = decisions(
            &[order(ANN, Side::Buy, 1, Some(499))],
            &mut state,
            Fairness::LOCK,
        );
        assert_eq!(got[0], Decision::Reject(Rejection::PriceMoved));
        let now = state.now;
        if let Some(player) = state.players.get_mut(&STRIKER) {
            player.locked_until = Some(now + TimeDelta::milliseconds(1_500));
        }
        let got = decisions(
            &[order(BOB, Side::Buy, 1, None)],
            &mut state,
            Fairness::LOCK,
        );
        assert_eq!(
            got[0],
            Decision::Locked {
                retry_after_ms: 1_500
            }
        );
        assert_eq!(state.users[&ANN].cash, Cents::new(10_000));
        assert_eq!(state.users[&BOB].revision, 10);
        let mut unknown = order(ANN, Side::Buy, 1, None);
        unknown.player = PlayerId(99);
        assert_eq!(
            decisions(&[unknown], &mut state, Fairness::LOCK)[0],
            Decision::UnknownPlayer
        );
    }

    #[test]
    fn under_void_window_bought_shares_and_sale_proceeds_wait_for_finality() {
        let void = Fairness {
            policy: FairnessPolicy::VoidWindow,
            delay: Duration::ZERO,
            void_window: Duration::from_secs(30),
        };
        let mut state = state(1_500, 2);
        let orders = [
            order(ANN, Side::Buy, 1, None),
            order(ANN, Side::Sell, 3, None),
            order(ANN, Side::Sell, 2, None),
            order(ANN, Side::Buy, 3, None),
        ];
        let got = decisions(&orders, &mut state, void);
        let buy = filled(&got[0]);
        assert_eq!(buy.status, OrderStatus::Provisional);
        assert_eq!(buy.final_at, Some(state.now + TimeDelta::seconds(30)));
        assert_eq!(
            got[1],
            Decision::Provisional {
                retry_after_ms: 30_000
            }
        );
        // The two final shares sell, at their own cost (400 each).
        let sell = filled(&got[2]);
        assert_eq!(
            (sell.basis, sell.balance),
            (Cents::new(800), Cents::new(2_000))
        );
        // 1,000 of the 2,000 is provisional proceeds: 3 shares at 500 no longer fit.
        assert_eq!(got[3], Decision::Reject(Rejection::InsufficientFunds));
        assert_eq!(state.users[&ANN].provisional_proceeds, Cents::new(1_000));
    }

    #[test]
    fn a_buy_too_large_for_i64_is_refused_as_unaffordable() {
        let mut state = state(1_000, 0);
        if let Some(player) = state.players.get_mut(&STRIKER) {
            player.price = Cents::new(i64::MAX / 2);
        }
        let got = decisions(
            &[order(ANN, Side::Buy, 3, None)],
            &mut state,
            Fairness::LOCK,
        );
        assert_eq!(got[0], Decision::Reject(Rejection::InsufficientFunds));
    }
}
