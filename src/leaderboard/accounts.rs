//! The replica's in-memory copy of every account (cash, held cash,
//! holdings), and valuing them at a table of live prices.
//!
//! Each account carries the `revision` Postgres gave it; a state replaces
//! the copy only when it is newer, so states heard out of order (from
//! several replicas, or a reload racing a fill) never move an account
//! backwards. A full reload from Postgres also replaces an equal revision:
//! the copy at that revision may have been assembled while a message was
//! lost, the reload is the truth. An order sends only the holding it changed
//! and the cash ([`HoldingChange`]): that applies only on top of the
//! revision just before it; heard after a gap (a message lost, or overtaken
//! by a later one from another replica), the account is marked stale and
//! reloaded from Postgres.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};

use crate::ledger::{AccountState, AccountUpdate, HoldingChange};

/// A hasher for maps keyed by ids the server assigns (user ids): one
/// multiplication instead of SipHash, which is there to resist keys chosen
/// by an attacker — these are not. Valuing 100,000 accounts does several
/// lookups each, so this matters.
#[derive(Default, Clone, Copy)]
pub struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = (self.0 ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn write_i64(&mut self, id: i64) {
        // Fibonacci hashing: a bijection, so distinct ids never collide.
        self.0 = (id as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// A map keyed by server-assigned ids.
pub type IdMap<V> = HashMap<i64, V, std::hash::BuildHasherDefault<IdHasher>>;

/// A player's live price by player id, copied once per revaluation.
#[derive(Debug, Default, Clone)]
pub struct PriceTable {
    /// Indexed by player id; 0 means no price is known.
    dense: Vec<i64>,
}

/// Player ids above this are not priced (ids are a sequence from 1; this
/// bounds the table's memory at 8 MB whatever a corrupt id says).
const MAX_PLAYER_ID: i64 = 1 << 20;

impl PriceTable {
    /// A table of `(player id, price in cents)`.
    pub fn new(prices: impl IntoIterator<Item = (i64, i64)>) -> PriceTable {
        let mut dense = Vec::new();
        for (player, price) in prices {
            let Ok(index) = usize::try_from(player) else {
                continue;
            };
            if player > MAX_PLAYER_ID {
                continue;
            }
            if dense.len() <= index {
                dense.resize(index + 1, 0);
            }
            dense[index] = price;
        }
        PriceTable { dense }
    }

    /// The price of `player`, if known.
    pub fn get(&self, player: i64) -> Option<i64> {
        usize::try_from(player)
            .ok()
            .and_then(|index| self.dense.get(index).copied())
            .filter(|price| *price > 0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Holding {
    player: i64,
    quantity: i64,
    cost: i64,
}

#[derive(Debug, Clone)]
struct Account {
    username: Arc<str>,
    revision: i64,
    cash: i64,
    held: i64,
    holdings: Box<[Holding]>,
}

impl Account {
    fn from_state(state: AccountState) -> Account {
        Account {
            username: Arc::from(state.username),
            revision: state.revision,
            cash: state.cash_cents,
            held: state.held_cents,
            holdings: state
                .holdings
                .into_iter()
                .filter(|p| p.quantity > 0)
                .map(|p| Holding {
                    player: p.player_id,
                    quantity: p.quantity,
                    cost: p.cost_cents,
                })
                .collect(),
        }
    }

    /// Cash plus every holding at `prices`, or `None` when a held player has
    /// no price. Saturates rather than wrapping (no account comes near).
    fn net_worth(&self, prices: &PriceTable) -> Option<i64> {
        let mut worth = self.cash;
        for holding in self.holdings.iter() {
            let price = prices.get(holding.player)?;
            worth = worth.saturating_add(price.saturating_mul(holding.quantity));
        }
        Some(worth)
    }

    /// `change` on top of this account, which is at the revision before it.
    fn apply_change(&mut self, change: &HoldingChange) {
        self.revision = change.revision;
        self.cash = change.cash_cents;
        self.held = change.held_cents;
        let player = change.position.player_id;
        let mut holdings: Vec<Holding> = self
            .holdings
            .iter()
            .filter(|h| h.player != player)
            .copied()
            .collect();
        if change.position.quantity > 0 {
            holdings.push(Holding {
                player,
                quantity: change.position.quantity,
                cost: change.position.cost_cents,
            });
            holdings.sort_unstable_by_key(|h| h.player);
        }
        self.holdings = holdings.into_boxed_slice();
    }

    fn state(&self, user_id: i64) -> AccountState {
        AccountState {
            user_id,
            username: self.username.to_string(),
            revision: self.revision,
            cash_cents: self.cash,
            held_cents: self.held,
            holdings: self
                .holdings
                .iter()
                .map(|h| crate::ledger::Position {
                    player_id: h.player,
                    quantity: h.quantity,
                    cost_cents: h.cost,
                })
                .collect(),
        }
    }
}

/// Shards of [`Accounts`]: a valuation holds one shard's lock at a time,
/// so a fill waits for at most one shard's worth of valuing.
const SHARDS: usize = 64;

/// Every account this replica knows of.
pub struct Accounts {
    shards: Vec<RwLock<IdMap<Account>>>,
    /// Users whose copy missed an update, to reload from Postgres.
    stale: Mutex<HashSet<i64>>,
}

impl Default for Accounts {
    fn default() -> Self {
        Accounts {
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
            stale: Mutex::default(),
        }
    }
}

/// What one valuation found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Valuation {
    pub valued: usize,
    /// Accounts left out because a player they hold has no price yet.
    pub unpriced: usize,
}

impl Accounts {
    /// Takes each update that is newer than the copy: a whole account, or a
    /// holding change on top of the revision just before it (after a gap
    /// the account is marked stale instead, see [`Accounts::take_stale`]).
    /// Returns how many changed.
    pub fn apply(&self, updates: impl IntoIterator<Item = AccountUpdate>) -> usize {
        let mut changed = 0;
        for update in updates {
            match update {
                AccountUpdate::Full(state) => changed += self.merge([state], false),
                AccountUpdate::Holding(change) => {
                    let mut by_user = self
                        .shard(change.user_id)
                        .write()
                        .unwrap_or_else(|p| p.into_inner());
                    match by_user.get_mut(&change.user_id) {
                        Some(account) if change.revision <= account.revision => {}
                        Some(account) if change.revision == account.revision + 1 => {
                            account.apply_change(&change);
                            changed += 1;
                        }
                        _ => {
                            drop(by_user);
                            self.stale
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .insert(change.user_id);
                        }
                    }
                }
            }
        }
        changed
    }

    /// Marks `users` stale again (their reload failed).
    pub fn mark_stale(&self, users: impl IntoIterator<Item = i64>) {
        let mut stale = self.stale.lock().unwrap_or_else(|p| p.into_inner());
        stale.extend(users);
    }

    /// The users marked stale since the last call.
    pub fn take_stale(&self) -> Vec<i64> {
        let mut stale = self.stale.lock().unwrap_or_else(|p| p.into_inner());
        stale.drain().collect()
    }

    /// Takes a full read from Postgres: each state at least as new as the
    /// copy replaces it. Returns how many changed.
    pub fn reload(&self, states: impl IntoIterator<Item = AccountState>) -> usize {
        self.merge(states, true)
    }

    fn shard(&self, user: i64) -> &RwLock<IdMap<Account>> {
        &self.shards[user.rem_euclid(SHARDS as i64) as usize]
    }

    fn merge(&self, states: impl IntoIterator<Item = AccountState>, replace_equal: bool) -> usize {
        let mut changed = 0;
        for state in states {
            let mut by_user = self
                .shard(state.user_id)
                .write()
                .unwrap_or_else(|p| p.into_inner());
            let take = match by_user.get(&state.user_id) {
                None => true,
                Some(known) if replace_equal => state.revision >= known.revision,
                Some(known) => state.revision > known.revision,
            };
            if take {
                by_user.insert(state.user_id, Account::from_state(state));
                changed += 1;
            }
        }
        changed
    }

    /// Accounts known.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| shard.read().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }

    /// True when no account is known.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The username of `user`, if known.
    pub fn username(&self, user: i64) -> Option<Arc<str>> {
        let by_user = self.shard(user).read().unwrap_or_else(|p| p.into_inner());
        by_user.get(&user).map(|a| a.username.clone())
    }

    /// The account of `user` as last heard.
    pub fn state(&self, user: i64) -> Option<AccountState> {
        let by_user = self.shard(user).read().unwrap_or_else(|p| p.into_inner());
        by_user.get(&user).map(|account| account.state(user))
    }

    /// Appends `(user id, net worth)` for every account whose players all
    /// have a price, in no particular order.
    pub fn net_worths(&self, prices: &PriceTable, out: &mut Vec<(i64, i64)>) -> Valuation {
        let mut valuation = Valuation::default();
        for shard in &self.shards {
            let by_user = shard.read().unwrap_or_else(|p| p.into_inner());
            out.reserve(by_user.len());
            for (user, account) in by_user.iter() {
                match account.net_worth(prices) {
                    Some(worth) => {
                        out.push((*user, worth));
                        valuation.valued += 1;
                    }
                    None => valuation.unpriced += 1,
                }
            }
        }
        valuation
    }
}

/// Leaderboard order: higher net worth first, then the lower user id.
pub fn ranking_order(a: &(i64, i64), b: &(i64, i64)) -> std::cmp::Ordering {
    b.1.cmp(&a.1).then(a.0.cmp(&b.0))
}

/// The first `n` of `values` in leaderboard order; reorders `values`.
pub fn top(values: &mut [(i64, i64)], n: usize) -> Vec<(i64, i64)> {
    if n == 0 || values.is_empty() {
        return Vec::new();
    }
    if values.len() > n {
        values.select_nth_unstable_by(n - 1, ranking_order);
    }
    let mut best = values[..n.min(values.len())].to_vec();
    best.sort_unstable_by(ranking_order);
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::{HoldingChange, Position};

    fn state(user: i64, revision: i64, cash: i64, holdings: &[(i64, i64)]) -> AccountState {
        AccountState {
            user_id: user,
            username: format!("user{user}"),
            revision,
            cash_cents: cash,
            held_cents: 0,
            holdings: holdings
                .iter()
                .map(|&(player_id, quantity)| Position {
                    player_id,
                    quantity,
                    cost_cents: quantity * 100,
                })
                .collect(),
        }
    }

    fn full<const N: usize>(states: [AccountState; N]) -> Vec<AccountUpdate> {
        states.into_iter().map(AccountUpdate::Full).collect()
    }

    fn change(user: i64, revision: i64, cash: i64, player: i64, quantity: i64) -> AccountUpdate {
        AccountUpdate::Holding(HoldingChange {
            user_id: user,
            revision,
            cash_cents: cash,
            held_cents: 0,
            position: Position {
                player_id: player,
                quantity,
                cost_cents: quantity * 100,
            },
        })
    }

    #[test]
    fn a_holding_change_applies_on_the_revision_before_it_and_a_gap_marks_the_account_stale() {
        let accounts = Accounts::default();
        let prices = PriceTable::new([(3, 10), (4, 1_000)]);
        accounts.apply(full([state(1, 5, 100, &[(3, 1)])]));
        // Revision 6 on 5: a new holding.
        assert_eq!(accounts.apply([change(1, 6, 50, 4, 2)]), 1);
        assert_eq!(worths(&accounts, &prices), [(1, 50 + 10 + 2_000)]);
        // Heard twice, or late: nothing.
        assert_eq!(accounts.apply([change(1, 6, 0, 4, 9)]), 0);
        // Sold out of player 3: the holding goes.
        assert_eq!(accounts.apply([change(1, 7, 60, 3, 0)]), 1);
        assert_eq!(worths(&accounts, &prices), [(1, 60 + 2_000)]);
        assert!(accounts.take_stale().is_empty());
        // Revision 9 on 7 (8 was never heard) and an unknown user: stale,
        // and nothing applied.
        assert_eq!(
            accounts.apply([change(1, 9, 1, 4, 1), change(2, 1, 1, 4, 1)]),
            0
        );
        assert_eq!(worths(&accounts, &prices), [(1, 60 + 2_000)]);
        let mut stale = accounts.take_stale();
        stale.sort_unstable();
        assert_eq!(stale, [1, 2]);
        assert!(accounts.take_stale().is_empty());
    }

    fn worths(accounts: &Accounts, prices: &PriceTable) -> Vec<(i64, i64)> {
        let mut out = Vec::new();
        accounts.net_worths(prices, &mut out);
        out.sort_unstable();
        out
    }

    #[test]
    fn net_worth_is_cash_plus_holdings_at_the_table_s_prices() {
        let accounts = Accounts::default();
        accounts.apply(full([
            state(1, 1, 1_000, &[(3, 2), (7, 5)]),
            state(2, 0, 50, &[]),
        ]));
        let prices = PriceTable::new([(3, 110), (7, 9)]);
        assert_eq!(worths(&accounts, &prices), [(1, 1_000 + 220 + 45), (2, 50)]);
    }

    #[test]
    fn an_older_state_never_replaces_a_newer_one_whatever_the_order() {
        let accounts = Accounts::default();
        let prices = PriceTable::new([(3, 10)]);
        assert_eq!(accounts.apply(full([state(1, 5, 100, &[(3, 1)])])), 1);
        assert_eq!(accounts.apply(full([state(1, 4, 999, &[])])), 0);
        assert_eq!(
            accounts.apply(full([state(1, 5, 999, &[])])),
            0,
            "equal is not newer"
        );
        assert_eq!(worths(&accounts, &prices), [(1, 110)]);
        assert_eq!(accounts.apply(full([state(1, 6, 90, &[(3, 2)])])), 1);
        assert_eq!(worths(&accounts, &prices), [(1, 110)]);
    }

    #[test]
    fn a_reload_repairs_a_copy_at_the_same_revision_but_not_a_newer_one() {
        let accounts = Accounts::default();
        let prices = PriceTable::new([(3, 10)]);
        accounts.apply(full([state(1, 5, 100, &[]), state(2, 9, 100, &[])]));
        // User 1's copy at revision 5 is wrong (a lost message); user 2 has
        // heard of a fill newer than the reload's snapshot.
        let changed = accounts.reload([
            state(1, 5, 100, &[(3, 4)]),
            state(2, 8, 1, &[]),
            state(3, 0, 7, &[]),
        ]);
        assert_eq!(changed, 2);
        assert_eq!(worths(&accounts, &prices), [(1, 140), (2, 100), (3, 7)]);
    }

    #[test]
    fn an_account_holding_an_unpriced_player_is_left_out_not_valued_at_zero() {
        let accounts = Accounts::default();
        accounts.apply(full([state(1, 1, 10, &[(99, 1)]), state(2, 1, 10, &[])]));
        let mut out = Vec::new();
        let valuation = accounts.net_worths(&PriceTable::new([(1, 5)]), &mut out);
        assert_eq!(
            valuation,
            Valuation {
                valued: 1,
                unpriced: 1
            }
        );
        assert_eq!(out, [(2, 10)]);
    }

    #[test]
    fn ties_rank_the_lower_user_id_first() {
        let mut values = vec![(5, 100), (2, 300), (9, 300), (1, 50), (3, 100), (4, 300)];
        assert_eq!(
            top(&mut values, 4),
            [(2, 300), (4, 300), (9, 300), (3, 100)]
        );
        assert_eq!(top(&mut values, 100).len(), 6);
        assert!(top(&mut values, 0).is_empty());
    }

    #[test]
    fn the_id_hasher_gives_distinct_ids_distinct_hashes() {
        use std::hash::{BuildHasher, BuildHasherDefault};
        let build = BuildHasherDefault::<IdHasher>::default();
        let hashes: HashSet<u64> = (-500..100_000i64).map(|id| build.hash_one(id)).collect();
        assert_eq!(hashes.len(), 100_500);
        let mut map: IdMap<i64> = IdMap::default();
        map.extend((1..=1_000).map(|id| (id, id * 2)));
        assert_eq!(map.get(&777), Some(&1_554));
    }

    #[test]
    fn the_price_table_ignores_absurd_ids_and_knows_no_price_as_none() {
        let table = PriceTable::new([(2, 10), (-1, 5), (MAX_PLAYER_ID + 1, 5)]);
        assert_eq!(table.get(2), Some(10));
        assert_eq!(table.get(1), None);
        assert_eq!(table.get(-1), None);
        assert_eq!(table.get(MAX_PLAYER_ID + 1), None);
    }
}
