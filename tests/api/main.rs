//! Integration tests: the real binary's app against real Postgres and Redis.

mod accounts;
mod concurrency;
mod health;
mod helpers;
mod hostile;
mod idempotency;
mod players;
mod trading;
