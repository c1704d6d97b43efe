//! `matchday loadgen drop`: a flash sale ("drop") driven through the public
//! API only, then checked for correctness.
//!
//! Setup (not timed): one player, `buyers` users in bulk (`short-percent` of
//! them one cent short of `quantity × price`, the rest with plenty), and the
//! sale. The rush: one purchase per buyer, in random order, `concurrency` in
//! flight, each with its own idempotency key; a 429 is retried with the same
//! key after its `retry_after_ms` (else its `Retry-After`), and every attempt
//! counts as a request. Then the sale's audit is polled every 100 ms until
//! nothing is reserved or held, and every buyer's purchases and balance are
//! fetched and checked against the guarantees of docs/API.md ("completed
//! units never exceed total_units; a user is charged exactly quantity ×
//! unit_price_cents if and only if the purchase completes").
//!
//! Times (`sold_out_ms`, `settled_ms`) are from the first purchase sent.
//! The load runs on its own two-worker tokio runtime (see
//! [`super::http::on_own_runtime`]).

use std::collections::{BTreeMap, HashMap};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::seq::SliceRandom;
use rand::Rng;
use serde::Deserialize;
use serde_json::{json, Value};

use super::http::{client, in_flight, on_own_runtime, shares, timed, Tally};

/// Usage of `matchday loadgen drop`.
pub const HELP: &str =
    "usage: matchday loadgen drop --url URL --admin-token TOKEN --units U --buyers B
                             [--concurrency 256] [--quantity 1] [--short-percent 10]
                             [--price-cents 1000] [--max-per-user M] [--settle-timeout 120]

Creates a player, B users (short-percent of them one cent short of quantity x
price) and a sale of U units, then sends one purchase of --quantity per buyer,
all at once with --concurrency in flight (429s retried after their Retry-After
with the same idempotency key). Prints requests/s, latency p50/p90/p99/max,
status counts, the time to the first sold_out and until every purchase is
completed or failed (the sale audit polled every 100 ms, up to --settle-timeout
seconds), then PASS/FAIL correctness checks (no overselling, unique share
numbers, every buyer charged exactly iff their purchase completed, short
buyers failed with insufficient_funds, both audits clean) and one
`drop_summary key=value ...` line. Exits 1 on any FAIL. --admin-token defaults
to MATCHDAY__ADMIN__TOKEN.";

/// Most users one bulk call may create.
const BULK_USERS_MAX: usize = 10_000;
/// Requests in flight while fetching buyers' purchases and balances.
const VERIFY_CONCURRENCY: usize = 64;
/// How often the sale's audit is polled while purchases settle.
const SETTLE_POLL: Duration = Duration::from_millis(100);
/// Attempts per buyer before a still rate-limited purchase is given up.
const MAX_ATTEMPTS: u32 = 100;
/// Wait before retrying a 429 that names no delay.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_millis(100);
/// Longest a setup, audit or verification call may take (one bulk call
/// creates up to 10,000 users).
const CALL_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a sale created without `starts_at` may stay `scheduled`.
const OPEN_WAIT: Duration = Duration::from_secs(30);

/// Parsed `loadgen drop` options.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    /// Base URL of the server, e.g. `http://127.0.0.1:8080`.
    pub url: String,
    /// The admin bearer token.
    pub admin_token: String,
    /// Units on sale.
    pub units: u64,
    /// Buyers, each sending one purchase.
    pub buyers: usize,
    /// Purchases in flight during the rush.
    pub concurrency: usize,
    /// Units per purchase.
    pub quantity: u64,
    /// Percent of buyers who cannot afford their purchase.
    pub short_percent: u64,
    /// Price of one unit.
    pub price_cents: i64,
    /// The sale's per-user limit, if any.
    pub max_per_user: Option<u64>,
    /// Longest wait, after the rush, for every purchase to settle.
    pub settle_timeout: Duration,
}

/// Parses the arguments after `loadgen drop`.
pub fn parse(args: &[String]) -> Result<Options, String> {
    let mut options = Options {
        url: String::new(),
        admin_token: std::env::var("MATCHDAY__ADMIN__TOKEN").unwrap_or_default(),
        units: 0,
        buyers: 0,
        concurrency: 256,
        quantity: 1,
        short_percent: 10,
        price_cents: 1_000,
        max_per_user: None,
        settle_timeout: Duration::from_secs(120),
    };
    let mut url = None;
    let mut flags = super::flags::Flags::new(args);
    while let Some(flag) = flags.next_flag() {
        match flag {
            "--url" => url = Some(flags.value(flag)?),
            "--admin-token" => options.admin_token = flags.value(flag)?,
            "--units" => options.units = flags.parsed(flag)?,
            "--buyers" => options.buyers = flags.parsed(flag)?,
            "--concurrency" => options.concurrency = flags.parsed::<usize>(flag)?.max(1),
            "--quantity" => options.quantity = flags.parsed(flag)?,
            "--short-percent" => options.short_percent = flags.parsed(flag)?,
            "--price-cents" => options.price_cents = flags.parsed(flag)?,
            "--max-per-user" => options.max_per_user = Some(flags.parsed(flag)?),
            "--settle-timeout" => options.settle_timeout = flags.seconds(flag)?,
            other => return Err(format!("unknown option {other}")),
        }
    }
    options.url = url
        .ok_or("--url is required")?
        .trim_end_matches('/')
        .to_string();
    if options.admin_token.is_empty() {
        return Err("--admin-token (or MATCHDAY__ADMIN__TOKEN) is required".into());
    }
    if options.units == 0 || options.buyers == 0 || options.quantity == 0 {
        return Err("--units, --buyers and --quantity must be at least 1".into());
    }
    if options.short_percent > 100 {
        return Err("--short-percent must be 0-100".into());
    }
    if options.price_cents < 1 || options.price_cents > 1_000_000_000 {
        return Err("--price-cents must be 1-1000000000".into());
    }
    Ok(options)
}

