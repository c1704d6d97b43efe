//! A replica's live view of every sale: what never changes about it, the
//! remaining units as of the newest inventory version heard, and who has
//! bought in it. Fed by the reservation scripts' replies and by every
//! replica's updates on the bus, so the local sold-out answer needs no
//! round trip; pushed to the WebSocket side through [`SaleStateSink`].

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};

use chrono::{DateTime, Utc};
use serde::Deserialize;

use super::{InventoryState, Sale, SaleInfo, SaleStateSink, SaleStatus};
use crate::domain::UserId;

/// An inventory update as the scripts publish it (or a new sale's
/// announcement, with only `created`).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Update {
    #[serde(default)]
    pub created: Option<i64>,
    #[serde(default)]
    pub sale_id: i64,
    #[serde(default)]
    pub gen: i64,
    #[serde(default)]
    pub seq: i64,
    #[serde(default)]
    pub remaining: i64,
    /// Users who gained units (they bought, or the waitlist gave them one).
    #[serde(default)]
    pub buyers: Vec<i64>,
    /// A rebuilt inventory: who bought is reloaded from Postgres.
    #[serde(default)]
    pub reset: bool,
}

#[derive(Debug)]
struct Live {
    /// `(generation, seq)` of the inventory state `remaining` comes from;
    /// `(0, 0)` when it comes from Postgres.
    version: (i64, i64),
    remaining: i64,
    buyers: HashSet<i64>,
}

/// One sale in the book.
#[derive(Debug)]
pub struct Entry {
    pub info: SaleInfo,
    live: Mutex<Live>,
}

impl Entry {
    fn live(&self) -> std::sync::MutexGuard<'_, Live> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// True when nothing remains and `user` never bought here: the answer
    /// is `sold_out` without asking Redis. A buyer is always sent on, since
    /// their request may be a retry whose 202 must be replayed, or over
    /// their limit (which the API answers before sold out).
    pub fn sold_out_for(&self, user: UserId) -> bool {
        let live = self.live();
        live.remaining <= 0 && !live.buyers.contains(&user.0)
    }

    /// Remaining units as this replica knows them.
    pub fn remaining(&self) -> i64 {
        self.live().remaining
    }
}

/// Every sale this replica knows.
pub struct Book {
    sales: RwLock<HashMap<i64, Arc<Entry>>>,
    sink: Arc<dyn SaleStateSink>,
}

impl Book {
    /// An empty book pushing states to `sink`.
    pub fn new(sink: Arc<dyn SaleStateSink>) -> Book {
        Book {
            sales: RwLock::new(HashMap::new()),
            sink,
        }
    }

    /// The entry of one sale.
    pub fn entry(&self, sale_id: i64) -> Option<Arc<Entry>> {
        let sales = self.sales.read().unwrap_or_else(|p| p.into_inner());
        sales.get(&sale_id).cloned()
    }

    /// Every entry.
    pub fn entries(&self) -> Vec<Arc<Entry>> {
        let sales = self.sales.read().unwrap_or_else(|p| p.into_inner());
        sales.values().cloned().collect()
    }

    /// One sale with its live state.
    pub fn sale(&self, sale_id: i64, now: DateTime<Utc>) -> Option<Sale> {
        let entry = self.entry(sale_id)?;
        let remaining = entry.remaining().max(0);
        Some(Sale {
            status: SaleStatus::at(entry.info.starts_at, remaining, now),
            remaining_units: remaining,
            info: entry.info.clone(),
        })
    }

    /// (Re)loads a sale: its buyers from Postgres, its remaining units from
    /// the Redis inventory when there is one, else `fallback` (Postgres).
    pub fn load(
        &self,
        info: SaleInfo,
        buyers: Vec<i64>,
        inventory: Option<InventoryState>,
        fallback: i64,
    ) {
        let (version, remaining) = match inventory {
            Some(state) => ((state.generation, state.seq), state.remaining),
            None => ((0, 0), fallback),
        };
        let id = info.id;
        {
            let mut sales = self.sales.write().unwrap_or_else(|p| p.into_inner());
            let entry = sales.entry(id).or_insert_with(|| {
                Arc::new(Entry {
                    info,
                    live: Mutex::new(Live {
                        version: (-1, -1),
                        remaining,
                        buyers: HashSet::new(),
                    }),
                })
            });
            let mut live = entry.live();
            live.buyers.extend(buyers);
            if version >= live.version {
                live.version = version;
                live.remaining = remaining;
            }
        }
        self.push(id);
    }

