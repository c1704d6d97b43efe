//! Drops: flash sales of a fixed number of a player's shares at a fixed
//! price to a crowd that arrives in the same second (DESIGN §3).
//!
//! Owns sales, purchases, the units each purchase holds and the waitlist.
//! The path of a purchase:
//! 1. **Local checks** on the replica's [`book::Book`]: a sale not yet open,
//!    a quantity above the per-user limit, and — once the sale is sold out
//!    — anyone who never bought in it, are answered without leaving the
//!    process, so the crowd after the sell-out never reaches Redis.
//! 2. **Reservation** in Redis (`redis.rs`): one script checks the sale is
//!    open, the per-user limit and what remains, and takes unit numbers.
//! 3. **Durability**: the reservation becomes a `reserved` Postgres row,
//!    batched with others (`batcher.rs`), before the client hears 202.
//!    `UNIQUE (sale_id, share_number)` makes overselling impossible
//!    whatever Redis says; a reservation from an inventory generation that
//!    has since been rebuilt is refused and tried again.
//! 4. **Settlement** (`settlement.rs`) on every replica: HOLD the buyer's
//!    cash, then CAPTURE it through the ledger; insufficient funds fail the
//!    purchase and its units go to the waitlist, else back to the counter.
//!
//! Postgres is the truth. The Redis inventory is rebuilt from it when it
//! is missing, stale or leaking (`recovery.rs`). Never prices anything and
//! never touches trading's orders; completed units become ordinary holdings.

mod batcher;
pub mod book;
mod pg;
mod recovery;
mod redis;
mod settlement;
pub mod testing;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

pub use pg::PgSales;
pub use redis::RedisInventory;

use crate::config::SalesSettings;
use crate::domain::{Cents, PlayerId, Quantity, UserId};
use crate::error::Unexpected;
use crate::idempotency::IdempotencyKey;
use batcher::{Batcher, Durable, FailureKind};
use book::Book;

/// Endpoint name that scopes idempotency keys of purchases.
pub const PURCHASES_ENDPOINT: &str = "POST /api/v1/sales/{id}/purchases";
/// Most units one sale can have.
pub const MAX_TOTAL_UNITS: i64 = 1_000_000;
/// Longest sale name.
pub const MAX_NAME_CHARS: usize = 200;
/// Suggested wait after a purchase was shed or its inventory was rebuilding.
pub const OVERLOAD_RETRY_AFTER_MS: i64 = 500;
/// Times a purchase tries again when its inventory is being rebuilt.
const RESERVE_ATTEMPTS: usize = 3;

/// A sale as created; what never changes about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaleInfo {
    pub id: i64,
    pub player: PlayerId,
    pub name: String,
    pub total_units: i64,
    pub unit_price: Cents,
    pub max_per_user: Option<i64>,
    pub starts_at: DateTime<Utc>,
}

/// What the admin asks for.
#[derive(Debug, Clone)]
pub struct NewSale {
    pub player: PlayerId,
    pub name: String,
    pub total_units: i64,
    pub unit_price: Cents,
    pub max_per_user: Option<i64>,
    /// `None`: open at once.
    pub starts_at: Option<DateTime<Utc>>,
}

/// Where a sale stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaleStatus {
    Scheduled,
    Open,
    SoldOut,
}

impl SaleStatus {
    pub const ALL: [SaleStatus; 3] = [SaleStatus::Scheduled, SaleStatus::Open, SaleStatus::SoldOut];

    /// The API's name.
    pub fn as_str(self) -> &'static str {
        match self {
            SaleStatus::Scheduled => "scheduled",
            SaleStatus::Open => "open",
            SaleStatus::SoldOut => "sold_out",
        }
    }

    /// A sale's status at `now` with `remaining` units.
    pub fn at(starts_at: DateTime<Utc>, remaining: i64, now: DateTime<Utc>) -> SaleStatus {
        if now < starts_at {
            SaleStatus::Scheduled
        } else if remaining <= 0 {
            SaleStatus::SoldOut
        } else {
            SaleStatus::Open
        }
    }
}

/// A sale with its live inventory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sale {
    pub info: SaleInfo,
    pub remaining_units: i64,
    pub status: SaleStatus,
}

/// Where a purchase stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PurchaseStatus {
    Reserved,
    Held,
    Completed,
    Failed,
}

