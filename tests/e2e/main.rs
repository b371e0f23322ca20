//! End-to-end tests: the real `zdr` binary driven through its CLI, with real guest components
//! built from `plugins/`, `tests/guests/` and `tests/hostile/`, one temporary directory per test.
//!
//! Each module covers one area; each test is one scenario named for what it proves.

mod support;

mod concurrency;
mod crash;
mod demo;
mod hostile;
mod languages;
mod lifecycle;
mod sandbox;
mod states;