/// Buyers who get too little cash: `short_percent` of `buyers`, rounded.
pub fn short_buyers(buyers: usize, short_percent: u64) -> usize {
    ((buyers as u64 * short_percent + 50) / 100) as usize
}

/// Opening balances: a short buyer gets one cent less than the purchase
/// costs, a rich one a hundred purchases' worth.
pub fn opening_balances(quantity: u64, price_cents: i64) -> (i64, i64) {
    let cost = quantity as i64 * price_cents;
    (cost - 1, cost * 100)
}

/// How a buyer's purchase request was finally answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// 202: the purchase was taken.
    Accepted,
    /// 409 with this error code.
    Refused(String),
    /// Any other status (0: no response).
    Other(u16),
    /// Still 429 after [`MAX_ATTEMPTS`].
    GaveUp,
}

/// A purchase as `GET /api/v1/sales/{id}/purchases` lists it; only the
/// fields the checks read.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Purchase {
    /// Units bought.
    pub quantity: u64,
    /// reserved, held, completed or failed.
    pub status: String,
    /// Why it failed, e.g. `insufficient_funds`.
    #[serde(default)]
    pub failure_reason: Option<String>,
    /// The units' share numbers once completed.
    #[serde(default)]
    pub share_numbers: Option<Vec<i64>>,
}

/// `GET /api/v1/admin/sales/{id}/audit`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct SaleAudit {
    /// Units on sale.
    pub total_units: i64,
    /// Units of completed purchases.
    pub completed_units: i64,
    /// Units of purchases whose cash is held.
    pub held_units: i64,
    /// Units of reserved purchases.
    pub reserved_units: i64,
    /// Units not sold.
    pub remaining_units: i64,
    /// The server's fast inventory counter.
    #[serde(default)]
    pub inventory_counter: Option<i64>,
    /// Whether the server finds the sale's books consistent.
    pub consistent: bool,
}

/// What is known of one buyer at the end.
#[derive(Debug, Clone, PartialEq)]
pub struct BuyerFacts {
    /// Whether the buyer was given too little cash.
    pub short: bool,
    /// The buyer's opening balance.
    pub opening_cents: i64,
    /// How the rush answered the buyer.
    pub answer: Answer,
    /// The buyer's purchases in this sale (`None`: could not be fetched).
    pub purchases: Option<Vec<Purchase>>,
    /// `(cash_cents, held_cents)` from `GET /me` (`None`: not fetched).
    pub balance: Option<(i64, i64)>,
}

/// Everything the correctness checks look at.
#[derive(Debug, Clone, PartialEq)]
pub struct Facts {
    /// Units on sale.
    pub units: u64,
    /// Price of one unit.
    pub price_cents: i64,
    /// Whether nothing was reserved or held any more before the timeout.
    pub settled: bool,
    /// The sale's last audit.
    pub sale_audit: SaleAudit,
    /// `ok` of `GET /api/v1/admin/audit`.
    pub books_ok: bool,
    /// Every buyer.
    pub buyers: Vec<BuyerFacts>,
}

/// One PASS/FAIL line.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    /// What is checked.
    pub name: &'static str,
    /// Whether it held.
    pub passed: bool,
    /// The figures behind it.
    pub detail: String,
}

/// The outcome of [`verify`].
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// Every check, in order.
    pub checks: Vec<Check>,
    /// Units of completed purchases seen in buyers' purchase lists.
    pub completed_units: u64,
    /// Units completed beyond the total (by the audit or the lists).
    pub oversold: u64,
    /// Buyers whose cash went down without a completed purchase.
    pub charged_without_shares: u64,
    /// Buyers with a completed purchase not fully paid for.
    pub shares_without_charge: u64,
}

impl Verdict {
    /// Whether every check passed.
    pub fn ok(&self) -> bool {
        self.checks.iter().all(|c| c.passed)
    }
}

