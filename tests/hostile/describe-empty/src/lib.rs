//! A broken guest: `describe` declares no tables, so the host has nothing to set up or
//! guard; it must be refused as an invalid description.

hostile_common::describe_only!(hostile_common::description("empty", &[]));
