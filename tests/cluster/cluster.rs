//! Starting, killing and restarting replica processes, and what every test
//! asks of the cluster as a whole.

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::{Mutex, MutexGuard};

use crate::helpers::*;

/// One cluster at a time: each is three debug binaries plus their load, and
/// the takeover deadlines below should not be measured on a machine that is
/// also starting the next cluster.
static ONE_AT_A_TIME: Mutex<()> = Mutex::const_new(());

/// How long a debug replica may take to answer `/readyz`.
const READY_WITHIN: Duration = Duration::from_secs(60);

pub struct Replica {
    pub port: u16,
    pub app: TestApp,
    log: PathBuf,
    child: Option<Child>,
}

impl Replica {
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// The last lines of this replica's log, for a failure message.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

pub struct Cluster {
    pub replicas: Vec<Replica>,
    env: Vec<(String, String)>,
    _turn: MutexGuard<'static, ()>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for replica in &mut self.replicas {
            if let Some(mut child) = replica.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// Asks the kernel to send `signal` to the child when this test process
/// dies, so a test binary killed by a timeout leaves no replica (or nginx)
/// behind holding its database open.
pub fn die_with_parent(command: &mut Command, signal: i32) -> &mut Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe and touches only the child.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, signal) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free port")
}

impl Cluster {
    /// `replicas` processes on a fresh database, ticking every 100 ms,
    /// revaluing the leaderboard every 200 ms, with `overrides` (pairs of
    /// `MATCHDAY__…` variables and values) on top.
    pub async fn start(replicas: usize, overrides: &[(&str, &str)]) -> Cluster {
        let settings = test_settings().await;
        Cluster::start_on(
            replicas,
            settings.database.url.expose(),
            settings.redis.url.expose(),
            &settings.redis.key_prefix,
            overrides,
        )
        .await
    }