impl PurchaseStatus {
    pub const ALL: [PurchaseStatus; 4] = [
        PurchaseStatus::Reserved,
        PurchaseStatus::Held,
        PurchaseStatus::Completed,
        PurchaseStatus::Failed,
    ];

    /// The API's name (also the stored one).
    pub fn as_str(self) -> &'static str {
        match self {
            PurchaseStatus::Reserved => "reserved",
            PurchaseStatus::Held => "held",
            PurchaseStatus::Completed => "completed",
            PurchaseStatus::Failed => "failed",
        }
    }

    /// Parses a stored status.
    pub fn parse(value: &str) -> Option<PurchaseStatus> {
        PurchaseStatus::ALL
            .into_iter()
            .find(|s| s.as_str() == value)
    }
}

/// A purchase as its owner sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Purchase {
    pub id: i64,
    pub sale_id: i64,
    pub quantity: i64,
    pub status: PurchaseStatus,
    pub failure_reason: Option<String>,
    /// The units, once completed.
    pub share_numbers: Option<Vec<i64>>,
}

impl Purchase {
    /// A purchase just reserved.
    pub fn reserved(id: i64, sale_id: i64, quantity: i64) -> Purchase {
        Purchase {
            id,
            sale_id,
            quantity,
            status: PurchaseStatus::Reserved,
            failure_reason: None,
            share_numbers: None,
        }
    }
}

/// A validated purchase request.
#[derive(Debug, Clone)]
pub struct PurchaseRequest {
    pub user: UserId,
    pub sale_id: i64,
    pub quantity: Quantity,
    pub key: IdempotencyKey,
    /// See [`crate::idempotency::fingerprint`].
    pub fingerprint: String,
}

/// Business answers to a purchase (409s and the 404).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PurchaseRejection {
    UnknownSale,
    NotOpen,
    LimitExceeded,
    SoldOut,
}

/// The answer to a purchase request.
#[derive(Debug, Clone, PartialEq)]
pub enum Placed {
    /// Reserved now.
    Reserved(Purchase),
    /// The stored 202 body of an earlier request with this key.
    Replayed(serde_json::Value),
    Rejected(PurchaseRejection),
}

/// Failures of the sales API that are not business answers.
#[derive(Debug, thiserror::Error)]
pub enum SalesError {
    #[error("a request with this idempotency key is in progress")]
    InProgress,
    #[error("this idempotency key was used with another request")]
    KeyReused,
    #[error("too many purchases in flight; retry shortly")]
    Overloaded { retry_after_ms: i64 },
    /// Postgres could not be reached while recording the reservation (503).
    /// Its units went back to Redis; a retry with the same key finds out
    /// whether Postgres kept the purchase after all (a commit whose answer
    /// was lost) and replays it, or places it again.
    #[error("the database is unavailable")]
    Unavailable,
    #[error("no such sale")]
    UnknownSale,
    #[error("no such player")]
    UnknownPlayer,
    #[error("the sale is not sold out")]
    NotSoldOut,
    #[error(transparent)]
    Unexpected(#[from] Unexpected),
}

impl From<crate::bus::BusError> for SalesError {
    fn from(error: crate::bus::BusError) -> SalesError {
        SalesError::Unexpected(Unexpected::from_error(error))
    }
}

/// `GET /api/v1/admin/sales/{id}/audit`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaleAudit {
    pub total_units: i64,
    pub completed_units: i64,
    pub held_units: i64,
    pub reserved_units: i64,
    /// `total − completed − held − reserved`, from Postgres.
    pub remaining_units: i64,
    /// What the Redis counter says remains; `None` when Redis holds none.
    pub inventory_counter: Option<i64>,
    /// Unit rows that do not match their purchases' quantities, beyond
    /// `total_units`, or not held by a live purchase of the sale; and
    /// purchases charged other than exactly
    /// `quantity × unit_price` iff completed: all must be 0.
    pub unit_mismatches: i64,
    pub charge_mismatches: i64,
}

impl SaleAudit {
    /// Units add up, every charge matches, and the counter agrees.
    pub fn consistent(&self) -> bool {
        let live = self.completed_units + self.held_units + self.reserved_units;
        live <= self.total_units
            && self.remaining_units == self.total_units - live
            && self.unit_mismatches == 0
            && self.charge_mismatches == 0
            && self
                .inventory_counter
                .is_none_or(|counter| counter == self.remaining_units)
    }
}

