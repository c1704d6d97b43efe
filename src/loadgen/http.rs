//! `matchday loadgen http`: plain HTTP GET load, and the request-firing
//! engine that `loadgen drop` shares; `matchday loadgen http-baseline`: a
//! bare actix-web server with one trivial route, to measure what the machine
//! itself can do with the same load tool.
//!
//! The engine: [`client`] builds a keep-alive HTTP/1.1 client, [`timed`]
//! sends one request and times it until its body is read, [`Tally`] keeps
//! the latency histogram (microseconds) and the status counts,
//! [`in_flight`] runs a job per item with a bounded number in flight, and
//! [`on_own_runtime`] runs load on its own tokio runtime and thread (the
//! binary's `main` runs on actix's current-thread runtime).
//!
//! `http` runs `--threads` load threads (default: one per CPU). With
//! `--runtime current` (the default) each thread is a current-thread runtime
//! with its own client and its share of the requests in flight and of the
//! connections, so threads never hand work to each other; with `--runtime
//! multi` one multi-threaded runtime with `--threads` workers shares one
//! client. On a 2-core machine two current-thread groups measured fastest.

use std::collections::BTreeMap;
use std::future::Future;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpResponse, HttpServer};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tokio::sync::Semaphore;

/// Usage of `matchday loadgen http`.
pub const HELP: &str =
    "usage: matchday loadgen http --url URL [--path /healthz] [--concurrency 256]
                             [--duration SECONDS] [--connections N] [--threads N]
                             [--runtime current|multi] [--server-pid PID]...

Sends GET URL+PATH with --concurrency requests in flight for --duration seconds
(default 10) over keep-alive HTTP/1.1 connections and prints one JSON line:
requests/s, latency p50/p90/p99/max (ms, microsecond resolution), status counts
(0 = no response), and the CPU the client (and each --server-pid) used.
--connections (default and at most --concurrency) caps the TCP connections:
HTTP/1.1 carries one request at a time on each, so in-flight requests beyond it
wait for a free connection, and their latency includes the wait. --threads
(default: one per CPU) load threads: with --runtime current each is its own
current-thread runtime and client with its share of the requests in flight and
of the connections; with --runtime multi one runtime with that many workers
shares one client.";

/// Usage of `matchday loadgen http-baseline`.
pub const BASELINE_HELP: &str =
    "usage: matchday loadgen http-baseline [--host 127.0.0.1] [--port 18080] [--workers 0]

A bare actix-web server with one route, GET /healthz -> 200 {\"status\":\"ok\"},
and no middleware, to compare the real server against with `loadgen http`.
--workers 0 means actix's default (one per core). Runs until SIGINT/SIGTERM.";

/// Longest any one request may take before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Bounds of the latency histograms, in microseconds.
const LATENCY_MAX_MICROS: u64 = 3_600_000_000;

/// Latencies (microseconds) and status counts of a batch of requests.
#[derive(Debug, Clone)]
pub struct Tally {
    /// Time from send until the body was read, in microseconds.
    pub latencies: Histogram<u64>,
    /// Responses by HTTP status; 0 counts requests that got no response.
    pub statuses: BTreeMap<u16, u64>,
    /// The first transport error seen, to say why requests got no response.
    pub first_error: Option<String>,
}

impl Default for Tally {
    fn default() -> Self {
        Tally {
            latencies: Histogram::new_with_bounds(1, LATENCY_MAX_MICROS, 3)
                .unwrap_or_else(|_| unreachable!("the bounds are constant and valid")),
            statuses: BTreeMap::new(),
            first_error: None,
        }
    }
}

impl Tally {
    /// Counts one request: its status (0 for no response) and latency.
    pub fn record(&mut self, status: u16, micros: u64) {
        let _ = self.latencies.record(micros.clamp(1, LATENCY_MAX_MICROS));
        *self.statuses.entry(status).or_default() += 1;
    }

    /// Counts one [`Shot`], keeping its error if it is the first.
    pub fn record_shot(&mut self, shot: &Shot) {
        self.record(shot.status, shot.micros);
        if self.first_error.is_none() {
            self.first_error.clone_from(&shot.error);
        }
    }

    /// Adds `other`'s requests to these.
    pub fn merge(&mut self, other: &Tally) {
        let _ = self.latencies.add(&other.latencies);
        for (status, count) in &other.statuses {
            *self.statuses.entry(*status).or_default() += count;
        }
        if self.first_error.is_none() {
            self.first_error.clone_from(&other.first_error);
        }
    }

    /// Requests counted.
    pub fn requests(&self) -> u64 {
        self.statuses.values().sum()
    }

    /// Latency at `quantile` in milliseconds (microsecond resolution), or
    /// `None` before any request.
    pub fn ms_at(&self, quantile: f64) -> Option<f64> {
        (!self.latencies.is_empty())
            .then(|| self.latencies.value_at_quantile(quantile) as f64 / 1000.0)
    }

    /// The slowest request in milliseconds, or `None` before any request.
    pub fn max_ms(&self) -> Option<f64> {
        (!self.latencies.is_empty()).then(|| self.latencies.max() as f64 / 1000.0)
    }
}

/// A keep-alive HTTP/1.1 client keeping up to `connections` idle
/// connections per host, with no proxy lookup and a 30 s request timeout.
/// (This does not cap the connections it opens: one opens whenever a request
/// finds none idle.)
pub fn client(connections: usize) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .http1_only()
        .pool_max_idle_per_host(connections)
        .tcp_nodelay(true)
        .no_proxy()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .map_err(|e| format!("http client: {e}"))
}