    /// Takes in what a script said about a sale: remaining units as of
    /// `version` (ignored if older than what is known) and new buyers.
    pub fn observe(&self, sale_id: i64, version: (i64, i64), remaining: i64, buyers: &[i64]) {
        let Some(entry) = self.entry(sale_id) else {
            return;
        };
        {
            let mut live = entry.live();
            live.buyers.extend(buyers.iter().copied());
            if version < live.version {
                return;
            }
            live.version = version;
            live.remaining = remaining;
        }
        self.push(sale_id);
    }

    /// Applies a bus update; returns true when it announces a rebuilt
    /// inventory (so the caller reloads the sale's buyers).
    pub fn apply(&self, update: &Update) -> bool {
        self.observe(
            update.sale_id,
            (update.gen, update.seq),
            update.remaining,
            &update.buyers,
        );
        update.reset
    }

    /// Tells the sink every sale's state again (a scheduled sale opening is
    /// a change no update announces).
    pub fn refresh(&self) {
        let ids: Vec<i64> = {
            let sales = self.sales.read().unwrap_or_else(|p| p.into_inner());
            sales.keys().copied().collect()
        };
        for id in ids {
            self.push(id);
        }
    }

    fn push(&self, sale_id: i64) {
        let Some(entry) = self.entry(sale_id) else {
            return;
        };
        let (version, remaining) = {
            let live = entry.live();
            (live.version, live.remaining.max(0))
        };
        let status = SaleStatus::at(entry.info.starts_at, remaining, Utc::now());
        self.sink.sale_state(sale_id, version, remaining, status);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Cents, PlayerId};

    #[derive(Default)]
    struct Recorder(Mutex<Vec<(i64, i64, &'static str)>>);

    impl SaleStateSink for Recorder {
        fn sale_state(&self, sale_id: i64, _: (i64, i64), remaining: i64, status: SaleStatus) {
            self.0
                .lock()
                .unwrap()
                .push((sale_id, remaining, status.as_str()));
        }
    }

    fn info(id: i64) -> SaleInfo {
        SaleInfo {
            id,
            player: PlayerId(1),
            name: "drop".into(),
            total_units: 3,
            unit_price: Cents::new(100),
            max_per_user: None,
            starts_at: Utc::now() - chrono::Duration::seconds(1),
        }
    }

    #[test]
    fn older_versions_never_overwrite_newer_remaining_counts() {
        let recorder = Arc::new(Recorder::default());
        let book = Book::new(recorder.clone());
        book.load(info(1), vec![], None, 3);
        book.observe(1, (1, 5), 1, &[7]);
        book.observe(1, (1, 4), 2, &[8]);
        assert_eq!(book.entry(1).unwrap().remaining(), 1);
        book.observe(1, (2, 1), 3, &[]);
        assert_eq!(
            book.entry(1).unwrap().remaining(),
            3,
            "a new generation wins"
        );
    }

    #[test]
    fn only_people_who_never_bought_are_told_sold_out_locally() {
        let book = Book::new(Arc::new(Recorder::default()));
        book.load(info(1), vec![5], None, 3);
        book.observe(1, (1, 2), 0, &[6]);
        let entry = book.entry(1).unwrap();
        assert!(entry.sold_out_for(UserId(9)));
        assert!(!entry.sold_out_for(UserId(5)), "buyer loaded from Postgres");
        assert!(!entry.sold_out_for(UserId(6)), "buyer heard from a script");
        book.observe(1, (1, 3), 1, &[]);
        assert!(!entry.sold_out_for(UserId(9)), "units came back");
    }

    #[test]
    fn every_change_reaches_the_sink_with_its_status() {
        let recorder = Arc::new(Recorder::default());
        let book = Book::new(recorder.clone());
        book.load(info(1), vec![], None, 3);
        book.observe(1, (1, 1), 0, &[]);
        let seen = recorder.0.lock().unwrap().clone();
        assert_eq!(seen, vec![(1, 3, "open"), (1, 0, "sold_out")]);
    }

    #[test]
    fn updates_parse_from_the_scripts_format() {
        let update: Update =
            serde_json::from_str(r#"{"sale_id":3,"gen":2,"seq":9,"remaining":4,"buyers":[11,12]}"#)
                .unwrap();
        assert_eq!((update.sale_id, update.gen, update.seq), (3, 2, 9));
        assert_eq!(update.buyers, vec![11, 12]);
        assert!(!update.reset);
        let created: Update = serde_json::from_str(r#"{"created":5}"#).unwrap();
        assert_eq!(created.created, Some(5));
    }
}