/// Checks the end state of a drop against the sale's guarantees.
pub fn verify(facts: &Facts) -> Verdict {
    let units = facts.units;
    let audit = &facts.sale_audit;
    let mut checks = Vec::new();
    let mut check = |name, passed, detail: String| {
        checks.push(Check {
            name,
            passed,
            detail,
        })
    };

    check(
        "every purchase settled (nothing reserved or held)",
        facts.settled,
        format!(
            "reserved_units={} held_units={}",
            audit.reserved_units, audit.held_units
        ),
    );
    check(
        "audit completed units within total",
        audit.completed_units >= 0 && audit.completed_units as u64 <= units,
        format!("completed_units={} total={units}", audit.completed_units),
    );
    check(
        "sale audit consistent",
        audit.consistent,
        format!(
            "remaining_units={} inventory_counter={}",
            audit.remaining_units,
            or_none(audit.inventory_counter)
        ),
    );
    check(
        "books audit ok (GET /admin/audit)",
        facts.books_ok,
        String::new(),
    );

    let unfetched = facts
        .buyers
        .iter()
        .filter(|b| b.purchases.is_none() || b.balance.is_none())
        .count();
    check(
        "every buyer's purchases and balance fetched",
        unfetched == 0,
        format!("unfetched={unfetched}"),
    );

    let mut completed_units = 0u64;
    let mut share_numbers = 0u64;
    let mut not_terminal = 0u64;
    let mut wrong_share_count = 0u64;
    let mut seen: HashMap<i64, u64> = HashMap::new();
    let mut out_of_range = 0u64;
    let mut accepted_without_purchase = 0u64;
    let mut short_not_failed = 0u64;
    let mut short_accepted = 0u64;
    let mut held_cash = 0u64;
    let mut charged_without_shares = 0u64;
    let mut shares_without_charge = 0u64;
    let mut wrong_charge = 0u64;
    for buyer in &facts.buyers {
        let purchases = buyer.purchases.as_deref().unwrap_or_default();
        if buyer.answer == Answer::Accepted && buyer.purchases.is_some() && purchases.is_empty() {
            accepted_without_purchase += 1;
        }
        let mut bought = 0u64;
        for purchase in purchases {
            match purchase.status.as_str() {
                "completed" => {
                    bought += purchase.quantity;
                    let numbers = purchase.share_numbers.as_deref().unwrap_or_default();
                    if numbers.len() as u64 != purchase.quantity {
                        wrong_share_count += 1;
                    }
                    for &number in numbers {
                        share_numbers += 1;
                        *seen.entry(number).or_default() += 1;
                        if number < 1 || number as u64 > units {
                            out_of_range += 1;
                        }
                    }
                }
                "failed" => {}
                _ => not_terminal += 1,
            }
        }
        completed_units += bought;
        if buyer.short && buyer.answer == Answer::Accepted {
            short_accepted += 1;
            let failed_for_cash = !purchases.is_empty()
                && purchases.iter().all(|p| {
                    p.status == "failed"
                        && p.failure_reason.as_deref() == Some("insufficient_funds")
                });
            if !failed_for_cash {
                short_not_failed += 1;
            }
        } else if buyer.short && bought > 0 {
            short_not_failed += 1;
        }
        if let Some((cash, held)) = buyer.balance {
            if held != 0 {
                held_cash += 1;
            }
            let expected = buyer.opening_cents - bought as i64 * facts.price_cents;
            if cash != expected {
                if bought == 0 && cash < buyer.opening_cents {
                    charged_without_shares += 1;
                } else if bought > 0 && cash > expected {
                    shares_without_charge += 1;
                } else {
                    wrong_charge += 1;
                }
            }
        }
    }
    let duplicates: u64 = seen.values().map(|n| n - 1).sum();
    let audit_completed = audit.completed_units.max(0) as u64;
    let oversold = completed_units.max(audit_completed).saturating_sub(units);

    check(
        "every purchase completed or failed",
        not_terminal == 0,
        format!("not_terminal={not_terminal}"),
    );
    check(
        "every 202 purchase is listed",
        accepted_without_purchase == 0,
        format!("accepted_without_purchase={accepted_without_purchase}"),
    );
    check(
        "share numbers unique",
        duplicates == 0,
        format!("share_numbers={share_numbers} duplicates={duplicates}"),
    );
    check(
        "share numbers within 1..=total",
        out_of_range == 0,
        format!("out_of_range={out_of_range}"),
    );
    check(
        "share numbers match quantities and completed units",
        wrong_share_count == 0 && share_numbers == audit_completed,
        format!(
            "share_numbers={share_numbers} audit_completed_units={audit_completed} \
             purchases_with_wrong_count={wrong_share_count}"
        ),
    );
    check(
        "completed quantities sum to audit completed units",
        completed_units == audit_completed,
        format!("purchases={completed_units} audit={audit_completed}"),
    );
    check(
        "not oversold",
        oversold == 0,
        format!("oversold={oversold}"),
    );
    check(
        "no cash held",
        held_cash == 0,
        format!("buyers_with_held_cash={held_cash}"),
    );
    check(
        "charged exactly iff completed",
        charged_without_shares == 0 && shares_without_charge == 0 && wrong_charge == 0,
        format!(
            "charged_without_shares={charged_without_shares} \
             shares_without_charge={shares_without_charge} wrong_amount={wrong_charge}"
        ),
    );
    check(
        "short buyers failed with insufficient_funds",
        short_not_failed == 0,
        format!("short_accepted={short_accepted} not_failed_for_cash={short_not_failed}"),
    );
    Verdict {
        checks,
        completed_units,
        oversold,
        charged_without_shares,
        shares_without_charge,
    }
}

/// One buyer as created: bearer header value, opening balance, shortness.
#[derive(Debug, Clone)]
struct Buyer {
    authorization: String,
    opening_cents: i64,
    short: bool,
}

/// The admin API and the shared client.
pub(super) struct Api {
    pub(super) client: reqwest::Client,
    pub(super) base: String,
    pub(super) admin: String,
}

impl Api {
    fn url(&self, path: &str) -> String {
        format!("{}/api/v1{path}", self.base)
    }

