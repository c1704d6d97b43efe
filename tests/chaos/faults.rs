//! The nemesis: one fault at a time, healed, then every replica must be
//! ready again before the next.

use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::client::Shared;
use crate::cluster::Cluster;
use crate::helpers::{RedisServer, ADMIN_TOKEN};
use crate::postgres::PgServer;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    RedisRestart,
    RedisFlushAll,
    PostgresRestart,
    KillReplica,
    KillLeaderMidDrop,
    PauseReplica,
}

impl Fault {
    pub const ALL: [Fault; 6] = [
        Fault::RedisRestart,
        Fault::RedisFlushAll,
        Fault::PostgresRestart,
        Fault::KillReplica,
        Fault::KillLeaderMidDrop,
        Fault::PauseReplica,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Fault::RedisRestart => "Redis restart (empty)",
            Fault::RedisFlushAll => "Redis FLUSHALL",
            Fault::PostgresRestart => "Postgres crash + restart",
            Fault::KillReplica => "kill -9 replica mid-request",
            Fault::KillLeaderMidDrop => "kill -9 leader mid-drop",
            Fault::PauseReplica => "SIGSTOP replica 3 s",
        }
    }
}

pub struct Injected {
    pub fault: Fault,
    pub detail: String,
    /// From the fault's start until every replica answered `/readyz`.
    pub recovered_in: Duration,
}

/// The servers the nemesis may break.
pub struct Targets<'a> {
    pub cluster: &'a mut Cluster,
    pub postgres: &'a mut PgServer,
    pub redis: &'a mut RedisServer,
}

/// Injects faults until `run_for` has passed: every kind once in a shuffled
/// order, then again in a new order, with 1–3 s of calm between.
/// Replicas that exit on their own are reported in `violations`.
pub async fn nemesis(
    targets: Targets<'_>,
    shared: &Shared,
    run_for: Duration,
    seed: u64,
    violations: &mut Vec<String>,
) -> Vec<Injected> {
    let Targets {
        cluster,
        postgres,
        redis,
    } = targets;
    let mut rng = StdRng::seed_from_u64(seed);
    let started = Instant::now();
    let mut injected = Vec::new();
    let mut order = Vec::new();
    loop {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(1000..3000))).await;
        if started.elapsed() >= run_for {
            return injected;
        }
        if order.is_empty() {
            order = Fault::ALL.to_vec();
            order.shuffle(&mut rng);
        }
        let fault = order.pop().unwrap_or(Fault::KillReplica);
        let began = Instant::now();
        let replicas = cluster.replicas.len();
        let detail = match fault {
            Fault::RedisRestart => {
                redis.restart_empty().await;
                format!("port {}", redis.port)
            }
            Fault::RedisFlushAll => {
                flushall(redis.port).await;
                "every key gone".to_string()
            }
            Fault::PostgresRestart => {
                postgres
                    .crash_and_restart(Duration::from_millis(rng.gen_range(200..1500)))
                    .await;
                "SIGQUIT, crash recovery".to_string()
            }
            Fault::KillReplica => {
                let victim = rng.gen_range(0..replicas);
                cluster.kill(victim);
                tokio::time::sleep(Duration::from_millis(500)).await;
                cluster.restart(victim).await;
                format!("replica {victim}")
            }
            Fault::KillLeaderMidDrop => {
                // Mid-drop: wait (up to 5 s) for purchases awaiting settlement.
                let waiting = Instant::now();
                let mut unsettled = unsettled_units(shared).await;
                while unsettled == 0 && waiting.elapsed() < Duration::from_secs(5) {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    unsettled = unsettled_units(shared).await;
                }
                let leader = cluster.one_leader(Duration::from_secs(30)).await;
                cluster.kill(leader);
                tokio::time::sleep(Duration::from_millis(500)).await;
                cluster.restart(leader).await;
                format!("replica {leader}; {unsettled} drop units unsettled at the kill")
            }
            Fault::PauseReplica => {
                let victim = rng.gen_range(0..replicas);
                let pid = cluster.pid(victim).expect("running") as i32;
                // SAFETY: signalling a child process this test started.
                unsafe { libc::kill(pid, libc::SIGSTOP) };
                tokio::time::sleep(Duration::from_secs(3)).await;
                // SAFETY: as above.
                unsafe { libc::kill(pid, libc::SIGCONT) };
                format!("replica {victim}")
            }
        };
        for (n, status) in cluster.exited() {
            violations.push(format!(
                "replica {n} exited on its own ({status}) around {}:\n{}",
                fault.name(),
                cluster.replicas[n].log_tail()
            ));
            cluster.restart(n).await;
        }
        for n in 0..replicas {
            cluster.ready(n).await;
        }
        injected.push(Injected {
            fault,
            detail,
            recovered_in: began.elapsed(),
        });
        eprintln!(
            "[chaos {:>5.1}s] {} ({}), ready again in {:.2}s",
            started.elapsed().as_secs_f64(),
            fault.name(),
            injected.last().map_or("", |i| i.detail.as_str()),
            began.elapsed().as_secs_f64()
        );
    }
}

/// Units of the newest drop reserved or held but not yet settled.
async fn unsettled_units(shared: &Shared) -> i64 {
    let Some(sale) = shared.sales.lock().expect("sales").last().cloned() else {
        return 0;
    };
    let path = format!("/api/v1/admin/sales/{}/audit", sale.sale_id);
    let audit = shared.get(&path, Some(ADMIN_TOKEN)).await;
    audit.map_or(0, |a| {
        a["reserved_units"].as_i64().unwrap_or(0) + a["held_units"].as_i64().unwrap_or(0)
    })
}

async fn flushall(port: u16) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect to Redis");
    stream.write_all(b"FLUSHALL\r\n").await.expect("FLUSHALL");
    let mut reply = [0u8; 5];
    stream.read_exact(&mut reply).await.expect("FLUSHALL reply");
    assert_eq!(&reply, b"+OK\r\n", "FLUSHALL");
}