    /// As [`Cluster::start`], on a database and Redis the caller provides
    /// (tests/chaos restarts its own servers).
    pub async fn start_on(
        replicas: usize,
        database_url: &str,
        redis_url: &str,
        key_prefix: &str,
        overrides: &[(&str, &str)],
    ) -> Cluster {
        let turn = ONE_AT_A_TIME.lock().await;
        let database = database_url.rsplit('/').next().unwrap_or("db").to_string();
        let mut env: Vec<(String, String)> = [
            ("MATCHDAY__DATABASE__URL", database_url),
            ("MATCHDAY__DATABASE__MAX_CONNECTIONS", "8"),
            ("MATCHDAY__REDIS__URL", redis_url),
            ("MATCHDAY__REDIS__KEY_PREFIX", key_prefix),
            ("MATCHDAY__ADMIN__TOKEN", ADMIN_TOKEN),
            ("MATCHDAY__SERVER__WORKERS", "2"),
            ("MATCHDAY__SERVER__SHUTDOWN_TIMEOUT_SECONDS", "1"),
            ("MATCHDAY__AUTH__MAX_CONCURRENT_HASHES", "1"),
            ("MATCHDAY__FEED__SOURCE", "none"),
            ("MATCHDAY__PRICING__TICK_MS", "100"),
            ("MATCHDAY__PRICING__TICK_VOLATILITY_BP", "200"),
            ("MATCHDAY__BROADCAST__FLUSH_MS", "50"),
            ("MATCHDAY__LEADERBOARD__INTERVAL_MS", "200"),
            ("MATCHDAY__LIMITS__USER_PER_SEC", "0"),
            // Clients buy and sell at once (and the chaos checker's model
            // has no voids): the trade lock alone.
            ("MATCHDAY__TRADING__FAIRNESS_POLICY", "lock"),
            ("MATCHDAY__LIMITS__IP_PER_SEC", "0"),
            ("MATCHDAY__TELEMETRY__FILTER", "info"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        for (key, value) in overrides {
            env.retain(|(k, _)| k != key);
            env.push((key.to_string(), value.to_string()));
        }
        let logs = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join("cluster")
            .join(&database);
        std::fs::create_dir_all(&logs).expect("log directory");

        let mut cluster = Cluster {
            replicas: Vec::new(),
            env,
            _turn: turn,
        };
        for n in 0..replicas {
            let port = free_port();
            let mut replica = Replica {
                port,
                app: remote_app(format!("http://127.0.0.1:{port}"), database_url.to_string()),
                log: logs.join(format!("replica-{n}.log")),
                child: None,
            };
            replica.child = Some(cluster.spawn(&replica));
            cluster.replicas.push(replica);
        }
        for n in 0..replicas {
            cluster.wait_ready(n).await;
        }
        cluster
    }

    fn spawn(&self, replica: &Replica) -> Child {
        let log = File::options()
            .create(true)
            .append(true)
            .open(&replica.log)
            .expect("replica log");
        let stderr = log.try_clone().expect("replica log");
        let mut command = Command::new(env!("CARGO_BIN_EXE_matchday"));
        die_with_parent(&mut command, libc::SIGKILL)
            .arg("serve")
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("MATCHDAY__SERVER__PORT", replica.port.to_string())
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr)
            .spawn()
            .expect("start the matchday binary")
    }

    async fn wait_ready(&mut self, n: usize) {
        let started = Instant::now();
        let replica = &mut self.replicas[n];
        loop {
            if let Ok(response) = replica
                .app
                .client
                .get(replica.app.url("/readyz"))
                .timeout(Duration::from_secs(2))
                .send()
                .await
            {
                if response.status().is_success() {
                    return;
                }
            }
            let exited = replica
                .child
                .as_mut()
                .and_then(|child| child.try_wait().ok().flatten());
            if let Some(status) = exited {
                panic!("replica {n} exited ({status}):\n{}", replica.log_tail());
            }
            assert!(
                started.elapsed() < READY_WITHIN,
                "replica {n} not ready after {READY_WITHIN:?}:\n{}",
                replica.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn app(&self, n: usize) -> &TestApp {
        &self.replicas[n].app
    }

    /// SIGKILL: no drain, no goodbye to Postgres or Redis.
    pub fn kill(&mut self, n: usize) {
        let mut child = self.replicas[n].child.take().expect("replica running");
        child.kill().expect("kill -9");
        child.wait().expect("reap");
    }

    /// Where the replicas' logs are.
    pub fn log_dir(&self) -> PathBuf {
        self.replicas
            .first()
            .and_then(|r| r.log.parent())
            .map(PathBuf::from)
            .unwrap_or_default()
    }

    /// The process id of running replica `n`.
    pub fn pid(&self, n: usize) -> Option<u32> {
        self.replicas[n].child.as_ref().map(Child::id)
    }

    /// Replicas that were running and exited without being killed here
    /// (a panic or an abort), with their exit status.
    #[allow(dead_code)] // tests/chaos
    pub fn exited(&mut self) -> Vec<(usize, String)> {
        let mut exited = Vec::new();
        for (n, replica) in self.replicas.iter_mut().enumerate() {
            if let Some(child) = replica.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    exited.push((n, status.to_string()));
                    replica.child = None;
                }
            }
        }
        exited
    }

    /// Waits until running replica `n` answers `/readyz`.
    #[allow(dead_code)] // tests/chaos
    pub async fn ready(&mut self, n: usize) {
        self.wait_ready(n).await;
    }

    /// Starts replica `n` again on its old port and waits until it is ready.
    pub async fn restart(&mut self, n: usize) {
        assert!(!self.replicas[n].is_running(), "replica {n} still running");
        let child = self.spawn(&self.replicas[n]);
        self.replicas[n].child = Some(child);
        self.wait_ready(n).await;
    }

    /// The running replicas that say they lead (`matchday_leader 1`).
    pub async fn leaders(&self) -> Vec<usize> {
        let mut leaders = Vec::new();
        for (n, replica) in self.replicas.iter().enumerate() {
            if replica.is_running() && replica.app.metric("matchday_leader").await == 1.0 {
                leaders.push(n);
            }
        }
        leaders
    }

    /// Waits for exactly one leader, failing at once if two ever show.
    pub async fn one_leader(&self, within: Duration) -> usize {
        let started = Instant::now();
        loop {
            let leaders = self.leaders().await;
            assert!(leaders.len() <= 1, "two leaders at once: {leaders:?}");
            if let [leader] = leaders[..] {
                return leader;
            }
            assert!(
                started.elapsed() < within,
                "no leader within {within:?}; logs:\n{}",
                self.replicas
                    .iter()
                    .map(Replica::log_tail)
                    .collect::<Vec<_>>()
                    .join("\n---\n")
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A socket on `app` subscribed to `channels`. Players created through
/// another replica reach this one over the bus a moment later; until then
/// their channel is refused, so this retries until every channel is in.
pub async fn subscribed(app: &TestApp, channels: &[String]) -> WsClient {
    let started = Instant::now();
    loop {
        let mut ws = app.ws(None).await;
        ws.send(json!({"op": "subscribe", "channels": channels}))
            .await;
        let mut refused = false;
        loop {
            match ws.read(Duration::from_secs(2)).await {
                WsRead::Json(frame) if frame["type"] == "error" => refused = true,
                WsRead::Json(frame) if frame["type"] == "subscribed" => {
                    let all = frame["channels"].as_array().map_or(0, Vec::len) == channels.len();
                    if all && !refused {
                        return ws;
                    }
                    break;
                }
                WsRead::Json(_) => continue,
                other => panic!("subscribing: {other:?}"),
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{channels:?} never all accepted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every frame a socket received in a window, with when it arrived.
pub async fn frames_for(ws: &mut WsClient, window: Duration) -> Vec<(Instant, Value)> {
    let deadline = Instant::now() + window;
    let mut frames = Vec::new();
    while Instant::now() < deadline {
        match ws.read(deadline - Instant::now()).await {
            WsRead::Json(frame) => frames.push((Instant::now(), frame)),
            WsRead::Timeout => break,
            WsRead::Closed(code) => panic!("socket closed ({code:?})"),
        }
    }
    frames
}

/// `(seq, price_cents, arrived)` of each tick of `player` among `frames`,
/// from `prices` and `event` frames alike, asserting that seq rises
/// strictly. An event's price comes once as the event and once as a tick of
/// the same seq: that restatement is counted once.
pub fn ticks_of(player: i64, frames: &[(Instant, Value)]) -> Vec<(i64, i64, Instant)> {
    let mut ticks: Vec<(i64, i64, Instant)> = Vec::new();
    for (at, frame) in frames {
        let found: Vec<&Value> = match frame["type"].as_str() {
            Some("prices") => frame["ticks"]
                .as_array()
                .map(|ticks| ticks.iter().collect())
                .unwrap_or_default(),
            Some("event") => vec![frame],
            _ => Vec::new(),
        };
        for tick in found.into_iter().filter(|t| t["player_id"] == player) {
            let seq = tick["seq"].as_i64().expect("seq");
            let price = tick["price_cents"].as_i64().expect("price_cents");
            if let Some((last, last_price, _)) = ticks.last() {
                if seq == *last && price == *last_price {
                    continue;
                }
                assert!(
                    seq > *last,
                    "seq went from {last} to {seq} for player {player}"
                );
            }
            ticks.push((seq, price, *at));
        }
    }
    ticks
}

/// A response's status and JSON body (or `null` when it has none).
pub async fn status_and_body(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body)
}