    /// Sends `method path` with an optional bearer `authorization` and JSON body;
    /// returns the JSON reply if the status is `expect`.
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        authorization: Option<&str>,
        body: Option<&Value>,
        expect: u16,
    ) -> Result<Value, String> {
        let mut request = self
            .client
            .request(method.clone(), self.url(path))
            .timeout(CALL_TIMEOUT);
        if let Some(authorization) = authorization {
            request = request.header(reqwest::header::AUTHORIZATION, authorization);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .map_err(|e| format!("{method} {path}: {e}"))?;
        let status = response.status().as_u16();
        let text = response
            .text()
            .await
            .map_err(|e| format!("{method} {path}: {e}"))?;
        if status != expect {
            return Err(format!("{method} {path}: {status} {text}"));
        }
        serde_json::from_str(&text).map_err(|e| format!("{method} {path}: {e}: {text}"))
    }

    pub(super) async fn admin_post(&self, path: &str, body: &Value) -> Result<Value, String> {
        self.call(
            reqwest::Method::POST,
            path,
            Some(&self.admin),
            Some(body),
            201,
        )
        .await
    }

    pub(super) async fn public_get(&self, path: &str) -> Result<Value, String> {
        self.call(reqwest::Method::GET, path, None, None, 200).await
    }

    async fn admin_get(&self, path: &str) -> Result<Value, String> {
        self.call(reqwest::Method::GET, path, Some(&self.admin), None, 200)
            .await
    }
}

/// Creates `count` users with `balance` in calls of at most
/// [`BULK_USERS_MAX`], named `{run}{tag}{call}_{n}`.
pub(super) async fn create_users(
    api: &Api,
    run: &str,
    tag: char,
    count: usize,
    balance: i64,
) -> Result<Vec<String>, String> {
    let mut tokens = Vec::with_capacity(count);
    let mut call = 0;
    while tokens.len() < count {
        let batch = (count - tokens.len()).min(BULK_USERS_MAX);
        let body = json!({"count": batch, "prefix": format!("{run}{tag}{call}_"),
                          "balance_cents": balance});
        let created = api.admin_post("/admin/users/bulk", &body).await?;
        let users = created["users"].as_array().ok_or("bulk users: no users")?;
        if users.len() != batch {
            return Err(format!("bulk users: asked {batch}, got {}", users.len()));
        }
        for user in users {
            let token = user["token"].as_str().ok_or("bulk users: no token")?;
            tokens.push(format!("Bearer {token}"));
        }
        call += 1;
    }
    Ok(tokens)
}

/// What one buyer's purchase request came to.
struct Attempted {
    answer: Answer,
    /// `(status, micros)` of every attempt, 429s included.
    samples: Vec<(u16, u64)>,
    /// When the final answer arrived.
    finished: Instant,
    error: Option<String>,
}

/// How long a 429 asks to wait: `retry_after_ms` from its body, else the
/// `Retry-After` header, else [`DEFAULT_RETRY_AFTER`].
pub fn retry_delay(body: &[u8], header: Option<Duration>) -> Duration {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v["error"]["retry_after_ms"].as_u64())
        .map(Duration::from_millis)
        .or(header)
        .unwrap_or(DEFAULT_RETRY_AFTER)
}

/// The `error.code` of an error body, or `"unknown"`.
pub fn error_code(body: &[u8]) -> String {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v["error"]["code"].as_str().map(str::to_string))
        .unwrap_or_else(|| "unknown".into())
}

/// Sends one buyer's purchase, retrying 429s with the same key.
async fn purchase(
    client: reqwest::Client,
    url: String,
    authorization: String,
    key: String,
    quantity: u64,
) -> Attempted {
    let body = json!({ "quantity": quantity });
    let mut samples = Vec::with_capacity(1);
    let mut attempts = 0;
    loop {
        attempts += 1;
        let request = client
            .post(&url)
            .header(reqwest::header::AUTHORIZATION, &authorization)
            .header("idempotency-key", &key)
            .json(&body);
        let shot = timed(request.send(), true).await;
        samples.push((shot.status, shot.micros));
        let answer = match shot.status {
            202 => Answer::Accepted,
            409 => Answer::Refused(error_code(&shot.body)),
            429 if attempts < MAX_ATTEMPTS => {
                tokio::time::sleep(retry_delay(&shot.body, shot.retry_after)).await;
                continue;
            }
            429 => Answer::GaveUp,
            other => Answer::Other(other),
        };
        return Attempted {
            answer,
            samples,
            finished: shot.finished,
            error: shot.error,
        };
    }
}

/// Fetches one buyer's purchases and balance (`None` where a fetch failed).
async fn inspect(
    api: Arc<Api>,
    sale_id: i64,
    authorization: String,
) -> (Option<Vec<Purchase>>, Option<(i64, i64)>) {
    let get = reqwest::Method::GET;
    let purchases = api
        .call(
            get.clone(),
            &format!("/sales/{sale_id}/purchases"),
            Some(&authorization),
            None,
            200,
        )
        .await
        .ok()
        .and_then(|v| serde_json::from_value(v).ok());
    let balance = api
        .call(get, "/me", Some(&authorization), None, 200)
        .await
        .ok()
        .and_then(|me| me_balance(&me));
    (purchases, balance)
}