/// One timed request.
#[derive(Debug, Clone, PartialEq)]
pub struct Shot {
    /// HTTP status, or 0 if no complete response came back.
    pub status: u16,
    /// Time from send until the whole body was read.
    pub micros: u64,
    /// When the body had been read.
    pub finished: Instant,
    /// The `Retry-After` header (whole seconds), if any.
    pub retry_after: Option<Duration>,
    /// The body, if it was asked for.
    pub body: Vec<u8>,
    /// Why there was no response.
    pub error: Option<String>,
}

/// Awaits `send` (a reqwest send or execute) and reads the body, timing
/// both; keeps the body if `keep_body`.
pub async fn timed(
    send: impl Future<Output = reqwest::Result<reqwest::Response>>,
    keep_body: bool,
) -> Shot {
    let sent = Instant::now();
    let (status, retry_after, body, error) = match send.await {
        Ok(response) => {
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            match response.bytes().await {
                Ok(bytes) if keep_body => (status, retry_after, bytes.to_vec(), None),
                Ok(_) => (status, retry_after, Vec::new(), None),
                Err(e) => (0, None, Vec::new(), Some(e.to_string())),
            }
        }
        Err(e) => (0, None, Vec::new(), Some(error_chain(&e))),
    };
    let finished = Instant::now();
    Shot {
        status,
        micros: finished.duration_since(sent).as_micros() as u64,
        finished,
        retry_after,
        body,
        error,
    }
}

/// An error and its sources, `: `-joined (reqwest's own message is terse).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Runs `job(i)` for every `i` in `0..count`, at most `concurrency` at once,
/// each worker on its own task of the current runtime; returns the results
/// in index order.
pub async fn in_flight<T, F, Fut>(
    count: usize,
    concurrency: usize,
    job: F,
) -> Result<Vec<T>, String>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let job = Arc::new(job);
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..concurrency.clamp(1, count.max(1)) {
        let job = job.clone();
        let next = next.clone();
        workers.push(tokio::spawn(async move {
            let mut done = Vec::new();
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= count {
                    break done;
                }
                done.push((index, job(index).await));
            }
        }));
    }
    let mut results: Vec<Option<T>> = (0..count).map(|_| None).collect();
    for worker in workers {
        for (index, result) in worker.await.map_err(|e| format!("worker: {e}"))? {
            results[index] = Some(result);
        }
    }
    results
        .into_iter()
        .map(|r| r.ok_or_else(|| "a job did not run".to_string()))
        .collect()
}