/// The Redis inventory's view of one sale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InventoryState {
    pub generation: i64,
    pub remaining: i64,
    pub seq: i64,
}

/// What the reservation script answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reserve {
    /// Redis holds no inventory for the sale: rebuild it.
    Missing,
    /// This key already reserved with this body.
    Duplicate,
    /// This key already reserved with another body.
    KeyReused,
    NotOpen,
    LimitExceeded,
    /// `version` is the inventory's `(generation, seq)`.
    SoldOut {
        version: (i64, i64),
        remaining: i64,
    },
    Reserved {
        version: (i64, i64),
        remaining: i64,
        numbers: Vec<i64>,
    },
}

/// Told of purchases that changed, to put them on the owner's sockets.
#[async_trait]
pub trait PurchaseNotifier: Send + Sync {
    /// `purchase` of `user` was just created or changed.
    async fn purchase_changed(&self, user: UserId, purchase: &Purchase);
}

/// This replica's live view of sales, for WebSocket `sale:{id}` channels.
pub trait SaleStateSink: Send + Sync {
    /// The sale's state as of inventory version `(generation, seq)`.
    fn sale_state(&self, sale_id: i64, version: (i64, i64), remaining: i64, status: SaleStatus);
}

/// A bound on concurrent purchase requests; a permit is released on drop.
struct InFlight {
    current: AtomicUsize,
    max: usize,
}

struct Permit<'a>(&'a InFlight);

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        self.0.current.fetch_sub(1, Ordering::AcqRel);
    }
}

impl InFlight {
    fn try_acquire(&self) -> Option<Permit<'_>> {
        let before = self.current.fetch_add(1, Ordering::AcqRel);
        if before >= self.max {
            self.current.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Permit(self))
    }
}

/// Everything drops do, for the HTTP layer.
pub struct SalesService {
    store: Arc<PgSales>,
    inventory: RedisInventory,
    book: Arc<Book>,
    batcher: Batcher,
    recovery: Arc<recovery::Recovery>,
    in_flight: InFlight,
    bus: crate::bus::Bus,
}

fn overloaded_error() -> SalesError {
    SalesError::Overloaded {
        retry_after_ms: OVERLOAD_RETRY_AFTER_MS,
    }
}

impl SalesService {
    /// Builds the service and loads every sale into the replica's book.
    pub async fn start(
        store: Arc<PgSales>,
        bus: crate::bus::Bus,
        sink: Arc<dyn SaleStateSink>,
        settings: &SalesSettings,
    ) -> Result<Arc<SalesService>, Unexpected> {
        let inventory = RedisInventory::new(bus.clone());
        let book = Arc::new(Book::new(sink));
        let recovery = Arc::new(recovery::Recovery::new(
            store.clone(),
            inventory.clone(),
            book.clone(),
        ));
        let batcher = Batcher::start(
            store.clone(),
            bus.clone(),
            settings.reservation_batch_max.max(1),
            Duration::from_millis(settings.reservation_linger_ms),
            settings.max_in_flight.max(1),
        );
        let service = Arc::new(SalesService {
            store,
            inventory,
            book,
            batcher,
            recovery,
            in_flight: InFlight {
                current: AtomicUsize::new(0),
                max: settings.max_in_flight,
            },
            bus,
        });
        service.reload_all().await?;
        Ok(service)
    }

    /// Reloads every sale (and its buyers) into the book.
    async fn reload_all(&self) -> Result<(), Unexpected> {
        for info in self.store.sales().await? {
            self.load(info).await?;
        }
        Ok(())
    }

    /// Puts one sale in the book with its current inventory.
    async fn load(&self, info: SaleInfo) -> Result<(), Unexpected> {
        let buyers = self.store.buyers(info.id).await?;
        // Postgres' count only when Redis has none.
        let (inventory, fallback) = match self.inventory.state(info.id).await {
            Ok(Some(state)) => (Some(state), state.remaining),
            Ok(None) | Err(_) => (
                None,
                info.total_units - self.store.live_units(info.id).await?,
            ),
        };
        self.book.load(info, buyers, inventory, fallback);
        Ok(())
    }

    /// The book, for the bus listener and recovery tasks.
    pub fn book(&self) -> Arc<Book> {
        self.book.clone()
    }

