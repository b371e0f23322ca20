//! End-to-end tests: the real `zdr` binary driven through its CLI, with real guest components
//! built from `plugins/`, `tests/guests/` and `tests/hostile/`, one temporary directory (and
//! one database) per test. Most scenarios run on SQLite and on PostgreSQL (`both_backends!`);
//! PostgreSQL needs the server of `ZDR_TEST_POSTGRES_URL` (default: the local one) and fails,
//! never skips, without it.
//!
//! Each module covers one area; each test is one scenario named for what it proves.

mod support;

mod authoring;
mod concurrency;
mod contracts;
mod crash;
mod demo;
mod faults;
mod hostile;
mod languages;
mod lifecycle;
mod machine;
mod mariadb;
mod policies;
mod postgres;
mod pressure;
mod safety;
mod sandbox;
mod split;
mod states;