/// Runs the future that `make` builds on a new tokio runtime in a new
/// thread named `name` (current-thread if `workers` is 1, else
/// multi-threaded with `workers` workers), and awaits its result without
/// blocking the caller's runtime.
pub async fn on_own_runtime<T, F, Fut>(name: String, workers: usize, make: F) -> Result<T, String>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, String>>,
    T: Send + 'static,
{
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let thread_name = name.clone();
    std::thread::Builder::new()
        .name(name.clone())
        .spawn(move || {
            let runtime = if workers <= 1 {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
            } else {
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(workers)
                    .thread_name(format!("{thread_name}-worker"))
                    .enable_all()
                    .build()
            };
            let result = runtime
                .map_err(|e| format!("runtime: {e}"))
                .and_then(|runtime| runtime.block_on(make()));
            let _ = done_tx.send(result);
        })
        .map_err(|e| format!("cannot start thread {name}: {e}"))?;
    done_rx.await.map_err(|_| format!("thread {name} died"))?
}

/// How `http` spreads its load threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuntimeKind {
    /// Each thread its own current-thread runtime and client.
    Current,
    /// One multi-threaded runtime sharing one client.
    Multi,
}

/// Parsed `loadgen http` options.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    /// Base URL, e.g. `http://127.0.0.1:18080`.
    pub url: String,
    /// Path appended to the URL.
    pub path: String,
    /// Requests in flight.
    pub concurrency: usize,
    /// How long to send for.
    pub duration: Duration,
    /// Most TCP connections open at once (all threads together).
    pub connections: usize,
    /// Load threads.
    pub threads: usize,
    /// How the threads are organised.
    pub runtime: RuntimeKind,
    /// Server processes whose CPU use is reported.
    pub server_pids: Vec<u32>,
}

/// Parses the arguments after `loadgen http`.
pub fn parse(args: &[String]) -> Result<Options, String> {
    let mut url = None;
    let mut options = Options {
        url: String::new(),
        path: "/healthz".into(),
        concurrency: 256,
        duration: Duration::from_secs(10),
        connections: 0,
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        runtime: RuntimeKind::Current,
        server_pids: Vec::new(),
    };
    let mut flags = super::flags::Flags::new(args);
    while let Some(flag) = flags.next_flag() {
        match flag {
            "--url" => url = Some(flags.value(flag)?),
            "--path" => options.path = flags.value(flag)?,
            "--concurrency" => options.concurrency = flags.parsed::<usize>(flag)?.max(1),
            "--duration" => options.duration = flags.seconds(flag)?.max(Duration::from_secs(1)),
            "--connections" => options.connections = flags.parsed::<usize>(flag)?.max(1),
            "--threads" => options.threads = flags.parsed::<usize>(flag)?.max(1),
            "--runtime" => {
                options.runtime = match flags.value(flag)?.as_str() {
                    "current" => RuntimeKind::Current,
                    "multi" => RuntimeKind::Multi,
                    other => return Err(format!("--runtime: current or multi, not {other}")),
                }
            }
            "--server-pid" => options.server_pids.push(flags.parsed(flag)?),
            other => return Err(format!("unknown option {other}")),
        }
    }
    let url = url.ok_or("--url is required")?;
    if !url.starts_with("http://") {
        return Err(format!("--url must start with http://: {url}"));
    }
    if !options.path.starts_with('/') {
        return Err(format!("--path must start with /: {}", options.path));
    }
    options.url = url.trim_end_matches('/').to_string();
    if options.connections == 0 || options.connections > options.concurrency {
        options.connections = options.concurrency;
    }
    Ok(options)
}

/// `total` split into `parts` near-equal shares (the first ones larger),
/// none of them zero unless `total` is smaller than `parts`.
pub fn shares(total: usize, parts: usize) -> Vec<usize> {
    let parts = parts.max(1);
    (0..parts)
        .map(|i| total / parts + usize::from(i < total % parts))
        .collect()
}

