//! Leadership: work that must happen on exactly one replica at a time (the
//! price ticker, the built-in feed) runs on whichever replica holds a
//! Postgres session-level advisory lock.
//!
//! The lock lives on a dedicated connection, and the leader's fenced writes
//! go through that same connection: if the connection drops, the lock is
//! released *and* the writes stop, so a replica that lost leadership can
//! never write as leader. A killed leader's session ends with its TCP
//! connection; another replica takes over within [`RETRY_INTERVAL`].

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

/// How often a follower tries to become leader.
pub const RETRY_INTERVAL: Duration = Duration::from_millis(500);
/// The advisory lock id of the leader role ("mdleader").
const LEADER_LOCK_KEY: i64 = 0x6d64_6c65_6164_6572;

/// A connection holding the leader lock, for fenced writes.
pub type LeaderConnection = Arc<tokio_postgres::Client>;

/// What a fenced write on another connection checks: that the session with
/// this backend pid still holds the leader lock (see [`fence_sql`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fence {
    pub leader_pid: i32,
}

/// SQL answering whether the fence still holds; its one parameter is the
/// leader's backend pid. A bigint advisory key shows in `pg_locks` as its
/// high and low 32 bits with `objsubid` 1.
pub fn fence_sql() -> String {
    let key = LEADER_LOCK_KEY as u64;
    format!(
        "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted
            AND pid = $1 AND classid = {} AND objid = {} AND objsubid = 1)",
        key >> 32,
        key & 0xffff_ffff
    )
}

/// Watches leadership: `Some(connection)` while this replica leads.
#[derive(Clone)]
pub struct Leadership {
    current: watch::Receiver<Option<LeaderConnection>>,
    fence: watch::Receiver<Option<Fence>>,
}

impl Leadership {
    /// Starts campaigning with `database_url` until `shutdown` flips.
    pub fn start(database_url: String, shutdown: watch::Receiver<bool>) -> Leadership {
        let (tx, rx) = watch::channel(None);
        let (fence_tx, fence_rx) = watch::channel(None);
        tokio::spawn(campaign(database_url, tx, fence_tx, shutdown));
        Leadership {
            current: rx,
            fence: fence_rx,
        }
    }

    /// The fence for writes made as leader on other connections.
    pub fn fence(&self) -> Option<Fence> {
        *self.fence.borrow()
    }

    /// The leader connection, if this replica leads now.
    pub fn connection(&self) -> Option<LeaderConnection> {
        self.current.borrow().clone()
    }

    /// True while this replica leads.
    pub fn is_leader(&self) -> bool {
        self.current.borrow().is_some()
    }

    /// A receiver that changes whenever leadership is won or lost.
    pub fn watch(&self) -> watch::Receiver<Option<LeaderConnection>> {
        self.current.clone()
    }
}

async fn campaign(
    database_url: String,
    leader: watch::Sender<Option<LeaderConnection>>,
    fence: watch::Sender<Option<Fence>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let Ok(config) = tokio_postgres::Config::from_str(&database_url) else {
        tracing::error!("leadership: invalid database url");
        return;
    };
    loop {
        if *shutdown.borrow() {
            return;
        }
        match config.connect(tokio_postgres::NoTls).await {
            Ok((client, connection)) => {
                let client = Arc::new(client);
                let mut connection = Box::pin(connection);
                // Poll the connection while campaigning and while leading;
                // when it ends, so does the lock.
                loop {
                    let attempt = client.query_one(
                        "SELECT pg_try_advisory_lock($1), pg_backend_pid()",
                        &[&LEADER_LOCK_KEY],
                    );
                    let won = tokio::select! {
                        result = attempt => result.map(|row| {
                            let won: bool = row.get(0);
                            let pid: i32 = row.get(1);
                            let _ = fence.send(won.then_some(Fence { leader_pid: pid }));
                            won
                        }),
                        _ = &mut connection => break,
                        _ = shutdown.changed() => return,
                    };
                    match won {
                        Ok(true) => {
                            tracing::info!("this replica is now the leader");
                            let _ = leader.send(Some(client.clone()));
                            tokio::select! {
                                _ = &mut connection => {}
                                _ = shutdown.changed() => {
                                    let _ = leader.send(None);
                                    let _ = fence.send(None);
                                    return;
                                }
                            }
                            let _ = leader.send(None);
                            let _ = fence.send(None);
                            tracing::warn!("leader connection lost; leadership released");
                            break;
                        }
                        Ok(false) => {}
                        Err(error) => {
                            tracing::warn!(%error, "leadership attempt failed");
                            break;
                        }
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(RETRY_INTERVAL) => {}
                        _ = &mut connection => break,
                        _ = shutdown.changed() => return,
                    }
                }
            }
            Err(error) => tracing::warn!(%error, "leadership: cannot connect"),
        }
        tokio::select! {
            _ = tokio::time::sleep(RETRY_INTERVAL) => {}
            _ = shutdown.changed() => return,
        }
    }
}
