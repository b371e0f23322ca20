//! A hostile guest: `describe` panics (a trap in the very first call the host makes).
//!
//! Deploy and replay create must report the trap, not crash, and change nothing.

hostile_common::describe_only!(panic!("describe-traps: refusing to describe myself"));