    /// Creates a sale and its inventory; every replica hears of it.
    #[tracing::instrument(skip_all)]
    pub async fn create(&self, new: NewSale) -> Result<Sale, SalesError> {
        let info = self.store.create(&new).await?;
        if let Err(error) = self.inventory.install(&info, 1, 1, &[], &[]).await {
            // The sale exists; its inventory is built on first use.
            tracing::warn!(%error, sale_id = info.id, "installing a new sale's inventory failed");
        }
        self.book
            .load(info.clone(), Vec::new(), None, info.total_units);
        let announcement = format!("{{\"created\":{}}}", info.id);
        if let Err(error) = self.bus.publish(redis::UPDATES_CHANNEL, announcement).await {
            tracing::warn!(%error, "announcing a new sale failed; replicas load it on first use");
        }
        Ok(self.book.sale(info.id, Utc::now()).unwrap_or(Sale {
            remaining_units: info.total_units,
            status: SaleStatus::at(info.starts_at, info.total_units, Utc::now()),
            info,
        }))
    }

    /// Loads a sale this replica has not heard of yet.
    async fn known(&self, sale_id: i64) -> Result<Option<Arc<book::Entry>>, Unexpected> {
        if let Some(entry) = self.book.entry(sale_id) {
            return Ok(Some(entry));
        }
        let Some(info) = self.store.sale(sale_id).await? else {
            return Ok(None);
        };
        self.load(info).await?;
        Ok(self.book.entry(sale_id))
    }

    /// Handles a bus message about a sale created on another replica.
    pub async fn on_created(&self, sale_id: i64) {
        if let Err(error) = self.known(sale_id).await {
            tracing::warn!(%error, sale_id, "loading a new sale failed");
        }
    }

    /// Every sale, newest first.
    pub async fn list(&self) -> Result<Vec<Sale>, SalesError> {
        let now = Utc::now();
        let mut sales = Vec::new();
        for info in self.store.sales().await? {
            let id = info.id;
            if self.book.entry(id).is_none() {
                self.load(info).await?;
            }
            if let Some(sale) = self.book.sale(id, now) {
                sales.push(sale);
            }
        }
        Ok(sales)
    }

    /// One sale.
    pub async fn get(&self, sale_id: i64) -> Result<Sale, SalesError> {
        self.known(sale_id).await?;
        self.book
            .sale(sale_id, Utc::now())
            .ok_or(SalesError::UnknownSale)
    }

    /// Reserves units for a buyer (see the module docs for the path).
    #[tracing::instrument(skip_all, fields(sale_id = request.sale_id, user_id = %request.user))]
    pub async fn purchase(
        self: &Arc<Self>,
        request: &PurchaseRequest,
    ) -> Result<Placed, SalesError> {
        let Some(entry) = self.known(request.sale_id).await? else {
            return Ok(Placed::Rejected(PurchaseRejection::UnknownSale));
        };
        let quantity = request.quantity.get();
        let now = Utc::now();
        // Local answers, in the API's order: not open, over the limit, sold
        // out. A buyer of this sale always goes on to Redis, which knows
        // their count and their keys (a retry must replay its 202).
        if now < entry.info.starts_at {
            return Ok(Placed::Rejected(PurchaseRejection::NotOpen));
        }
        if entry.info.max_per_user.is_some_and(|max| quantity > max) {
            return self
                .rejected(request, PurchaseRejection::LimitExceeded)
                .await;
        }
        if entry.sold_out_for(request.user) {
            return Ok(Placed::Rejected(PurchaseRejection::SoldOut));
        }
        // From here on units may be taken in Redis: the rest runs as its own
        // task, so a client that disconnects (which drops this future)
        // cannot leave units taken but neither recorded nor given back.
        let service = self.clone();
        let request = request.clone();
        let task = async move { service.reserve(&entry, &request).await };
        match tokio::spawn(tracing::Instrument::in_current_span(task)).await {
            Ok(placed) => placed,
            Err(error) => Err(SalesError::Unexpected(Unexpected::msg(format!(
                "a purchase task failed: {error}"
            )))),
        }
    }

