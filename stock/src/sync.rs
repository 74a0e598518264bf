//! The std/loom switch: the atomics that `shards` uses, taken from
//! `std::sync::atomic` in normal builds and from `loom::sync::atomic` when the
//! crate is built with `RUSTFLAGS="--cfg loom"`, so the stealing and sold-out
//! logic can be model-checked unchanged (the pattern of tokio's `loom/mod.rs`).
//!
//! Every module of this crate takes its atomics from here, never from `std`
//! directly, or loom would not see those accesses.

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicBool, AtomicU64, Ordering};

#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
