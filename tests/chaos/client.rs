//! A client that keeps asking until it hears a final answer, and the record
//! of every operation it sent: what the checker later holds the books to.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::Rng;
use serde_json::Value;

use crate::helpers::ADMIN_TOKEN;

/// How long one operation may go unanswered (faults included) before the
/// checker calls it lost.
pub const RESOLVE_WITHIN: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Register,
    Buy,
    Sell,
    Purchase,
    Event,
    NewDrop,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::Register,
        Kind::Buy,
        Kind::Sell,
        Kind::Purchase,
        Kind::Event,
        Kind::NewDrop,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Register => "register",
            Kind::Buy => "buy",
            Kind::Sell => "sell",
            Kind::Purchase => "drop purchase",
            Kind::Event => "pushed event",
            Kind::NewDrop => "new drop",
        }
    }
}

/// One operation as the client saw it.
#[derive(Debug, Clone)]
pub struct Record {
    pub kind: Kind,
    /// Index into [`Shared::users`] (None for admin operations).
    pub user: Option<usize>,
    pub key: String,
    pub path: String,
    pub body: Value,
    /// Attempts that got no answer: refused, cut short, timed out.
    pub unanswered: u32,
    /// Answers that said "try again": 409 request_in_progress, 429, 5xx.
    pub try_again: u32,
    /// The final answer, or None if none came within [`RESOLVE_WITHIN`].
    pub answer: Option<(u16, Value)>,
}

#[derive(Debug, Clone)]
pub struct User {
    pub username: String,
    pub token: String,
    pub start_balance_cents: i64,
}

#[derive(Debug, Clone)]
pub struct Sale {
    pub sale_id: i64,
}

/// What every task shares: where the replicas are and what was sent.
pub struct Shared {
    pub replicas: Vec<String>,
    pub client: reqwest::Client,
    pub users: Mutex<Vec<User>>,
    pub sales: Mutex<Vec<Sale>>,
    pub records: Mutex<Vec<Record>>,
    pub stop: AtomicBool,
    pub attempts: AtomicU64,
    /// `(kind, status)` of every answer, retries included.
    pub statuses: Mutex<BTreeMap<(Kind, u16), u64>>,
}

pub enum Sent {
    Answered(u16, Value),
    /// Refused, cut short or timed out: the request may or may not have run.
    NoAnswer,
}

impl Shared {
    pub fn new(replicas: Vec<String>) -> Shared {
        Shared {
            replicas,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("http client"),
            users: Mutex::new(Vec::new()),
            sales: Mutex::new(Vec::new()),
            records: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
            attempts: AtomicU64::new(0),
            statuses: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    pub fn user(&self, n: usize) -> User {
        self.users.lock().expect("users")[n].clone()
    }

    /// One attempt through a random replica.
    pub async fn send(
        &self,
        kind: Option<Kind>,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        key: Option<&str>,
        body: Option<&Value>,
    ) -> Sent {
        let replica = rand::thread_rng().gen_range(0..self.replicas.len());
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.replicas[replica]));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        self.attempts.fetch_add(1, Ordering::Relaxed);
        let Ok(response) = request.send().await else {
            return Sent::NoAnswer;
        };
        let status = response.status().as_u16();
        let Ok(body) = response.json::<Value>().await else {
            // Headers came, the body did not: the replica died mid-answer.
            // (Every answer this test asks for has a JSON body.)
            return Sent::NoAnswer;
        };
        if let Some(kind) = kind {
            *self
                .statuses
                .lock()
                .expect("statuses")
                .entry((kind, status))
                .or_default() += 1;
        }
        Sent::Answered(status, body)
    }

    /// Sends until a final answer (see [`is_final`]) or [`RESOLVE_WITHIN`],
    /// through a random replica each time, and records the operation.
    pub async fn run(&self, mut record: Record, token: Option<&str>) -> Record {
        let started = Instant::now();
        let mut pause = Duration::from_millis(50);
        loop {
            let sent = self
                .send(
                    Some(record.kind),
                    reqwest::Method::POST,
                    &record.path,
                    token,
                    (!record.key.is_empty()).then_some(record.key.as_str()),
                    Some(&record.body),
                )
                .await;
            match sent {
                Sent::Answered(status, body) if is_final(status, &body) => {
                    record.answer = Some((status, body));
                    break;
                }
                Sent::Answered(..) => record.try_again += 1,
                Sent::NoAnswer => record.unanswered += 1,
            }
            if started.elapsed() > RESOLVE_WITHIN {
                break;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(1));
        }
        self.records.lock().expect("records").push(record.clone());
        record
    }

    /// GET through any replica that answers 200, retried like [`Shared::run`].
    pub async fn get(&self, path: &str, token: Option<&str>) -> Option<Value> {
        let started = Instant::now();
        while started.elapsed() < RESOLVE_WITHIN {
            let sent = self
                .send(None, reqwest::Method::GET, path, token, None, None)
                .await;
            if let Sent::Answered(200, body) = sent {
                return Some(body);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        None
    }

    pub fn admin(&self) -> Option<&'static str> {
        Some(ADMIN_TOKEN)
    }
}

/// An answer the client stops at. "Try again" answers are not final:
/// `409 request_in_progress` (another attempt with this key is executing),
/// 429 and every 5xx (nothing was executed or stored).
pub fn is_final(status: u16, body: &Value) -> bool {
    let in_progress = status == 409 && body["error"]["code"] == "request_in_progress";
    !(in_progress || status == 429 || status >= 500)
}

pub fn record(kind: Kind, user: Option<usize>, key: String, path: String, body: Value) -> Record {
    Record {
        kind,
        user,
        key,
        path,
        body,
        unanswered: 0,
        try_again: 0,
        answer: None,
    }
}