    /// Reserves in Redis and records in Postgres, retrying when the
    /// inventory is rebuilt underneath.
    async fn reserve(
        &self,
        entry: &book::Entry,
        request: &PurchaseRequest,
    ) -> Result<Placed, SalesError> {
        let quantity = request.quantity.get();
        let _permit = self.in_flight.try_acquire().ok_or_else(overloaded_error)?;

        for _ in 0..RESERVE_ATTEMPTS {
            let reserved = match self
                .inventory
                .reserve(
                    &entry.info,
                    request.user,
                    quantity,
                    request.key.as_str(),
                    &request.fingerprint,
                    Utc::now().timestamp_millis(),
                )
                .await
            {
                Ok(reserved) => reserved,
                // Without Redis nothing is reserved and nothing is charged:
                // the client is asked to come back, not shown a 500.
                Err(error) => {
                    tracing::warn!(%error, "reservation script failed; shedding the purchase");
                    return Err(overloaded_error());
                }
            };
            let (version, remaining, numbers) = match reserved {
                Reserve::Missing => {
                    if let Err(error) = self.recovery.ensure(&entry.info).await {
                        tracing::warn!(%error, "rebuilding a sale's inventory failed");
                        return Err(overloaded_error());
                    }
                    continue;
                }
                Reserve::Duplicate => return self.replay(request).await,
                Reserve::KeyReused => return Err(SalesError::KeyReused),
                Reserve::NotOpen => {
                    return self.rejected(request, PurchaseRejection::NotOpen).await
                }
                Reserve::LimitExceeded => {
                    return self
                        .rejected(request, PurchaseRejection::LimitExceeded)
                        .await
                }
                Reserve::SoldOut { version, remaining } => {
                    self.book.observe(entry.info.id, version, remaining, &[]);
                    return self.rejected(request, PurchaseRejection::SoldOut).await;
                }
                Reserve::Reserved {
                    version,
                    remaining,
                    numbers,
                } => {
                    self.book
                        .observe(entry.info.id, version, remaining, &[request.user.0]);
                    (version, remaining, numbers)
                }
            };
            match self
                .make_durable(&entry.info, request, version, remaining, numbers)
                .await?
            {
                Some(placed) => return Ok(placed),
                // The inventory was rebuilt under this reservation: its
                // units belong to a generation that no longer exists.
                None => continue,
            }
        }
        Err(overloaded_error())
    }

    /// Records a reservation in Postgres; on refusal, gives its units back.
    /// `None`: the reservation's generation is gone; try again.
    async fn make_durable(
        &self,
        info: &SaleInfo,
        request: &PurchaseRequest,
        version: (i64, i64),
        remaining: i64,
        numbers: Vec<i64>,
    ) -> Result<Option<Placed>, SalesError> {
        let generation = version.0;
        let quantity = request.quantity.get();
        let amount = info
            .unit_price
            .times(request.quantity)
            .ok_or_else(|| Unexpected::msg("purchase amount overflows i64"))?;
        let durable = self
            .batcher
            .submit(batcher::Reservation {
                sale_id: info.id,
                generation,
                user: request.user,
                quantity,
                amount,
                numbers: numbers.clone(),
                key: request.key.as_str().to_string(),
                fingerprint: request.fingerprint.clone(),
                version,
                remaining,
            })
            .await;
        let user = request.user;
        let key = request.key.as_str();
        let give_back = |numbers: Vec<i64>, forget: bool| async move {
            let forget = forget.then_some((user, key));
            let result = self
                .inventory
                .give_back(info.id, generation, &numbers, &[(user, -quantity)], forget)
                .await;
            if let Err(error) = result {
                // The units stay taken in Redis until reconciliation
                // notices the counter disagrees with Postgres.
                tracing::warn!(%error, sale_id = info.id, "giving units back failed");
            }
        };
        match durable {
            // The buyer hears of this reservation in its 202; the `user`
            // channel carries what happens to it next.
            Durable::Recorded(purchase_id) => Ok(Some(Placed::Reserved(Purchase::reserved(
                purchase_id,
                info.id,
                quantity,
            )))),
            Durable::StaleGeneration => {
                if let Err(error) = self.inventory.forget_key(user, key).await {
                    tracing::warn!(%error, "forgetting a refused purchase key failed");
                }
                // Usually a rebuild just happened and this is a no-op; if
                // Redis holds a generation Postgres does not, this repairs it.
                self.recovery.rebuild_soon(info.clone(), generation);
                Ok(None)
            }
            Durable::Replay(stored) => {
                give_back(numbers, false).await;
                Ok(Some(Placed::Replayed(stored)))
            }
            Durable::LimitExceeded => {
                // Redis' count was behind Postgres': rebuild it.
                give_back(numbers, true).await;
                self.recovery.rebuild_soon(info.clone(), generation);
                Ok(Some(Placed::Rejected(PurchaseRejection::LimitExceeded)))
            }
            Durable::KeyReused => {
                give_back(numbers, true).await;
                Err(SalesError::KeyReused)
            }
            Durable::UnitsTaken { free } => {
                // Redis handed out a unit Postgres says is sold: its counter
                // is wrong. The buyer hears sold_out and pays nothing; the
                // inventory is rebuilt from Postgres.
                give_back(free, true).await;
                self.recovery.rebuild_soon(info.clone(), generation);
                Ok(Some(Placed::Rejected(PurchaseRejection::SoldOut)))
            }
            Durable::Failed { kind, message } => {
                give_back(numbers, true).await;
                match kind {
                    FailureKind::Overloaded => Err(overloaded_error()),
                    FailureKind::Unavailable => Err(SalesError::Unavailable),
                    FailureKind::Other => Err(SalesError::Unexpected(Unexpected::msg(message))),
                }
            }
        }
    }