/// Sends copies of `request` one after another until `deadline`; with a
/// `connection_limit`, each first waits for one of its permits (and the
/// latency includes the wait).
async fn hammer(
    client: reqwest::Client,
    request: reqwest::Request,
    connection_limit: Option<Arc<Semaphore>>,
    deadline: Instant,
) -> Tally {
    let mut tally = Tally::default();
    while Instant::now() < deadline {
        let Some(copy) = request.try_clone() else {
            break;
        };
        let shot = match &connection_limit {
            None => timed(client.execute(copy), false).await,
            Some(limit) => {
                let waited = Instant::now();
                let Ok(_permit) = limit.acquire().await else {
                    break;
                };
                let mut shot = timed(client.execute(copy), false).await;
                shot.micros = shot.finished.duration_since(waited).as_micros() as u64;
                shot
            }
        };
        tally.record_shot(&shot);
    }
    tally
}

/// `concurrency` copies of [`hammer`] on the current runtime, sharing one
/// client and at most `connections` connections.
async fn hammer_group(
    url: reqwest::Url,
    concurrency: usize,
    connections: usize,
    deadline: Instant,
) -> Result<Tally, String> {
    let client = client(connections)?;
    let connection_limit =
        (connections < concurrency).then(|| Arc::new(Semaphore::new(connections)));
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let request = client.get(url.clone()).build().map_err(|e| e.to_string())?;
        workers.push(tokio::spawn(hammer(
            client.clone(),
            request,
            connection_limit.clone(),
            deadline,
        )));
    }
    let mut tally = Tally::default();
    for worker in workers {
        tally.merge(&worker.await.map_err(|e| format!("worker: {e}"))?);
    }
    Ok(tally)
}

/// The `--runtime` value naming `kind`.
fn runtime_name(kind: RuntimeKind) -> &'static str {
    match kind {
        RuntimeKind::Current => "current",
        RuntimeKind::Multi => "multi",
    }
}

/// CPU seconds (user + system) `pid` has used so far.
pub(super) fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    super::ws::stat_cpu_seconds(&stat)
}

/// Runs `loadgen http` and returns its report.
async fn run(options: Options) -> Result<Value, String> {
    let url = reqwest::Url::parse(&format!("{}{}", options.url, options.path))
        .map_err(|e| format!("--url: {e}"))?;
    eprintln!(
        "loadgen http: GET {url}, {} in flight over {} connection(s), {} thread(s) ({}), {:?}",
        options.concurrency,
        options.connections,
        options.threads,
        runtime_name(options.runtime),
        options.duration
    );
    let client_pid = std::process::id();
    let client_cpu_before = cpu_seconds(client_pid);
    let server_cpu_before: Vec<_> = options
        .server_pids
        .iter()
        .map(|&p| cpu_seconds(p))
        .collect();
    let started = Instant::now();
    let deadline = started + options.duration;
    let tally = match options.runtime {
        RuntimeKind::Current => {
            let groups = shares(options.concurrency, options.threads)
                .into_iter()
                .zip(shares(options.connections, options.threads))
                .filter(|(concurrency, _)| *concurrency > 0)
                .enumerate()
                .map(|(n, (concurrency, connections))| {
                    let url = url.clone();
                    on_own_runtime(format!("loadgen-http-{n}"), 1, move || {
                        hammer_group(url, concurrency, connections.max(1), deadline)
                    })
                });
            let mut tally = Tally::default();
            for group in futures_util::future::join_all(groups).await {
                tally.merge(&group?);
            }
            tally
        }
        RuntimeKind::Multi => {
            let (concurrency, connections) = (options.concurrency, options.connections);
            let url = url.clone();
            on_own_runtime("loadgen-http".into(), options.threads, move || {
                hammer_group(url, concurrency, connections, deadline)
            })
            .await?
        }
    };
    let seconds = started.elapsed().as_secs_f64();
    let percent_of_a_core = |before: Option<f64>, after: Option<f64>| match (before, after) {
        (Some(before), Some(after)) => Some(((after - before) / seconds * 100.0).round()),
        _ => None,
    };
    let server_cpu: Vec<_> = options
        .server_pids
        .iter()
        .zip(server_cpu_before)
        .map(|(&pid, before)| percent_of_a_core(before, cpu_seconds(pid)))
        .collect();
    let requests = tally.requests();
    Ok(json!({
        "scenario": "http",
        "url": url.as_str(),
        "concurrency": options.concurrency,
        "connections": options.connections,
        "threads": options.threads,
        "runtime": runtime_name(options.runtime),
        "seconds": (seconds * 100.0).round() / 100.0,
        "requests": requests,
        "requests_per_sec": (requests as f64 / seconds).round(),
        "p50_ms": tally.ms_at(0.50),
        "p90_ms": tally.ms_at(0.90),
        "p99_ms": tally.ms_at(0.99),
        "max_ms": tally.max_ms(),
        "statuses": tally.statuses,
        "first_error": tally.first_error,
        "client_cpu_percent": percent_of_a_core(client_cpu_before, cpu_seconds(client_pid)),
        "server_cpu_percent": server_cpu,
    }))
}