/// `(cash_cents, held_cents)` of a `GET /me` reply (`balance_cents` is
/// accepted for the cash, as docs/API.md names it).
pub fn me_balance(me: &Value) -> Option<(i64, i64)> {
    let cash = me["cash_cents"].as_i64().or(me["balance_cents"].as_i64())?;
    Some((cash, me["held_cents"].as_i64()?))
}

/// Milliseconds, rounded to a tenth.
fn ms(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 10_000.0).round() / 10.0
}

/// A number or `none`, for the summary line.
fn or_none<T: std::fmt::Display>(value: Option<T>) -> String {
    value.map_or_else(|| "none".into(), |v| v.to_string())
}

/// Runs the drop; `Ok(true)` if every check passed.
async fn run(options: Options) -> Result<bool, String> {
    let api = Arc::new(Api {
        client: client(options.concurrency)?,
        base: options.url.clone(),
        admin: format!("Bearer {}", options.admin_token),
    });
    let run = format!("d{:06x}", rand::thread_rng().gen::<u32>() & 0xff_ffff);
    let price = options.price_cents;
    let player = api
        .admin_post(
            "/admin/players",
            &json!({"name": format!("Drop {run}"), "team": "Drop FC", "position": "MF",
                    "price_cents": price}),
        )
        .await
        .map_err(|e| format!("creating the player (is --admin-token right?): {e}"))?;
    let player_id = player["id"].as_i64().ok_or("player without id")?;

    let short_count = short_buyers(options.buyers, options.short_percent);
    let (short_balance, rich_balance) = opening_balances(options.quantity, price);
    let mut buyers: Vec<Buyer> = Vec::with_capacity(options.buyers);
    for (tag, count, balance) in [
        ('s', short_count, short_balance),
        ('r', options.buyers - short_count, rich_balance),
    ] {
        for authorization in create_users(&api, &run, tag, count, balance).await? {
            buyers.push(Buyer {
                authorization,
                opening_cents: balance,
                short: tag == 's',
            });
        }
    }
    buyers.shuffle(&mut rand::thread_rng());
    let buyers = Arc::new(buyers);

    let mut sale_body = json!({"player_id": player_id, "name": format!("Drop {run}"),
                               "total_units": options.units, "unit_price_cents": price});
    if let Some(max) = options.max_per_user {
        sale_body["max_per_user"] = json!(max);
    }
    let sale = api.admin_post("/admin/sales", &sale_body).await?;
    let sale_id = sale["sale_id"].as_i64().ok_or("sale without sale_id")?;
    let waiting_since = Instant::now();
    let mut status = sale["status"].as_str().unwrap_or_default().to_string();
    while status == "scheduled" && waiting_since.elapsed() < OPEN_WAIT {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let sale = api.public_get(&format!("/sales/{sale_id}")).await?;
        status = sale["status"].as_str().unwrap_or_default().to_string();
    }
    eprintln!(
        "loadgen drop: run {run}, sale {sale_id} ({status}) of {} units at {price} cents, \
         {} buyers ({short_count} short of cash) buying {} each, {} in flight",
        options.units, options.buyers, options.quantity, options.concurrency
    );

    // The rush.
    let started = Instant::now();
    let purchase_url = api.url(&format!("/sales/{sale_id}/purchases"));
    // One current-thread runtime and client per CPU, each with its share of
    // the buyers and of the concurrency: measured faster than one shared
    // multi-threaded runtime (see `loadgen http`).
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, options.concurrency.max(1));
    let mut groups = Vec::with_capacity(threads);
    let mut first = 0;
    for (group, (count, concurrency)) in shares(buyers.len(), threads)
        .into_iter()
        .zip(shares(options.concurrency, threads))
        .enumerate()
    {
        let (buyers, run, url) = (buyers.clone(), run.clone(), purchase_url.clone());
        let quantity = options.quantity;
        let start = first;
        first += count;
        groups.push(on_own_runtime(
            format!("loadgen-drop-rush-{group}"),
            1,
            move || async move {
                let client = client(concurrency.max(1))?;
                in_flight(count, concurrency.max(1), move |index| {
                    purchase(
                        client.clone(),
                        url.clone(),
                        buyers[start + index].authorization.clone(),
                        format!("{run}-{}", start + index),
                        quantity,
                    )
                })
                .await
            },
        ));
    }
    let mut rush = Vec::with_capacity(buyers.len());
    for group in futures_util::future::join_all(groups).await {
        rush.extend(group?);
    }
    let mut tally = Tally::default();
    let mut sold_out: Option<Duration> = None;
    let mut last_answer = started;
    let mut answers: BTreeMap<String, u64> = BTreeMap::new();
    for attempted in &rush {
        for &(status, micros) in &attempted.samples {
            tally.record(status, micros);
        }
        if tally.first_error.is_none() {
            tally.first_error.clone_from(&attempted.error);
        }
        last_answer = last_answer.max(attempted.finished);
        let label = match &attempted.answer {
            Answer::Accepted => "202".to_string(),
            Answer::Refused(code) => {
                if code == "sold_out" {
                    let at = attempted.finished.duration_since(started);
                    sold_out = Some(sold_out.map_or(at, |first| first.min(at)));
                }
                format!("409 {code}")
            }
            Answer::Other(status) => format!("other {status}"),
            Answer::GaveUp => "gave up after 429s".to_string(),
        };
        *answers.entry(label).or_default() += 1;
    }
    let rush_time = last_answer.duration_since(started);
    let requests = tally.requests();
    let rate_limited = tally.statuses.get(&429).copied().unwrap_or(0);
    let rps = (requests as f64 / rush_time.as_secs_f64().max(1e-6)).round();
    println!(
        "rush: {requests} requests in {:.3} s = {rps} requests/s ({} buyers, {} in flight)",
        rush_time.as_secs_f64(),
        options.buyers,
        options.concurrency
    );
    println!(
        "latency: p50 {} ms, p90 {} ms, p99 {} ms, max {} ms",
        or_none(tally.ms_at(0.50)),
        or_none(tally.ms_at(0.90)),
        or_none(tally.ms_at(0.99)),
        or_none(tally.max_ms())
    );
    println!(
        "statuses (every attempt): {}",
        tally
            .statuses
            .iter()
            .map(|(s, n)| format!("{s}={n}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "answers (per buyer): {}; 429 answers (each retried): {rate_limited}",
        answers
            .iter()
            .map(|(a, n)| format!("{a}={n}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if let Some(error) = &tally.first_error {
        println!("first transport error: {error}");
    }
    match sold_out {
        Some(at) => println!(
            "sold out: first sold_out answer {} ms after the start",
            ms(at)
        ),
        None => println!("sold out: no sold_out answer"),
    }

    // Settlement.
    let audit_path = format!("/admin/sales/{sale_id}/audit");
    let settle_deadline = Instant::now() + options.settle_timeout;
    let mut last_audit = None;
    let settled_at = loop {
        let polled = api.admin_get(&audit_path).await.and_then(|audit| {
            serde_json::from_value::<SaleAudit>(audit).map_err(|e| format!("sale audit: {e}"))
        });
        match polled {
            Ok(audit) => {
                let settled = audit.reserved_units + audit.held_units == 0;
                last_audit = Some(audit);
                if settled {
                    break Some(started.elapsed());
                }
            }
            Err(error) => eprintln!("loadgen drop: {error} (polling on)"),
        }
        if Instant::now() >= settle_deadline {
            break None;
        }
        tokio::time::sleep(SETTLE_POLL).await;
    };
    let sale_audit = last_audit.ok_or("the sale audit never answered")?;
    match settled_at {
        Some(at) => println!(
            "settled: every purchase completed or failed {} ms after the start",
            ms(at)
        ),
        None => println!(
            "settled: NOT within {:?} after the rush",
            options.settle_timeout
        ),
    }
    println!(
        "sale audit: total {} completed {} held {} reserved {} remaining {} counter {} consistent {}",
        sale_audit.total_units,
        sale_audit.completed_units,
        sale_audit.held_units,
        sale_audit.reserved_units,
        sale_audit.remaining_units,
        or_none(sale_audit.inventory_counter),
        sale_audit.consistent
    );
    let books = api.admin_get("/admin/audit").await?;
    let books_ok = books["ok"] == json!(true);
    if !books_ok {
        println!("books audit: {books}");
    }

    // Every buyer's purchases and balance.
    let inspected = {
        let (api, buyers) = (api.clone(), buyers.clone());
        in_flight(buyers.len(), VERIFY_CONCURRENCY, move |index| {
            inspect(api.clone(), sale_id, buyers[index].authorization.clone())
        })
        .await?
    };
    let facts = Facts {
        units: options.units,
        price_cents: price,
        settled: settled_at.is_some(),
        sale_audit,
        books_ok,
        buyers: buyers
            .iter()
            .zip(rush)
            .zip(inspected)
            .map(|((buyer, attempted), (purchases, balance))| BuyerFacts {
                short: buyer.short,
                opening_cents: buyer.opening_cents,
                answer: attempted.answer,
                purchases,
                balance,
            })
            .collect(),
    };
    let verdict = verify(&facts);
    for check in &verdict.checks {
        let word = if check.passed { "PASS" } else { "FAIL" };
        if check.detail.is_empty() {
            println!("{word} {}", check.name);
        } else {
            println!("{word} {}: {}", check.name, check.detail);
        }
    }
    let count = |status: u16| tally.statuses.get(&status).copied().unwrap_or(0);
    println!(
        "drop_summary requests={requests} rps={rps} p50_ms={} p90_ms={} p99_ms={} max_ms={} \
         accepted={} refused={} rate_limited={rate_limited} sold_out_ms={} settled_ms={} \
         completed={} oversold={} charged_without_shares={} shares_without_charge={} ok={}",
        or_none(tally.ms_at(0.50)),
        or_none(tally.ms_at(0.90)),
        or_none(tally.ms_at(0.99)),
        or_none(tally.max_ms()),
        count(202),
        count(409),
        or_none(sold_out.map(ms)),
        or_none(settled_at.map(ms)),
        verdict.completed_units,
        verdict.oversold,
        verdict.charged_without_shares,
        verdict.shares_without_charge,
        verdict.ok()
    );
    Ok(verdict.ok())
}

/// Entry point for `matchday loadgen drop …`.
pub async fn main(args: &[String]) -> ExitCode {
    let options = match parse(args) {
        Ok(options) => options,
        Err(error) => {
            eprintln!("loadgen drop: {error}\n\n{HELP}");
            return ExitCode::from(2);
        }
    };
    match on_own_runtime("loadgen-drop".into(), 2, move || run(options)).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("loadgen drop: {error}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    const REQUIRED: [&str; 8] = [
        "--url",
        "http://h:8080/",
        "--admin-token",
        "t",
        "--units",
        "100",
        "--buyers",
        "1000",
    ];

    #[test]
    fn options_parse() {
        let options = parse(&args(&REQUIRED)).unwrap();
        assert_eq!(options.url, "http://h:8080");
        assert_eq!(options.admin_token, "t");
        assert_eq!((options.units, options.buyers), (100, 1000));
        assert_eq!(options.concurrency, 256);
        assert_eq!(options.quantity, 1);
        assert_eq!(options.short_percent, 10);
        assert_eq!(options.price_cents, 1_000);
        assert_eq!(options.max_per_user, None);
        assert_eq!(options.settle_timeout, Duration::from_secs(120));

        let mut all = args(&REQUIRED);
        all.extend(args(&[
            "--concurrency",
            "64",
            "--quantity",
            "2",
            "--short-percent",
            "0",
            "--price-cents",
            "250",
            "--max-per-user",
            "1",
            "--settle-timeout",
            "5",
        ]));
        let options = parse(&all).unwrap();
        assert_eq!(options.concurrency, 64);
        assert_eq!(options.quantity, 2);
        assert_eq!(options.short_percent, 0);
        assert_eq!(options.price_cents, 250);
        assert_eq!(options.max_per_user, Some(1));
        assert_eq!(options.settle_timeout, Duration::from_secs(5));
    }

    #[test]
    fn bad_options_are_refused() {
        let without = |flag: &str| {
            let mut list = args(&REQUIRED);
            let at = list.iter().position(|a| a == flag).unwrap();
            list.drain(at..at + 2);
            list
        };
        assert!(parse(&without("--url")).is_err());
        assert!(parse(&without("--units")).is_err());
        assert!(parse(&without("--buyers")).is_err());
        let with = |extra: &[&str]| {
            let mut list = args(&REQUIRED);
            list.extend(args(extra));
            parse(&list)
        };
        assert!(with(&["--units", "0"]).is_err());
        assert!(with(&["--quantity", "0"]).is_err());
        assert!(with(&["--short-percent", "101"]).is_err());
        assert!(with(&["--price-cents", "0"]).is_err());
        assert!(with(&["--units", "-1"]).is_err());
        assert!(with(&["--settle-timeout"]).is_err());
        assert!(with(&["--bogus", "1"]).is_err());
    }

    #[test]
    fn balances_and_shares_of_short_buyers() {
        assert_eq!(short_buyers(1000, 10), 100);
        assert_eq!(short_buyers(15, 10), 2, "1.5 rounds up");
        assert_eq!(short_buyers(7, 0), 0);
        assert_eq!(short_buyers(7, 100), 7);
        assert_eq!(opening_balances(1, 1_000), (999, 100_000));
        assert_eq!(opening_balances(3, 50), (149, 15_000));
    }

    #[test]
    fn replies_are_read() {
        let limited = br#"{"error":{"code":"rate_limited","retry_after_ms":250}}"#;
        assert_eq!(
            retry_delay(limited, Some(Duration::from_secs(1))),
            Duration::from_millis(250)
        );
        assert_eq!(
            retry_delay(b"", Some(Duration::from_secs(1))),
            Duration::from_secs(1)
        );
        assert_eq!(retry_delay(b"{}", None), DEFAULT_RETRY_AFTER);
        assert_eq!(
            error_code(br#"{"error":{"code":"sold_out","message":"x"}}"#),
            "sold_out"
        );
        assert_eq!(error_code(b"<html>"), "unknown");
        assert_eq!(
            me_balance(&json!({"cash_cents": 5, "held_cents": 0})),
            Some((5, 0))
        );
        assert_eq!(
            me_balance(&json!({"balance_cents": 7, "held_cents": 2})),
            Some((7, 2))
        );
        assert_eq!(me_balance(&json!({"cash_cents": 5})), None);
        let listed: Vec<Purchase> = serde_json::from_value(json!([
            {"purchase_id": 1, "sale_id": 2, "quantity": 1, "status": "completed",
             "failure_reason": null, "share_numbers": [3]},
            {"purchase_id": 2, "sale_id": 2, "quantity": 1, "status": "failed",
             "failure_reason": "insufficient_funds", "share_numbers": null}
        ]))
        .unwrap();
        assert_eq!(listed[0].share_numbers, Some(vec![3]));
        assert_eq!(
            listed[1].failure_reason.as_deref(),
            Some("insufficient_funds")
        );
    }

    const PRICE: i64 = 1_000;

    fn completed(numbers: &[i64]) -> Purchase {
        Purchase {
            quantity: numbers.len() as u64,
            status: "completed".into(),
            failure_reason: None,
            share_numbers: Some(numbers.to_vec()),
        }
    }

    fn failed(reason: &str) -> Purchase {
        Purchase {
            quantity: 1,
            status: "failed".into(),
            failure_reason: Some(reason.into()),
            share_numbers: None,
        }
    }

    fn rich(answer: Answer, purchases: Vec<Purchase>, cash: i64) -> BuyerFacts {
        BuyerFacts {
            short: false,
            opening_cents: 100 * PRICE,
            answer,
            purchases: Some(purchases),
            balance: Some((cash, 0)),
        }
    }

    /// Three units: two rich buyers completed, one short buyer failed for
    /// cash, one rich buyer refused as sold out.
    fn good_drop() -> Facts {
        Facts {
            units: 3,
            price_cents: PRICE,
            settled: true,
            sale_audit: SaleAudit {
                total_units: 3,
                completed_units: 3,
                held_units: 0,
                reserved_units: 0,
                remaining_units: 0,
                inventory_counter: Some(0),
                consistent: true,
            },
            books_ok: true,
            buyers: vec![
                rich(Answer::Accepted, vec![completed(&[1, 3])], 98 * PRICE),
                rich(Answer::Accepted, vec![completed(&[2])], 99 * PRICE),
                BuyerFacts {
                    short: true,
                    opening_cents: PRICE - 1,
                    answer: Answer::Accepted,
                    purchases: Some(vec![failed("insufficient_funds")]),
                    balance: Some((PRICE - 1, 0)),
                },
                rich(Answer::Refused("sold_out".into()), vec![], 100 * PRICE),
            ],
        }
    }

    fn failing(verdict: &Verdict) -> Vec<&'static str> {
        verdict
            .checks
            .iter()
            .filter(|c| !c.passed)
            .map(|c| c.name)
            .collect()
    }

    #[test]
    fn a_correct_drop_passes() {
        let verdict = verify(&good_drop());
        assert_eq!(failing(&verdict), Vec::<&str>::new());
        assert!(verdict.ok());
        assert_eq!(verdict.completed_units, 3);
        assert_eq!(verdict.oversold, 0);
    }

    #[test]
    fn overselling_and_duplicate_shares_fail() {
        let mut facts = good_drop();
        facts.buyers[3] = rich(Answer::Accepted, vec![completed(&[3])], 99 * PRICE);
        facts.sale_audit.completed_units = 4;
        let verdict = verify(&facts);
        assert_eq!(verdict.oversold, 1);
        assert_eq!(
            failing(&verdict),
            vec![
                "audit completed units within total",
                "share numbers unique",
                "not oversold"
            ]
        );
    }

    #[test]
    fn shares_out_of_range_or_miscounted_fail() {
        let mut facts = good_drop();
        facts.buyers[1].purchases = Some(vec![completed(&[4])]);
        assert_eq!(
            failing(&verify(&facts)),
            vec!["share numbers within 1..=total"]
        );
        let mut facts = good_drop();
        facts.buyers[1].purchases.as_mut().unwrap()[0].share_numbers = None;
        assert_eq!(
            failing(&verify(&facts)),
            vec!["share numbers match quantities and completed units"]
        );
        let mut facts = good_drop();
        facts.sale_audit.completed_units = 2;
        assert_eq!(
            failing(&verify(&facts)),
            vec![
                "share numbers match quantities and completed units",
                "completed quantities sum to audit completed units"
            ]
        );
    }

    #[test]
    fn wrong_charges_are_counted() {
        let mut facts = good_drop();
        // Refused, yet charged.
        facts.buyers[3].balance = Some((99 * PRICE, 0));
        // Completed, yet not charged.
        facts.buyers[1].balance = Some((100 * PRICE, 0));
        // Completed two, charged three.
        facts.buyers[0].balance = Some((97 * PRICE, 0));
        let verdict = verify(&facts);
        assert_eq!(verdict.charged_without_shares, 1);
        assert_eq!(verdict.shares_without_charge, 1);
        assert_eq!(failing(&verdict), vec!["charged exactly iff completed"]);
        assert!(verdict
            .checks
            .iter()
            .any(|c| c.detail.contains("wrong_amount=1")));
    }

    #[test]
    fn held_cash_and_unsettled_purchases_fail() {
        let mut facts = good_drop();
        facts.settled = false;
        facts.sale_audit.held_units = 1;
        facts.buyers[1].purchases = Some(vec![Purchase {
            status: "held".into(),
            share_numbers: None,
            ..completed(&[2])
        }]);
        facts.buyers[1].balance = Some((100 * PRICE, PRICE));
        facts.sale_audit.completed_units = 2;
        assert_eq!(
            failing(&verify(&facts)),
            vec![
                "every purchase settled (nothing reserved or held)",
                "every purchase completed or failed",
                "no cash held",
            ]
        );
    }

    #[test]
    fn short_buyers_must_fail_for_cash() {
        let mut facts = good_drop();
        facts.buyers[2].purchases = Some(vec![failed("payment_declined")]);
        assert_eq!(
            failing(&verify(&facts)),
            vec!["short buyers failed with insufficient_funds"]
        );
        let mut facts = good_drop();
        facts.buyers[2].purchases = Some(vec![]);
        assert_eq!(
            failing(&verify(&facts)),
            vec![
                "every 202 purchase is listed",
                "short buyers failed with insufficient_funds"
            ]
        );
    }

    #[test]
    fn audits_and_missing_facts_fail() {
        let mut facts = good_drop();
        facts.sale_audit.consistent = false;
        facts.books_ok = false;
        facts.buyers[3].balance = None;
        assert_eq!(
            failing(&verify(&facts)),
            vec![
                "sale audit consistent",
                "books audit ok (GET /admin/audit)",
                "every buyer's purchases and balance fetched",
            ]
        );
    }
}