    /// A business refusal, unless the key already holds an answer: Redis
    /// remembers keys only briefly, so a late retry of a reserved purchase
    /// would otherwise be refused by the rules instead of replayed (and a
    /// key used with another body would not be told apart).
    async fn rejected(
        &self,
        request: &PurchaseRequest,
        rejection: PurchaseRejection,
    ) -> Result<Placed, SalesError> {
        self.answer_from_key(request, Ok(Placed::Rejected(rejection)))
            .await
    }

    /// What the key already holds: the stored 202 for this same request, a
    /// reuse for another one, else `unheard`.
    async fn answer_from_key(
        &self,
        request: &PurchaseRequest,
        unheard: Result<Placed, SalesError>,
    ) -> Result<Placed, SalesError> {
        match self
            .store
            .stored_outcome(request.user, request.key.as_str())
            .await?
        {
            Some((endpoint, fingerprint, outcome))
                if endpoint == PURCHASES_ENDPOINT && fingerprint == request.fingerprint =>
            {
                Ok(Placed::Replayed(outcome))
            }
            Some(_) => Err(SalesError::KeyReused),
            None => unheard,
        }
    }

    /// Sales created on another replica whose announcement this one missed.
    pub async fn load_missing(&self) -> Result<(), Unexpected> {
        for id in self.store.sale_ids().await? {
            if self.book.entry(id).is_none() {
                self.known(id).await?;
            }
        }
        Ok(())
    }

    /// The stored answer to an earlier request with this key, or "still in
    /// progress" while its reservation is on its way to Postgres.
    async fn replay(&self, request: &PurchaseRequest) -> Result<Placed, SalesError> {
        self.answer_from_key(request, Err(SalesError::InProgress))
            .await
    }

    /// One purchase of `user`; `None` when it is not theirs or not there.
    pub async fn purchase_of(
        &self,
        user: UserId,
        sale_id: i64,
        purchase_id: i64,
    ) -> Result<Option<Purchase>, SalesError> {
        Ok(self.store.purchase(user, sale_id, purchase_id).await?)
    }

    /// The user's purchases in a sale, oldest first.
    pub async fn purchases_of(
        &self,
        user: UserId,
        sale_id: i64,
    ) -> Result<Vec<Purchase>, SalesError> {
        if self.known(sale_id).await?.is_none() {
            return Err(SalesError::UnknownSale);
        }
        Ok(self.store.purchases(user, sale_id).await?)
    }

    /// Puts the user on the sale's waitlist: `(position, newly joined)`.
    pub async fn join_waitlist(
        &self,
        user: UserId,
        sale_id: i64,
    ) -> Result<(i64, bool), SalesError> {
        let Some(entry) = self.known(sale_id).await? else {
            return Err(SalesError::UnknownSale);
        };
        if let Some(position) = self.store.waitlist_position(sale_id, user).await? {
            return Ok((position, false));
        }
        let status = self
            .book
            .sale(entry.info.id, Utc::now())
            .map(|sale| sale.status);
        if status != Some(SaleStatus::SoldOut) {
            return Err(SalesError::NotSoldOut);
        }
        Ok(self.store.join_waitlist(sale_id, user).await?)
    }