/// Entry point for `matchday loadgen http …`.
pub async fn main(args: &[String]) -> ExitCode {
    let options = match parse(args) {
        Ok(options) => options,
        Err(error) => {
            eprintln!("loadgen http: {error}\n\n{HELP}");
            return ExitCode::from(2);
        }
    };
    match run(options).await {
        Ok(report) => {
            println!("{report}");
            let statuses = &report["statuses"];
            let only_ok = statuses
                .as_object()
                .is_some_and(|s| !s.is_empty() && s.keys().all(|k| k == "200"));
            if only_ok {
                ExitCode::SUCCESS
            } else {
                eprintln!("loadgen http: not every request got a 200");
                ExitCode::FAILURE
            }
        }
        Err(error) => {
            eprintln!("loadgen http: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Parsed `loadgen http-baseline` options.
#[derive(Debug, Clone, PartialEq)]
pub struct BaselineOptions {
    /// Address to listen on.
    pub host: String,
    /// Port to listen on.
    pub port: u16,
    /// actix workers; 0 keeps actix's default.
    pub workers: usize,
}

/// Parses the arguments after `loadgen http-baseline`.
pub fn parse_baseline(args: &[String]) -> Result<BaselineOptions, String> {
    let mut options = BaselineOptions {
        host: "127.0.0.1".into(),
        port: 18080,
        workers: 0,
    };
    let mut flags = super::flags::Flags::new(args);
    while let Some(flag) = flags.next_flag() {
        match flag {
            "--host" => options.host = flags.value(flag)?,
            "--port" => options.port = flags.parsed(flag)?,
            "--workers" => options.workers = flags.parsed(flag)?,
            other => return Err(format!("unknown option {other}")),
        }
    }
    Ok(options)
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(r#"{"status":"ok"}"#)
}

/// Entry point for `matchday loadgen http-baseline …`.
pub async fn baseline(args: &[String]) -> ExitCode {
    let options = match parse_baseline(args) {
        Ok(options) => options,
        Err(error) => {
            eprintln!("http-baseline: {error}\n\n{BASELINE_HELP}");
            return ExitCode::from(2);
        }
    };
    let mut server = HttpServer::new(|| App::new().route("/healthz", web::get().to(healthz)))
        .backlog(4096)
        .max_connections(100_000)
        .shutdown_timeout(1);
    if options.workers > 0 {
        server = server.workers(options.workers);
    }
    let server = match server.bind((options.host.as_str(), options.port)) {
        Ok(server) => server,
        Err(error) => {
            eprintln!("http-baseline: {}:{}: {error}", options.host, options.port);
            return ExitCode::FAILURE;
        }
    };
    eprintln!(
        "http-baseline: listening on http://{}:{}/healthz",
        options.host, options.port
    );
    match server.run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("http-baseline: {error}");
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

    #[test]
    fn http_options_parse() {
        let options = parse(&args(&["--url", "http://127.0.0.1:18080/"])).unwrap();
        assert_eq!(options.url, "http://127.0.0.1:18080");
        assert_eq!(options.path, "/healthz");
        assert_eq!(options.concurrency, 256);
        assert_eq!(options.connections, 256, "defaults to the concurrency");
        assert_eq!(options.duration, Duration::from_secs(10));
        assert!(options.threads >= 1, "one per CPU");
        assert_eq!(options.runtime, RuntimeKind::Current);

        let options = parse(&args(&[
            "--url",
            "http://h:1",
            "--path",
            "/api/v1/players",
            "--concurrency",
            "64",
            "--duration",
            "3",
            "--connections",
            "16",
            "--threads",
            "2",
            "--runtime",
            "multi",
            "--server-pid",
            "42",
            "--server-pid",
            "43",
        ]))
        .unwrap();
        assert_eq!(options.path, "/api/v1/players");
        assert_eq!(options.concurrency, 64);
        assert_eq!(options.duration, Duration::from_secs(3));
        assert_eq!(options.connections, 16);
        assert_eq!(options.threads, 2);
        assert_eq!(options.runtime, RuntimeKind::Multi);
        assert_eq!(options.server_pids, vec![42, 43]);
    }

    #[test]
    fn connections_are_at_most_the_concurrency() {
        let options = parse(&args(&[
            "--url",
            "http://h",
            "--concurrency",
            "8",
            "--connections",
            "99",
        ]))
        .unwrap();
        assert_eq!(options.connections, 8);
    }

    #[test]
    fn bad_http_options_are_refused() {
        assert!(parse(&[]).is_err(), "--url is required");
        assert!(parse(&args(&["--url", "https://h"])).is_err());
        assert!(parse(&args(&["--url", "http://h", "--path", "x"])).is_err());
        assert!(parse(&args(&["--url", "http://h", "--runtime", "fast"])).is_err());
        assert!(parse(&args(&["--url", "http://h", "--concurrency", "x"])).is_err());
        assert!(parse(&args(&["--url", "http://h", "--duration"])).is_err());
        assert!(parse(&args(&["--url", "http://h", "--nope"])).is_err());
    }

    #[test]
    fn baseline_options_parse() {
        let options = parse_baseline(&[]).unwrap();
        assert_eq!(
            (options.host.as_str(), options.port, options.workers),
            ("127.0.0.1", 18080, 0)
        );
        let options = parse_baseline(&args(&["--port", "9000", "--workers", "1"])).unwrap();
        assert_eq!((options.port, options.workers), (9000, 1));
        assert!(parse_baseline(&args(&["--port", "70000"])).is_err());
        assert!(parse_baseline(&args(&["--workers", "many"])).is_err());
    }

    #[test]
    fn shares_split_evenly() {
        assert_eq!(shares(10, 3), vec![4, 3, 3]);
        assert_eq!(shares(256, 2), vec![128, 128]);
        assert_eq!(shares(1, 2), vec![1, 0]);
        assert_eq!(shares(5, 0), vec![5]);
    }

    #[test]
    fn tallies_count_and_merge() {
        let mut a = Tally::default();
        assert_eq!(a.ms_at(0.5), None);
        a.record(200, 1_000);
        a.record(200, 3_000);
        a.record(0, 0);
        let mut b = Tally::default();
        b.record(429, 2_000);
        b.first_error = Some("refused".into());
        a.merge(&b);
        assert_eq!(a.requests(), 4);
        assert_eq!(a.statuses, BTreeMap::from([(0, 1), (200, 2), (429, 1)]));
        assert_eq!(a.first_error.as_deref(), Some("refused"));
        let max = a.max_ms().unwrap();
        assert!(
            (3.0..3.01).contains(&max),
            "3 ms within the histogram's precision: {max}"
        );
        assert_eq!(a.latencies.min(), 1, "a zero latency counts as 1 µs");
    }

    #[tokio::test]
    async fn in_flight_runs_every_job_once_in_order() {
        let results = in_flight(100, 7, |i| async move { i * 2 }).await.unwrap();
        assert_eq!(results, (0..100).map(|i| i * 2).collect::<Vec<_>>());
        assert!(in_flight(0, 7, |i| async move { i })
            .await
            .unwrap()
            .is_empty());
    }
}
