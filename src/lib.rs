//! Matchday: a real-time fantasy sports exchange in one binary.
//!
//! See ARCHITECTURE.md for the map. `main.rs` only parses the command line;
//! [`startup::Application`] wires everything.

pub mod auth;
pub mod broadcast;
pub mod bus;
pub mod config;
pub mod db;
pub mod domain;
pub mod error;
pub mod fairness;
pub mod http;
pub mod idempotency;
pub mod ingest;
pub mod leader;
pub mod leaderboard;
pub mod ledger;
pub mod limits;
pub mod loadgen;
pub mod memory;
pub mod metrics;
pub mod players;
pub mod pricing;
pub mod sales;
pub mod startup;
pub mod telemetry;
pub mod trading;