    /// Checks one sale's books.
    pub async fn audit(&self, sale_id: i64) -> Result<SaleAudit, SalesError> {
        if self.store.sale(sale_id).await?.is_none() {
            return Err(SalesError::UnknownSale);
        }
        let counter = self
            .inventory
            .state(sale_id)
            .await?
            .map(|state| state.remaining);
        let mut audit = self.store.audit(sale_id).await?;
        audit.inventory_counter = counter;
        Ok(audit)
    }

    /// Recovery, for the background tasks started in `startup.rs`.
    pub fn recovery(&self) -> Arc<recovery::Recovery> {
        self.recovery.clone()
    }
}

pub use recovery::reconcile_loop;
pub use settlement::{settle_loop, Settler};

/// Subscribes to inventory updates, then feeds the book from them until
/// `shutdown` flips: updates from every replica's scripts, and sales
/// created elsewhere.
pub async fn start_listener(
    service: Arc<SalesService>,
    bus: crate::bus::Bus,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let messages = bus.messages();
    bus.subscribe_retrying(redis::UPDATES_CHANNEL).await;
    tokio::spawn(listen(service, bus, messages, shutdown))
}

async fn listen(
    service: Arc<SalesService>,
    bus: crate::bus::Bus,
    mut messages: tokio::sync::broadcast::Receiver<fred::types::Message>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let channel = bus.key(redis::UPDATES_CHANNEL);
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            message = messages.recv() => match message {
                Ok(message) if *message.channel == *channel => {
                    let Some(payload) = message.value.as_str() else { continue };
                    match serde_json::from_str::<book::Update>(&payload) {
                        Ok(update) => {
                            if let Some(created) = update.created {
                                service.on_created(created).await;
                            } else if service.book.apply(&update) {
                                // A rebuild: who bought is reloaded from Postgres.
                                if let Some(info) = service.book.entry(update.sale_id).map(|e| e.info.clone()) {
                                    if let Err(error) = service.load(info).await {
                                        tracing::warn!(%error, "reloading a rebuilt sale failed");
                                    }
                                }
                            }
                        }
                        Err(error) => tracing::warn!(%error, "malformed sales update"),
                    }
                }
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "sales listener lagged; reloading the book");
                    if let Err(error) = service.reload_all().await {
                        tracing::warn!(%error, "reloading sales failed");
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sale_is_scheduled_until_it_starts_then_open_until_nothing_remains() {
        let start = Utc::now();
        let before = start - chrono::Duration::seconds(1);
        assert_eq!(SaleStatus::at(start, 5, before), SaleStatus::Scheduled);
        assert_eq!(SaleStatus::at(start, 0, before), SaleStatus::Scheduled);
        assert_eq!(SaleStatus::at(start, 5, start), SaleStatus::Open);
        assert_eq!(SaleStatus::at(start, 0, start), SaleStatus::SoldOut);
    }

    #[test]
    fn the_in_flight_bound_sheds_past_its_maximum_and_recovers() {
        let bound = InFlight {
            current: AtomicUsize::new(0),
            max: 2,
        };
        let first = bound.try_acquire();
        let second = bound.try_acquire();
        assert!(first.is_some() && second.is_some());
        assert!(bound.try_acquire().is_none());
        drop(first);
        assert!(bound.try_acquire().is_some());
    }

    fn audit() -> SaleAudit {
        SaleAudit {
            total_units: 10,
            completed_units: 4,
            held_units: 1,
            reserved_units: 2,
            remaining_units: 3,
            inventory_counter: Some(3),
            unit_mismatches: 0,
            charge_mismatches: 0,
        }
    }

    #[test]
    fn an_audit_is_consistent_only_when_units_charges_and_counter_agree() {
        assert!(audit().consistent());
        assert!(SaleAudit {
            inventory_counter: None,
            ..audit()
        }
        .consistent());
        assert!(!SaleAudit {
            inventory_counter: Some(4),
            ..audit()
        }
        .consistent());
        assert!(!SaleAudit {
            charge_mismatches: 1,
            ..audit()
        }
        .consistent());
        assert!(!SaleAudit {
            completed_units: 9,
            remaining_units: -2,
            ..audit()
        }
        .consistent());
    }

    #[test]
    fn purchase_statuses_round_trip() {
        for status in ["reserved", "held", "completed", "failed"] {
            assert_eq!(
                PurchaseStatus::parse(status).map(|s| s.as_str()),
                Some(status)
            );
        }
        assert_eq!(PurchaseStatus::parse("pending"), None);
    }
}
