//! The cluster test: three `matchday serve` processes (the real binary) on
//! loopback ports, sharing one fresh Postgres database and one Redis key
//! prefix, as `scripts/cluster` runs them behind nginx. Replicas are killed
//! with SIGKILL, not stopped politely, so nothing gets a chance to clean up.
//!
//! Needs the Postgres and Redis that scripts/test starts. Each replica's log
//! is kept under `target/tmp/cluster/<database>/` for a failing run.

#[path = "../api/helpers.rs"]
#[allow(dead_code)]
mod helpers;

mod abuse;
mod books;
mod cluster;
mod failover;
mod fanout;
mod nginx;
mod secrets;
mod voids;
