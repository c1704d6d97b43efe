//! Integration tests: the real binary's app against real Postgres and Redis.

mod accounts;
mod authz;
mod batches;
mod concurrency;
mod fairness;
mod feed;
mod health;
mod helpers;
mod hostile;
mod idempotency;
mod leaderboard;
mod leadership;
mod openapi;
mod players;
mod policies;
mod properties;
mod references;
mod replay;
mod sales;
mod trading;
mod web;
mod webhook;
mod websocket;
